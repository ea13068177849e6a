"""Boiler model: steam (drum) and hot-water boilers with a burner sequence (domain.md §2).

A lumped model integrated on a fixed physics tick, because pressure, level and
temperatures evolve continuously and the interesting faults (low water, overpressure,
fouling) are slow drifts. Couplings kept on purpose, so rules see consistent readings:

- steam: pressure integrates (heat in − steam out); steam temperature is the saturation
  temperature of the pressure (IAPWS-IF97); drum level integrates (feed − steam − blowdown)
  under a three-element feed controller; the burner modulates to hold pressure;
- hot water: outlet temperature integrates (heat in − load); return = outlet − ΔT(load);
  pressure is the system pressure plus thermal expansion;
- flue-gas temperature follows firing rate plus a fouling offset; O₂ follows firing rate
  (excess air falls at high fire); fuel flow ≈ 75 Nm³/h of gas per t/h of steam.

Protections (low-water trip, overpressure trip, safety valve, flame-failure trip) act on
the modelled values, and a fault can disable any of them — that is the "trip failing"
scenario a hidden-danger rule must catch.
"""

from __future__ import annotations

import random
from typing import Any

from sesmon.contract.physics import indirect_efficiency_pct, saturation_temp_c
from sesmon.contract.registry import Unit
from sesmon.contract.time import local_hour
from simulators.common import Device, Msg, lognormal_s

FAULTS = ("low_water", "overpressure", "flame_failure", "gas_leak", "pump_fault", "fouling")

EXTREME_LOW_MM = -120.0  # lowest safe level: the low-water trip acts here
LOW_ALARM_MM = -75.0
GAS_NM3H_PER_TPH = 75.0
TICK_MS = 2000

# daily heat-demand profile (hotels, hospitals, laundries, factories)
_LOAD = (
    0.35, 0.3, 0.3, 0.3, 0.35, 0.5, 0.75, 0.9, 0.95, 0.9, 0.85, 0.85,
    0.8, 0.8, 0.85, 0.85, 0.85, 0.9, 0.95, 0.9, 0.8, 0.65, 0.5, 0.4,
)  # fmt: skip


