"""Elevator car model: an event-driven state machine per car (domain.md §1.2, §1.4, §1.5).

Why event-driven rather than a fixed tick: a city has thousands of mostly idle cars, and
the only moments that matter are state changes and the periodic reports. The car wakes at
its next transition, call, report or heartbeat; while moving, position comes from a closed
form trapezoidal speed profile, so it is exact at any report time.

Faults (``inject``) take the car out of normal service and run a short script of timed
steps that produce what a real terminal would show: telemetry first, then the terminal's
event after its detection delay (domain.md §1.4), and a ``recover`` when it clears.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from sesmon.contract.registry import Unit
from sesmon.contract.time import local_hour
from simulators.common import Device, Msg, lognormal_s

# hourly usage weights (local time), mean about 1; residential peaks morning/evening
_RESIDENTIAL = (
    0.15, 0.08, 0.05, 0.05, 0.08, 0.3, 1.0, 2.2, 2.4, 1.3, 0.9, 1.0,
    1.3, 1.1, 0.9, 0.9, 1.1, 1.6, 2.3, 2.0, 1.6, 1.2, 0.7, 0.35,
)  # fmt: skip
_COMMERCIAL = (
    0.05, 0.03, 0.02, 0.02, 0.03, 0.1, 0.4, 1.2, 2.4, 2.2, 1.7, 1.6,
    2.0, 1.9, 1.6, 1.6, 1.6, 1.8, 1.6, 1.2, 0.9, 0.6, 0.3, 0.1,
)  # fmt: skip
_NORM_RES = sum(_RESIDENTIAL) / 24
_NORM_COM = sum(_COMMERCIAL) / 24

FAULTS = (
    "trapped",  # params: between_floors (bool)
    "unintended_movement",
    "door_open_while_running",
    "overspeed",
    "overtravel_top",
    "overtravel_bottom",
    "stopped_outside_door_zone",
    "door_open_fault",
    "door_close_fault",
    "power_failure",
    "alarm_button",
    "safety_circuit_open",
)

KG_PER_PERSON = 70.0


class Elevator(Device):
    """One car. ``wake(t)`` does whatever is due at ``t`` and returns the next wake time."""

    def __init__(
        self,
        unit: Unit,
        rng: random.Random,
        outbox: list[Msg],
        start_ms: int,
        *,
        traffic: float = 1.0,
        periodic: bool = True,
    ) -> None:
        super().__init__(unit.device_id, "elevator", outbox)
        self.unit = unit
        self.rng = rng
        self.rated_speed = float(unit.rated_speed_mps or 1.0)
        self.rated_load = float(unit.rated_load_kg or 1000)
        stops = int(unit.floors or 8)
        self.basements = 0 if stops < 6 else rng.choice((0, 1, 1, 2))
        self.stops = max(2, stops)
        self.commercial = unit.key_site in ("mall", "station", "hospital", "stadium") or (
            self.rated_speed >= 2.5 and rng.random() < 0.5
        )
        self.storey_m = rng.uniform(3.6, 4.5) if self.commercial else rng.uniform(2.8, 3.1)
        self.accel = rng.uniform(0.6, 1.0)
        self.door_s = rng.uniform(2.0, 3.5)
        self.dwell_s = rng.uniform(3.0, 5.0)
        starts = rng.uniform(600, 1500) if self.commercial else rng.uniform(200, 600)
        self.calls_per_s = traffic * starts / 1.6 / 86_400.0
        self.profile = _COMMERCIAL if self.commercial else _RESIDENTIAL
        self.profile_norm = _NORM_COM if self.commercial else _NORM_RES
        self.periodic = periodic
        self.idle_period_ms = int(rng.uniform(30, 60) * 1000)
        self.move_period_ms = rng.choice((1000, 2000, 2000, 3000))
        self.heartbeat_ms = 60_000

        # ---- state
        self.mode = "normal"
        self.idx = rng.randrange(self.stops)  # floor index 0..stops-1
        self.pos = self.idx * self.storey_m
        self.speed = 0.0
        self.moving = False
        self.direction = "none"
        self.door = "closed"
        self.door_zone = True
        self.passengers = 0
        self.safety_open = False
        self.lock_open = False
        self.power = "mains"
        self.up_limit = False
        self.down_limit = False
        self.run_count = rng.randrange(50_000, 2_000_000)
        self.door_cycles = int(self.run_count * rng.uniform(1.0, 1.3))

        # normal-service machine
        self.phase = "idle"  # idle|door_opening|door_open|door_closing|moving
        self.phase_end = 0
        self.legs: list[tuple[int, int]] = []  # (target floor index, passengers after stop)
        self.trip: tuple[int, float, float, float, float, float, float] | None = None
        self.next_call = start_ms + self._call_gap_ms(start_ms)
        self.next_report = start_ms + rng.randrange(self.idle_period_ms)
        self.next_heartbeat = start_ms + rng.randrange(self.heartbeat_ms)

        # fault machinery
        self.fault: str | None = None
        self.fault_params: dict[str, Any] = {}
        self.script: list[tuple[int, Callable[[int], None]]] = []
        self.active_events: set[str] = set()
        self.in_service_at: int | None = None  # out_of_service until (after a fault)
        self.maintenance_until: int | None = None

    # ------------------------------------------------------------------ helpers
    def label(self, idx: int) -> int:
        """Display floor: basements negative, no floor 0."""
        return idx - self.basements + (1 if idx >= self.basements else 0)

    def _call_gap_ms(self, t: int) -> int:
        if self.calls_per_s <= 0:
            return 10**15
        rate = self.calls_per_s * self.profile[int(local_hour(t))] / self.profile_norm
        return max(1000, int(self.rng.expovariate(rate) * 1000))

    @property
    def load_pct(self) -> float:
        return round(self.passengers * KG_PER_PERSON / self.rated_load * 100.0, 1)

    def nearest_idx(self) -> int:
        return min(self.stops - 1, max(0, round(self.pos / self.storey_m)))

    def telemetry(self, t: int) -> None:
        self.send(
            t,
            "telemetry",
            {
                "mode": self.mode,
                "moving": self.moving,
                "direction": self.direction,
                "floor": self.label(self.nearest_idx()),
                "door_zone": self.door_zone,
                "door": self.door,
                "speed_mps": round(self.speed, 2),
                "load_pct": self.load_pct,
                "occupied": self.passengers > 0,
                "safety_circuit_open": self.safety_open,
                # the lock contacts only make once the door is fully closed: any other door state
                # reads open (a car reporting "open door, locks made" is the jumper sign)
                "door_lock_circuit_open": self.lock_open or self.door != "closed",
                "power": self.power,
                "up_limit": self.up_limit,
                "down_limit": self.down_limit,
                "run_count": self.run_count,
                "door_cycles": self.door_cycles,
            },
        )
        self.next_report = t + (self.move_period_ms if self.moving else self.idle_period_ms)

    def occur(self, t: int, code: str, **detail: Any) -> None:
        self.active_events.add(code)
        self.event(t, code, "occur", **detail)

    # ------------------------------------------------------------------ kinematics
    def _start_trip(self, t: int, target: int) -> None:
        dist = abs(target - self.idx) * self.storey_m
        v, a = self.rated_speed, self.accel
        if dist >= v * v / a:
            t_acc = v / a
            t_cruise = (dist - v * v / a) / v
        else:
            v = math.sqrt(dist * a)
            t_acc = v / a
            t_cruise = 0.0
        total = 2 * t_acc + t_cruise + 0.6  # + levelling creep
        sign = 1.0 if target > self.idx else -1.0
        self.trip = (t, self.pos, sign, v, t_acc, t_cruise, total)
        self.moving = True
        self.direction = "up" if sign > 0 else "down"
        self.run_count += 1
        self.phase = "moving"
        self.phase_end = t + int(total * 1000)
        self.trip_target = target
        self._kin(t)

    def _kin(self, t: int) -> None:
        """Position and speed at ``t`` from the trapezoidal profile."""
        assert self.trip is not None
        t0, p0, sign, v, ta, tc, total = self.trip
        s = (t - t0) / 1000.0
        a = self.accel
        if s < ta:
            d, spd = 0.5 * a * s * s, a * s
        elif s < ta + tc:
            d, spd = 0.5 * v * ta + v * (s - ta), v
        elif s < 2 * ta + tc:
            r = s - ta - tc
            d, spd = 0.5 * v * ta + v * tc + v * r - 0.5 * a * r * r, max(0.05, v - a * r)
        else:  # levelling creep
            d, spd = 0.5 * v * ta + v * tc + 0.5 * v * ta, 0.05 if s < total else 0.0
        self.pos = p0 + sign * d
        self.speed = spd
        near = self.nearest_idx()
        self.door_zone = abs(self.pos - near * self.storey_m) <= 0.2

    def _arrive(self, t: int) -> None:
        self.idx = self.trip_target
        self.pos = self.idx * self.storey_m
        self.speed = 0.0
        self.moving = False
        self.direction = "none"
        self.door_zone = True
        self.trip = None

    # ------------------------------------------------------------------ normal service
    def _new_call(self, t: int) -> None:
        pickup = self.rng.randrange(self.stops)
        lobby = min(self.basements, self.stops - 1)
        # most trips start or end at the lobby
        if self.rng.random() < 0.6:
            pickup, dest = lobby, self.rng.randrange(self.stops)
            if self.rng.random() < 0.5:
                pickup, dest = dest, pickup
        else:
            dest = self.rng.randrange(self.stops)
        if dest == pickup:
            dest = (pickup + 1 + self.rng.randrange(self.stops - 1)) % self.stops
        riders = 1 + min(int(self.rng.expovariate(0.9)), int(self.rated_load / KG_PER_PERSON) - 1)
        if pickup != self.idx:
            self.legs = [(pickup, riders), (dest, 0)]
            self._start_trip(t, pickup)
            self.telemetry(t)
        else:
            self.legs = [(dest, 0)]
            self._boarding = riders
            self._open_doors(t)

    def _open_doors(self, t: int) -> None:
        self.phase = "door_opening"
        self.door = "opening"
        self.door_cycles += 1
        self.phase_end = t + int(self.door_s * 1000)
        self.telemetry(t)

    def _service(self, t: int) -> None:
        """Advance the normal-service machine for transitions due at ``t``."""
        if self.phase == "moving":
            if t >= self.phase_end:
                self._arrive(t)
                target_riders = self.legs.pop(0)[1] if self.legs else 0
                self._boarding = target_riders
                self.telemetry(t)
                self._open_doors(t)
            else:
                self._kin(t)
                if t >= self.next_report:
                    self.telemetry(t)
            return
        if self.phase == "door_opening" and t >= self.phase_end:
            self.phase = "door_open"
            self.door = "open"
            self.passengers = getattr(self, "_boarding", 0)
            self.phase_end = t + int(self.dwell_s * 1000 * self.rng.uniform(0.8, 1.5))
            self.telemetry(t)
        elif self.phase == "door_open" and t >= self.phase_end:
            self.phase = "door_closing"
            self.door = "closing"
            self.phase_end = t + int(self.door_s * 1000)
            self.telemetry(t)
        elif self.phase == "door_closing" and t >= self.phase_end:
            self.door = "closed"
            if self.legs:
                self._start_trip(t, self.legs[0][0])
            else:
                self.phase = "idle"
            self.telemetry(t)
        elif self.phase == "idle" and t >= self.next_call:
            self.next_call = t + self._call_gap_ms(t)
            if self.mode == "normal":
                self._new_call(t)

    # ------------------------------------------------------------------ engine entry
    def wake(self, t: int) -> int:
        """Do what is due at ``t``; return the next wake time (epoch ms)."""
        while self.script and self.script[0][0] <= t:
            _, step = self.script.pop(0)
            step(t)
        if self.in_service_at is not None and t >= self.in_service_at and self.fault is None:
            self.in_service_at = None
            self.mode = "normal"
            self.telemetry(t)
        if self.maintenance_until is not None and t >= self.maintenance_until:
            self.maintenance_until = None
            if self.fault is None:
                self.mode = "normal"
                self.telemetry(t)
        if self.fault is None:
            self._service(t)
        elif self.moving and self.trip is not None:
            self._kin(t)
        self.periodic_reports(t)
        return self.next_wake(t)

    def next_wake(self, t: int) -> int:
        cands = [self.next_report if self.periodic else 10**15]
        if self.periodic:
            cands.append(self.next_heartbeat)
        if self.script:
            cands.append(self.script[0][0])
        if self.fault is None:
            if self.phase == "idle":
                cands.append(self.next_call)
            elif self.phase == "moving":
                cands.append(min(self.phase_end, self.next_report))
            else:
                cands.append(self.phase_end)
        if self.in_service_at is not None:
            cands.append(self.in_service_at)
        if self.maintenance_until is not None:
            cands.append(self.maintenance_until)
        return max(t + 1, min(cands))

    # ------------------------------------------------------------------ maintenance
    def start_maintenance(self, t: int, until: int) -> None:
        """Maintenance visit: the car goes to inspection (检修) mode and stops serving calls."""
        if self.fault is not None:
            return
        if self.phase == "moving" and self.trip is not None:
            self._arrive(t)  # the mechanic takes the car over once it has landed, not mid-shaft
        self._settle(t)
        self.passengers = 0
        self.mode = "inspection"
        self.maintenance_until = until
        self.telemetry(t)

    # ------------------------------------------------------------------ faults
    def _settle(self, t: int) -> None:
        """Bring the normal machine to rest so a fault script starts from a known state."""
        if self.phase == "moving" and self.trip is not None:
            self._kin(t)
        self.phase = "idle"
        self.legs = []

    def _after(self, t: int, delay_s: float, step: Callable[[int], None]) -> None:
        self.script.append((t + int(delay_s * 1000), step))
        self.script.sort(key=lambda item: item[0])

    def _out_of_service_for(self, t: int, seconds: float) -> None:
        self.mode = "out_of_service"
        self.in_service_at = t + int(seconds * 1000)

    def inject(self, t: int, fault: str, **params: Any) -> bool:
        """Start a fault now. Returns False if the car is already in a fault or offline."""
        if self.fault is not None or fault not in FAULTS:
            return False
        handler = getattr(self, f"_f_{fault}")
        self.fault = fault
        self.fault_params = params
        self.in_service_at = None
        handler(t, **params)
        return True

    def release(self, t: int, reason: str = "freed") -> bool:
        """End the current fault now (rescuers freed passengers / repair done)."""
        if self.fault is None:
            return False
        self.script = []
        end = getattr(self, f"_end_{self.fault}", None)
        if end is not None:
            end(t, reason)
        else:
            self._end_generic(t, reason)
        return True

    def _schedule_release(self, t: int, seconds: float | None) -> None:
        if seconds is not None:
            self._after(t, seconds, lambda tt: self.release(tt, "auto"))

    def _repair_s(self) -> float:
        return lognormal_s(self.rng, 1500, 0.6)

    def _end_generic(self, t: int, reason: str) -> None:
        """Clear flags, open doors at a landing, recover every open event, out of service a while."""
        was_trapped = self.passengers > 0 and "trapped" in self.active_events
        if not self.door_zone or self.safety_open or self.up_limit or self.down_limit:
            # rescuers move the car to the nearest landing (manual release / 盘车)
            self.idx = self.nearest_idx()
            self.pos = self.idx * self.storey_m
            self.door_zone = True
        self.safety_open = self.lock_open = False
        self.up_limit = self.down_limit = False
        self.power = "mains"
        self.moving, self.speed, self.direction = False, 0.0, "none"
        self.door = "open"
        self.door_cycles += 1
        self.telemetry(t)
        freed = self.passengers
        self.passengers = 0
        for code in sorted(self.active_events):
            self.recover(t, code, reason=reason, **({"freed": freed} if code == "trapped" else {}))
        self.fault = None
        self.fault_params = {}
        self.phase = "door_open"
        self.phase_end = t + int(self.dwell_s * 1000)
        self._out_of_service_for(t, self._repair_s() if not was_trapped else lognormal_s(self.rng, 1200, 0.5))
        self.telemetry(t)

    def _f_trapped(
        self,
        t: int,
        between_floors: bool = False,
        auto_release_s: float | None = None,
        detect_s: float | None = None,
        **_: Any,
    ) -> None:
        """困人: passengers held with doors shut, at a landing (平层) or between floors (非平层)."""
        self._settle(t)
        riders = 1 + min(int(self.rng.expovariate(0.6)), 6)
        self.passengers = riders
        self.door = "closed"
        if between_floors:
            # the car was running and stopped between landings (safety circuit opened)
            target = self.idx + 1 if self.idx < self.stops - 1 else self.idx - 1
            self.pos = (self.idx + target) / 2 * self.storey_m + self.rng.uniform(-0.4, 0.4)
            self.door_zone = False
            self.safety_open = True
            self.speed, self.moving, self.direction = 0.0, False, "none"
            self.run_count += 1
            self.telemetry(t)
            self.occur(t, "safety_circuit_open", floor=self.label(self.nearest_idx()))
            delay = detect_s if detect_s is not None else self.rng.uniform(20, 30)
        else:
            self.pos = self.idx * self.storey_m
            self.door_zone = True
            self.speed, self.moving, self.direction = 0.0, False, "none"
            self.telemetry(t)
            self._after(t, 5.0, lambda tt: self.occur(tt, "door_open_fault", floor=self.label(self.idx)))
            delay = detect_s if detect_s is not None else self.rng.uniform(25, 45)

        def confirm(tt: int) -> None:
            self.telemetry(tt)
            self.occur(
                tt,
                "trapped",
                floor=self.label(self.nearest_idx()),
                in_door_zone=self.door_zone,
                passengers=self.passengers,
                held_s=round((tt - t) / 1000),
            )

        self._after(t, delay, confirm)
        if self.rng.random() < 0.7:
            self._after(t, delay + self.rng.uniform(10, 90), lambda tt: self.occur(tt, "alarm_button"))
        # periodic status while trapped (terminals report faster during an incident)
        self._every(t, 10.0, 12)
        self._schedule_release(t, auto_release_s)

    def _every(self, t: int, period_s: float, count: int) -> None:
        for k in range(1, count + 1):
            self._after(t, period_s * k, self.telemetry)

    def _moving_start(self, t: int, up: bool | None = None, occupied: bool = True) -> None:
        """Put the car in motion from its floor (used by in-motion faults)."""
        self._settle(t)
        self.door = "closed"
        self.passengers = (1 + self.rng.randrange(3)) if occupied else 0
        if up is None:
            up = self.idx < self.stops // 2
        target = self.stops - 1 if up else 0
        if target == self.idx:
            target = 0 if up else self.stops - 1
        self._start_trip(t, target)

    def _stop_hard(self, t: int) -> None:
        """Emergency stop: brake, wherever the car is."""
        if self.trip is not None:
            self._kin(t)
        self.trip = None
        self.moving, self.speed, self.direction = False, 0.0, "none"
        self.phase = "idle"

    def _f_door_open_while_running(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """运行中开门: the door leaves 'closed' while the car runs; the lock circuit breaks."""
        self._moving_start(t, occupied=True)
        self.telemetry(t)
        t1 = t + 2500

        def door_opens(tt: int) -> None:
            self._kin(tt)
            self.speed = max(self.speed, 0.5)
            self.door = "open"
            self.lock_open = True
            self.telemetry(tt)
            self.occur(
                tt,
                "door_open_while_running",
                speed_mps=round(self.speed, 2),
                floor=self.label(self.nearest_idx()),
            )

        def stops(tt: int) -> None:
            self._stop_hard(tt)
            self.safety_open = True
            self.telemetry(tt)
            self.occur(tt, "safety_circuit_open")

        self.script.append((t1, door_opens))
        self.script.append((t1 + 800, stops))
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 900, 0.5))

    def _f_unintended_movement(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """开门走车 / UCM: doors open at a landing and the car creeps away (brake or jumpered lock)."""
        self._settle(t)
        self.pos = self.idx * self.storey_m
        self.door = "open"
        self.passengers = 1 + self.rng.randrange(2)
        self.telemetry(t)
        drift = self.rng.uniform(0.4, 1.1)
        sign = 1.0 if self.idx < self.stops - 1 and self.rng.random() < 0.6 else -1.0
        if self.idx == 0:
            sign = 1.0

        def creep(tt: int) -> None:
            self.moving, self.speed = True, round(self.rng.uniform(0.25, 0.5), 2)
            self.direction = "up" if sign > 0 else "down"
            self.pos = self.idx * self.storey_m + sign * drift
            self.door_zone = drift <= 0.2
            self.telemetry(tt)
            self.occur(tt, "unintended_movement", distance_m=round(drift, 2), floor=self.label(self.idx))

        def ucmp(tt: int) -> None:
            self.moving, self.speed, self.direction = False, 0.0, "none"
            self.safety_open = True
            self.telemetry(tt)

        self._after(t, 3.0, creep)
        self._after(t, 4.5, ucmp)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1800, 0.5))

    def _f_overspeed(
        self, t: int, factor: float | None = None, auto_release_s: float | None = None, **_: Any
    ) -> None:
        """超速: the car runs away (usually downwards) until the governor and safety gear stop it."""
        self._moving_start(t, up=False, occupied=self.rng.random() < 0.3)
        self.telemetry(t)
        k = factor or self.rng.uniform(1.18, 1.35)

        def runaway(tt: int) -> None:
            self._kin(tt)
            self.speed = round(self.rated_speed * k, 2)
            self.door_zone = False
            self.telemetry(tt)
            self.occur(
                tt, "overspeed", speed_mps=self.speed, rated_speed_mps=self.rated_speed, ratio=round(k, 3)
            )

        def gear(tt: int) -> None:
            self._stop_hard(tt)
            self.door_zone = False
            self.safety_open = True
            self.telemetry(tt)
            self.occur(tt, "safety_circuit_open", cause="governor")

        self._after(t, 2.0, runaway)
        self._after(t, 3.5, gear)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 2400, 0.5))

    def _f_overtravel(self, t: int, top: bool, auto_release_s: float | None) -> None:
        target_idx = self.stops - 1 if top else 0
        self._settle(t)
        start = max(0, target_idx - 3) if top else min(self.stops - 1, 3)
        if start == target_idx:
            start = max(0, min(self.stops - 1, target_idx + (-1 if top else 1)))
        self.idx, self.pos = start, start * self.storey_m
        self.passengers = self.rng.randrange(2)
        self.door = "closed"
        self._start_trip(t, target_idx)
        self.telemetry(t)
        t_end = self.phase_end
        self.phase = "fault"

        def overrun(tt: int) -> None:
            self.trip = None
            self.idx = target_idx
            self.pos = target_idx * self.storey_m + (0.35 if top else -0.35)
            self.moving, self.speed = False, 0.0
            self.direction = "none"
            self.door_zone = False
            self.up_limit, self.down_limit = top, not top
            self.safety_open = True
            self.telemetry(tt)
            self.occur(tt, "overtravel_top" if top else "overtravel_bottom", floor=self.label(target_idx))

        self.script.append((t_end, overrun))
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 2400, 0.5))

    def _f_overtravel_top(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """冲顶: the car passes the top landing and operates the final limit switch."""
        self._f_overtravel(t, True, auto_release_s)

    def _f_overtravel_bottom(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """蹲底: the car passes the bottom landing onto the buffer."""
        self._f_overtravel(t, False, auto_release_s)

    def _f_stopped_outside_door_zone(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """门区外停梯: empty car stops between landings; the terminal waits 45–60 s."""
        self._settle(t)
        self.passengers = 0
        self.door = "closed"
        target = self.idx + 1 if self.idx < self.stops - 1 else self.idx - 1
        self.pos = (self.idx + target) / 2 * self.storey_m
        self.door_zone = False
        self.safety_open = self.rng.random() < 0.5
        self.telemetry(t)
        self._after(
            t,
            self.rng.uniform(45, 60),
            lambda tt: self.occur(tt, "stopped_outside_door_zone", floor=self.label(self.nearest_idx())),
        )
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1800, 0.6))

    def _f_door_open_fault(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """开门故障 with an empty car: the door does not open after a stop."""
        self._settle(t)
        self.passengers = 0
        self.door = "closed"
        self.telemetry(t)
        self._after(t, 5.0, lambda tt: self.occur(tt, "door_open_fault", floor=self.label(self.idx)))
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1500, 0.6))

    def _f_door_close_fault(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """关门故障: the door never reaches 关门到位 (grit in the sill, the commonest cause)."""
        self._settle(t)
        self.door = "closing"
        self.lock_open = True
        self.telemetry(t)

        def reopen(tt: int) -> None:
            self.door = "open"
            self.telemetry(tt)
            self.occur(tt, "door_close_fault", floor=self.label(self.idx))

        self._after(t, self.rng.uniform(15, 30), reopen)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1500, 0.6))

    def _f_power_failure(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """停电: mains lost; the terminal runs on battery; a moving car stops where it is."""
        moving = self.phase == "moving"
        self._settle(t)
        self._stop_hard(t)
        if not moving:
            self.pos = self.idx * self.storey_m
            self.door_zone = True
        self.power = "battery"
        self.door = "closed" if self.door != "open" else "open"
        self.telemetry(t)
        self.occur(t, "power_failure", in_door_zone=self.door_zone)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1200, 0.8))

    def _end_power_failure(self, t: int, reason: str) -> None:
        self.power = "mains"
        self.door = "closed"
        self.idx = self.nearest_idx()
        self.pos = self.idx * self.storey_m
        self.door_zone = True
        self.passengers = 0
        self.fault = None
        for code in sorted(self.active_events):
            self.recover(t, code, reason=reason)
        self.phase = "idle"
        self.mode = "normal"
        self.telemetry(t)

    def _f_alarm_button(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """报警按钮: a passenger presses the alarm (often a false alarm); the car stays in service."""
        self._settle(t)
        self.passengers = max(self.passengers, 1)
        self.telemetry(t)
        self.occur(t, "alarm_button", floor=self.label(self.idx))
        self._schedule_release(t, auto_release_s or self.rng.uniform(20, 120))

    def _end_alarm_button(self, t: int, reason: str) -> None:
        self.passengers = 0
        self.fault = None
        self.recover(t, "alarm_button", reason=reason)
        self.telemetry(t)

    def _f_safety_circuit_open(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """安全回路断路 while running: emergency stop, usually in the door zone after levelling."""
        self._moving_start(t, occupied=False)
        self.telemetry(t)

        def trip(tt: int) -> None:
            self._stop_hard(tt)
            self.safety_open = True
            self.telemetry(tt)
            self.occur(tt, "safety_circuit_open", floor=self.label(self.nearest_idx()))

        self._after(t, 1.5, trip)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1500, 0.6))