class Boiler(Device):
    """One boiler; ``wake(t)`` integrates physics up to ``t`` and publishes what is due."""

    def __init__(
        self, unit: Unit, rng: random.Random, outbox: list[Msg], start_ms: int, *, periodic: bool = True
    ) -> None:
        super().__init__(unit.device_id, "boiler", outbox)
        self.unit = unit
        self.rng = rng
        self.steam = unit.steam
        self.rated_p = float(unit.rated_pressure_mpa or (1.25 if self.steam else 1.0))
        self.valve_set = float(unit.safety_valve_set_mpa or round(1.04 * self.rated_p, 3))
        if self.steam:
            self.cap = float(unit.capacity_tph or 4.0)  # t/h steam
        else:
            self.cap = float(unit.capacity_mw or 2.8) * 1.43  # steam-equivalent t/h (0.7 MW per t/h)
        self.periodic = periodic
        self.report_ms = rng.choice((10_000, 10_000, 15_000, 20_000))
        self.tick_ms = TICK_MS
        self.heartbeat_ms = 60_000

        # set-points (domain.md §2.2: 0.6–1.1 MPa at 1.25 rated)
        self.p_set = self.rated_p * rng.uniform(0.72, 0.8)
        self.p_start = self.p_set - 0.08 * self.rated_p
        self.p_stop = self.p_set + 0.08 * self.rated_p
        self.p_trip = self.rated_p  # trips below the lower valve setting (domain.md §2.2)
        self.economiser = rng.random() < 0.6
        self.deaerator = self.steam and self.cap >= 6 and rng.random() < 0.7
        self.feed_temp = 104.0 if self.deaerator else rng.uniform(20, 60)
        self.flue_base = rng.uniform(125, 150) if self.economiser else rng.uniform(165, 200)
        self.o2_base = rng.uniform(2.5, 3.5)
        # the registry's per-unit limits, where it has them: design outlet temperature, lowest safe level
        rated_outlet = unit.rated_outlet_temp_c
        self.t_supply_set = float(
            rated_outlet or (115.0 if (not self.steam and self.rated_p >= 1.0) else 95.0)
        )
        self.extreme_low_mm = float(unit.lowest_safe_water_level_mm or EXTREME_LOW_MM)
        self.dt_design = 45.0 if self.t_supply_set >= 115 else 25.0

        # ---- state
        self.p = self.p_set * rng.uniform(0.95, 1.02) if self.steam else 0.6 * self.rated_p
        self.level = rng.uniform(-10, 10)
        self.t_out = self.t_supply_set - rng.uniform(0, 5)
        self.load_noise = 0.0
        self.demand = self.cap * 0.7
        self.steam_flow = self.demand
        self.feed_flow = self.demand
        self.boil = self.demand  # heat input expressed as t/h of steam, with thermal lag
        self.rate = 0.7  # firing rate 0..1
        self.burner = "high_fire"
        self.burner_until = 0
        self.flue = self.flue_base
        self.o2 = self.o2_base
        self.fuel = self.rate * self.cap * GAS_NM3H_PER_TPH
        self.fouling_k = 0.0
        self.fouling_rate = 0.0  # K per day
        self.pump_ok = True
        self.feed_stuck = False  # feedwater valve/controller failure (low water)
        self.drain_mm_s = 0.0  # extra level fall (demo speed-up)
        self.rise_mpa_s = 0.0  # extra pressure rise (demo speed-up)
        self.trip_low_ok = True
        self.trip_p_ok = True
        self.trip_flame_ok = True
        self.valve_ok = True
        self.valve_open = False
        self.burner_stuck_high = False
        self.no_flame = False
        self.demand_cut = False
        self.lockout_reason = ""
        self.fault: str | None = None
        self.active_events: set[str] = set()
        self.release_at: int | None = None
        self.reset_at: int | None = None
        self.last_t = start_ms
        self.next_report = start_ms + rng.randrange(self.report_ms)
        self.next_heartbeat = start_ms + rng.randrange(self.heartbeat_ms)
        self.next_tick = start_ms + self.tick_ms

    # ------------------------------------------------------------------ reporting
    def telemetry(self, t: int) -> None:
        r = self.rng
        body: dict[str, Any] = {
            "pressure_mpa": round(max(0.0, self.p + r.gauss(0, 0.003)), 3),
            "feedwater_temp_c": round(self.feed_temp + r.gauss(0, 0.3), 1),
            "flue_gas_temp_c": round(self.flue + r.gauss(0, 0.8), 1),
            "o2_pct": round(min(20.9, max(0.5, self.o2 + r.gauss(0, 0.1))), 2),
            "fuel_flow_nm3h": round(self.fuel, 1),
            "burner": self.burner,
        }
        if self.steam:
            body["water_level_mm"] = round(self.level + r.gauss(0, 1.5), 1)
            body["steam_temp_c"] = round(saturation_temp_c(self.p) + r.gauss(0, 0.3), 1)
            body["steam_flow_tph"] = round(max(0.0, self.steam_flow), 2)
            body["feedwater_flow_tph"] = round(max(0.0, self.feed_flow), 2)
        else:
            body["outlet_temp_c"] = round(self.t_out + r.gauss(0, 0.2), 1)
            body["return_temp_c"] = round(self.t_return, 1)
        self.send(t, "telemetry", body)
        self.next_report = t + self.report_ms

    @property
    def t_return(self) -> float:
        load = self._load_frac(self.last_t)
        circulating = 1.0 if self.pump_ok else 0.05
        return self.t_out - self.dt_design * load * circulating

    def efficiency_pct(self) -> float:
        """Indirect efficiency: 100 − q2 (Siegert) − 1.5 % other losses (domain.md §2.5)."""
        return indirect_efficiency_pct(self.flue, self.o2) or 0.0

    def occur(self, t: int, code: str, **detail: Any) -> None:
        if code not in self.active_events:
            self.active_events.add(code)
            self.event(t, code, "occur", **detail)

    # ------------------------------------------------------------------ physics
    def _load_frac(self, t: int) -> float:
        if self.demand_cut:
            return 0.03
        h = local_hour(t)
        i = int(h)
        frac = h - i
        base = _LOAD[i] * (1 - frac) + _LOAD[(i + 1) % 24] * frac
        return min(1.0, max(0.05, base + self.load_noise))

    def _set_burner(self, t: int, state: str, hold_s: float = 0.0) -> None:
        if state != self.burner:
            self.burner = state
            self.burner_until = t + int(hold_s * 1000)
            if state in ("off", "purge", "lockout"):
                self.rate = 0.0
            self._update_fuel()
            self.telemetry(t)

    def _update_fuel(self) -> None:
        b = self.burner
        if b == "ignition":
            self.fuel = 0.1 * self.cap * GAS_NM3H_PER_TPH
        elif b in ("low_fire", "high_fire"):
            self.fuel = max(self.rate, 0.3) * self.cap * GAS_NM3H_PER_TPH
        else:
            self.fuel = 0.0

    def _burner_sequence(self, t: int) -> None:
        """Purge → ignition → low fire → high fire (modulating) → off; lockout needs a reset."""
        b = self.burner
        if b == "lockout":
            if self.reset_at is not None and t >= self.reset_at:
                self.reset_at = None
                self.lockout_reason = ""
                self._set_burner(t, "off")
            return
        if self.burner_stuck_high:
            self.burner = "high_fire"
            self.rate = 1.0
            return
        want_on = (self.p < self.p_start) if self.steam else (self.t_out < self.t_supply_set - 6)
        want_off = (self.p > self.p_stop) if self.steam else (self.t_out > self.t_supply_set + 3)
        if b == "off" and want_on and t >= self.burner_until:
            self._set_burner(t, "purge", 30)
        elif b == "purge" and t >= self.burner_until:
            self._set_burner(t, "ignition", 6)
        elif b == "ignition" and t >= self.burner_until:
            self._set_burner(t, "low_fire", 20)
        elif b == "low_fire" and t >= self.burner_until:
            self._set_burner(t, "high_fire")
        elif b in ("low_fire", "high_fire") and want_off:
            self._set_burner(t, "off", 60)
        if self.burner == "high_fire":
            if self.steam:
                err = (self.p_set - self.p) / self.rated_p
                target = self.demand / self.cap + 4.0 * err
            else:
                err = (self.t_supply_set - self.t_out) / 10.0
                target = self._load_frac(t) + 0.8 * err
            self.rate += (min(1.0, max(0.3, target)) - self.rate) * 0.2
        elif self.burner == "low_fire":
            self.rate = 0.3
        else:
            self.rate = 0.0

    def _step(self, t: int, dt: float) -> None:
        r = self.rng
        self.load_noise += (-self.load_noise * 0.002 + r.gauss(0, 0.004)) * dt
        self._burner_sequence(t)
        firing = self.burner in ("low_fire", "high_fire") and not self.no_flame
        heat = self.rate * self.cap if firing else 0.0
        tau = 60.0 if heat >= self.boil else 15.0  # firing up is slow; a flame off stops heat fast
        self.boil += (heat - self.boil) * min(1.0, dt / tau)
        fuel_on = self.burner in ("low_fire", "high_fire", "ignition")
        self.fuel = (
            (0.1 if self.burner == "ignition" else self.rate) * self.cap * GAS_NM3H_PER_TPH
            if fuel_on
            else 0.0
        )
        # flue gas and O2 follow the flame
        if firing:
            flue_target = 20 + (self.flue_base - 20) * (0.75 + 0.25 * self.rate) + self.fouling_k
            o2_target = self.o2_base + 2.0 * (1.0 - self.rate)
        else:
            flue_target = 60.0 + self.fouling_k * 0.3
            o2_target = 20.9 if self.burner in ("purge", "off", "lockout") or self.no_flame else self.o2
        self.flue += (flue_target - self.flue) * min(1.0, dt / 90.0)
        self.o2 += (o2_target - self.o2) * min(1.0, dt / 20.0)
        self.fouling_k += self.fouling_rate * dt / 86_400.0

        if self.steam:
            self.demand = self.cap * self._load_frac(t)
            self.steam_flow = self.demand if self.p > 0.05 else 0.0
            if self.valve_open:
                self.steam_flow += self.cap * 1.2  # a lifting valve blows off more than full load
            k = 0.1 / 60.0 * self.rated_p / 1.25  # MPa/s for a full-capacity mismatch
            self.p += (k * (self.boil - self.steam_flow) / self.cap + self.rise_mpa_s) * dt
            self.p = min(max(0.0, self.p), 2.0 * self.valve_set)
            # feed: three-element control, or nothing when the pump/valve has failed
            if self.pump_ok and not self.feed_stuck:
                want = self.steam_flow * 1.03 - 0.02 * self.cap * self.level / 10.0
                self.feed_flow = min(1.6 * self.cap, max(0.0, want))
            else:
                self.feed_flow = 0.0
            blowdown = 0.03 * self.steam_flow
            self.level += (
                0.37 / self.cap * (self.feed_flow - self.steam_flow - blowdown) - self.drain_mm_s
            ) * dt
            self.level = min(250.0, max(-400.0, self.level))
        else:
            load = self._load_frac(t)
            circulating = 1.0 if self.pump_ok else 0.05
            heat_out = load * self.cap * circulating
            gain = 0.15 if self.pump_ok else 0.6  # no circulation: the water in the furnace heats fast
            self.t_out += gain * (self.boil - heat_out) / self.cap * dt
            self.t_out = max(20.0, self.t_out)
            p_sys = 0.55 * self.rated_p + 0.002 * max(0.0, self.t_out - 70.0)
            self.p += (p_sys - self.p) * min(1.0, dt / 30.0) + self.rise_mpa_s * dt
        self._protections(t)

    def _lockout(self, t: int, reason: str, reset_s: float | None) -> None:
        self.rate = 0.0
        self.lockout_reason = reason
        self.burner_stuck_high = False
        self._set_burner(t, "lockout")
        self.occur(t, "burner_lockout", reason=reason)
        self.reset_at = None if reset_s is None else t + int(reset_s * 1000)

    def _protections(self, t: int) -> None:
        firing = self.burner in ("low_fire", "high_fire", "ignition")
        if self.steam and self.level <= self.extreme_low_mm and firing and self.trip_low_ok:
            self.occur(t, "low_water_trip", water_level_mm=round(self.level, 1), trip_acted=True)
            self._lockout(t, "low_water", None)
        if self.p >= self.p_trip and firing and self.trip_p_ok:
            self.occur(
                t, "overpressure_trip", pressure_mpa=round(self.p, 3), setpoint_mpa=round(self.p_trip, 3)
            )
            self._lockout(t, "overpressure", None)
        if self.valve_ok and not self.valve_open and self.p >= self.valve_set:
            self.valve_open = True
            self.occur(t, "safety_valve_lift", pressure_mpa=round(self.p, 3), set_mpa=self.valve_set)
            self.telemetry(t)
        if not self.valve_ok and self.fault is None and self.p < self.rated_p:
            self.valve_ok = True  # valve freed/replaced once the boiler is back below working pressure
        if self.valve_open:
            if self.p > self.valve_set * 1.03:
                self.p = self.valve_set * 1.03  # accumulation bound of a working valve
            if self.p < self.valve_set * 0.93:
                self.valve_open = False
                self.recover(t, "safety_valve_lift", pressure_mpa=round(self.p, 3))
        if not self.steam and self.t_out >= self.t_supply_set + 15 and firing:
            self._lockout(t, "over_temperature", self.rng.uniform(600, 1800))

    # ------------------------------------------------------------------ engine entry
    def wake(self, t: int) -> int:
        while self.next_tick <= t:
            dt = (self.next_tick - self.last_t) / 1000.0
            self.last_t = self.next_tick
            self._step(self.next_tick, dt)
            self.next_tick += self.tick_ms
        if self.release_at is not None and t >= self.release_at:
            self.release(t, "auto")
        self.periodic_reports(t)
        cands = [self.next_tick]
        if self.release_at is not None:
            cands.append(self.release_at)
        return max(t + 1, min(cands))

    # ------------------------------------------------------------------ faults
    def inject(self, t: int, fault: str, **params: Any) -> bool:
        """Start a fault; returns False when another fault is active (fouling may coexist)."""
        if fault not in FAULTS:
            return False
        if fault == "fouling":
            self.fouling_rate = float(params.get("rate_k_per_day", 0.7))
            return True
        if self.fault is not None:
            return False
        self.fault = fault
        self.release_at = None
        getattr(self, f"_f_{fault}")(t, **params)
        if self.release_at is None:
            auto = params.get("auto_release_s")
            self.release_at = t + int((auto if auto is not None else lognormal_s(self.rng, 1800, 0.5)) * 1000)
        self.telemetry(t)
        return True

    def _f_low_water(self, t: int, trip: bool = True, rate_mm_s: float | None = None, **_: Any) -> None:
        """Feedwater lost (valve stuck, controller fault): level falls; the trip acts or fails."""
        self.feed_stuck = True
        self.trip_low_ok = trip
        if rate_mm_s:
            self.drain_mm_s = max(0.0, rate_mm_s - 0.37 * self.demand / self.cap)
        if self.burner not in ("low_fire", "high_fire"):
            self.burner = "high_fire"
            self.rate = 0.7
        if not trip:
            self.burner_stuck_high = True  # interlock bypassed: the burner keeps firing
        if not self.steam:  # hot water boilers have no drum: treat as pump fault
            self.feed_stuck = False
            self._f_pump_fault(t, standby=False)

    def _f_overpressure(
        self, t: int, trip: bool = True, valve: str = "lift", rate_mpa_s: float | None = None, **_: Any
    ) -> None:
        """Steam users close while the burner sticks at high fire; the trip and the valve act or fail."""
        self.demand_cut = True
        self.burner_stuck_high = True
        self.trip_p_ok = trip
        self.valve_ok = valve == "lift"
        self.rise_mpa_s = rate_mpa_s or 0.0
        self.burner = "high_fire"
        self.rate = 1.0

    def _f_flame_failure(self, t: int, trip: bool = True, **_: Any) -> None:
        """熄火: the flame goes out; the flame-failure protection closes the gas, or (fault) it doesn't."""
        self.trip_flame_ok = trip
        if self.burner not in ("low_fire", "high_fire"):
            self.burner, self.rate = "high_fire", 0.6
        if trip:
            self.occur(t, "flame_failure", trip_acted=True)
            self._lockout(t, "flame_failure", None)
        else:
            self.no_flame = True
            self.burner_stuck_high = True
            self.occur(t, "flame_failure", trip_acted=False)

    def _f_gas_leak(self, t: int, lel_pct: float | None = None, **_: Any) -> None:
        """燃气泄漏: the gas detector alarms; the interlock shuts the gas valve."""
        self.occur(t, "gas_leak", lel_pct=round(lel_pct or self.rng.uniform(10, 40), 1))
        self._lockout(t, "gas_leak", None)

    def _f_pump_fault(self, t: int, standby: bool = True, **_: Any) -> None:
        """Feed (steam) or circulation (hot water) pump trips; a standby pump may take over."""
        self.pump_ok = False
        self.occur(t, "pump_fault", standby_started=standby)
        if not self.steam and not standby and self.burner in ("purge", "ignition", "low_fire", "high_fire"):
            self._lockout(t, "pump_interlock", None)  # circulation-pump/burner interlock (domain.md §2.3)
        if standby:
            self.release_at = t + int(self.rng.uniform(15, 40) * 1000)

    def release(self, t: int, reason: str = "repaired") -> bool:
        """End the active fault: operators restore feed, reset the lockout, reseat valves."""
        if self.fault is None:
            self.fouling_rate, self.fouling_k = 0.0, 0.0  # cleaning
            return False
        self.fault = None
        self.release_at = None
        self.feed_stuck = False
        self.pump_ok = True
        self.drain_mm_s = self.rise_mpa_s = 0.0
        self.trip_low_ok = self.trip_p_ok = self.trip_flame_ok = True
        self.burner_stuck_high = False
        self.no_flame = False
        self.demand_cut = False
        if self.burner != "lockout":
            # operator shuts the burner down by hand to recover a failed-trip situation
            self._set_burner(t, "off", 60)
        self.reset_at = t + int(self.rng.uniform(120, 600) * 1000)
        if self.steam and self.level < -40:
            self.level = -40.0  # operators refill before restarting
        for code in sorted(self.active_events):
            if code != "safety_valve_lift":
                self.recover(t, code, reason=reason)
        self.telemetry(t)
        return True
