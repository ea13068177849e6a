"""Escalator and moving-walk model (type codes 3310 / 3320; GB 16899-2011, domain.md §1.2–1.5).

An escalator is simpler than a lift car: it runs at its nominal speed (0.5 m/s) in the
direction it is set to, all day while the building is open, and stands still at night. What
a terminal sees is that steady state, plus the faults the safety devices are there for:

- reversal (逆转): the step band runs against its set direction; the non-reversal device must
  stop it (GB 16899 5.4.2.3);
- overspeed (超速): more than 1.2 × nominal before it is stopped (5.4.2.3);
- handrail speed (扶手带速度偏差): a handrail more than 15 % slower than the steps for 15 s
  (5.6.1); healthy handrails run 0 to +2 % faster than the steps;
- missing step (缺级) and emergency stop (急停).

Like the lift model it publishes telemetry first and the terminal's event after its detection
delay, stops the unit as the safety device would, and recovers on release.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from sesmon.contract.registry import Unit
from sesmon.contract.time import local_hour
from simulators.common import Device, Msg, lognormal_s

FAULTS = (
    "reversal",
    "overspeed",
    "handrail_speed_fault",  # params: slow_pct (how much slower the handrail runs, per cent)
    "missing_step",
    "emergency_stop",
    "safety_circuit_open",
)

#: handrail speed against step speed on a healthy unit: 0 to +2 % (GB 16899-2011 5.6.1)
HANDRAIL_LEAD = (0.002, 0.018)


class Escalator(Device):
    """One escalator or moving walk. ``wake(t)`` does what is due and returns the next wake time."""

    def __init__(
        self, unit: Unit, rng: random.Random, outbox: list[Msg], start_ms: int, *, periodic: bool = True
    ) -> None:
        super().__init__(unit.device_id, "elevator", outbox)
        self.unit = unit
        self.rng = rng
        self.rated_speed = float(unit.rated_speed_mps or 0.5)
        self.moving_walk = unit.type_code == "3320"
        self.set_direction = "up" if (self.moving_walk or rng.random() < 0.5) else "down"
        # opening hours, local time: stations run early and late, malls and offices shorter
        station = unit.key_site == "station"
        self.opens_h = rng.choice((5.5, 6.0)) if station else rng.choice((7.0, 8.0, 9.0, 10.0))
        self.closes_h = rng.choice((23.5, 24.0)) if station else rng.choice((21.0, 22.0, 22.5))
        self.periodic = periodic
        self.running_period_ms = int(rng.uniform(20, 40) * 1000)
        self.idle_period_ms = int(rng.uniform(45, 60) * 1000)
        self.heartbeat_ms = 60_000
        self.rail_lead = (rng.uniform(*HANDRAIL_LEAD), rng.uniform(*HANDRAIL_LEAD))

        # ---- state
        self.mode = "normal"
        self.moving = False
        self.speed = 0.0
        self.direction = "none"
        self.rail_factor = [1.0 + self.rail_lead[0], 1.0 + self.rail_lead[1]]
        self.missing_step = False
        self.emergency_stop = False
        self.safety_open = False
        self.power = "mains"
        self.run_count = rng.randrange(2_000, 40_000)
        self.next_report = start_ms + rng.randrange(self.idle_period_ms)
        self.next_heartbeat = start_ms + rng.randrange(self.heartbeat_ms)
        self.next_schedule = start_ms  # next opening-hours check

        # fault machinery (same shape as the lift model, so the engine treats both alike)
        self.fault: str | None = None
        self.fault_params: dict[str, Any] = {}
        self.script: list[tuple[int, Callable[[int], None]]] = []
        self.active_events: set[str] = set()
        self.in_service_at: int | None = None
        self.maintenance_until: int | None = None

    # ------------------------------------------------------------------ reporting
    def open_at(self, t: int) -> bool:
        hour = local_hour(t)
        return self.opens_h <= hour < self.closes_h

    def telemetry(self, t: int) -> None:
        r = self.rng
        body: dict[str, Any] = {
            "mode": self.mode,
            "moving": self.moving,
            "direction": self.direction,
            "set_direction": self.set_direction,
            "speed_mps": round(self.speed, 3),
            "handrail_left_mps": round(self.speed * self.rail_factor[0], 3),
            "handrail_right_mps": round(self.speed * self.rail_factor[1], 3),
            "missing_step": self.missing_step,
            "emergency_stop": self.emergency_stop,
            "safety_circuit_open": self.safety_open,
            "power": self.power,
            "run_count": self.run_count,
        }
        if self.moving and self.fault is None:
            noise = 1.0 + r.gauss(0.0, 0.002)  # drive and sensor jitter, far inside 0..+2 %
            body["speed_mps"] = round(self.speed * noise, 3)
            body["handrail_left_mps"] = round(self.speed * noise * self.rail_factor[0], 3)
            body["handrail_right_mps"] = round(self.speed * noise * self.rail_factor[1], 3)
        self.send(t, "telemetry", body)
        self.next_report = t + (self.running_period_ms if self.moving else self.idle_period_ms)

    def occur(self, t: int, code: str, **detail: Any) -> None:
        self.active_events.add(code)
        self.event(t, code, "occur", **detail)

    # ------------------------------------------------------------------ normal service
    def _start(self, t: int) -> None:
        self.moving, self.speed, self.direction = True, self.rated_speed, self.set_direction
        self.run_count += 1
        self.telemetry(t)

    def _stop(self, t: int, report: bool = True) -> None:
        self.moving, self.speed, self.direction = False, 0.0, "none"
        if report:
            self.telemetry(t)

    def _next_boundary(self, t: int) -> int:
        """The next opening or closing time after ``t``: the unit sleeps until then (a year of
        once-a-minute checks for thousands of escalators would be most of a long simulation)."""
        since_midnight_ms = int(local_hour(t) * 3_600_000)
        midnight = t - since_midnight_ms
        for day in (0, 1):
            for hour in (self.opens_h, self.closes_h):
                at = midnight + day * 86_400_000 + int(hour * 3_600_000)
                if at > t:
                    return at
        return t + 86_400_000  # not reached: tomorrow's opening is always ahead

    def _service(self, t: int) -> None:
        """Start at opening time, stop at closing time."""
        if t < self.next_schedule:
            return
        self.next_schedule = self._next_boundary(t)
        want = self.mode == "normal" and self.open_at(t)
        if want and not self.moving:
            self._start(t)
        elif not want and self.moving:
            self._stop(t)

    # ------------------------------------------------------------------ engine entry
    def wake(self, t: int) -> int:
        while self.script and self.script[0][0] <= t:
            _, step = self.script.pop(0)
            step(t)
        if self.in_service_at is not None and t >= self.in_service_at and self.fault is None:
            self.in_service_at = None
            self.mode = "normal"
            self.next_schedule = t
            self.telemetry(t)
        if self.maintenance_until is not None and t >= self.maintenance_until:
            self.maintenance_until = None
            if self.fault is None:
                self.mode = "normal"
                self.next_schedule = t
                self.telemetry(t)
        if self.fault is None:
            self._service(t)
        self.periodic_reports(t)
        return self.next_wake(t)

    def next_wake(self, t: int) -> int:
        cands = [self.next_report if self.periodic else 10**15]
        if self.periodic:
            cands.append(self.next_heartbeat)
        if self.script:
            cands.append(self.script[0][0])
        if self.fault is None:
            cands.append(self.next_schedule)
        if self.in_service_at is not None:
            cands.append(self.in_service_at)
        if self.maintenance_until is not None:
            cands.append(self.maintenance_until)
        return max(t + 1, min(cands))

    # ------------------------------------------------------------------ maintenance
    def start_maintenance(self, t: int, until: int) -> None:
        """Maintenance visit: stopped, in inspection (检修) mode until the visit ends."""
        if self.fault is not None:
            return
        self.mode = "inspection"
        self.maintenance_until = until
        self._stop(t)

    # ------------------------------------------------------------------ faults
    def _after(self, t: int, delay_s: float, step: Callable[[int], None]) -> None:
        self.script.append((t + int(delay_s * 1000), step))
        self.script.sort(key=lambda item: item[0])

    def _every(self, t: int, period_s: float, count: int) -> None:
        for k in range(1, count + 1):
            self._after(t, period_s * k, self.telemetry)

    def inject(self, t: int, fault: str, **params: Any) -> bool:
        """Start a fault now. False if the unit is already in a fault or the fault is not an escalator's."""
        if self.fault is not None or fault not in FAULTS:
            return False
        self.fault = fault
        self.fault_params = params
        self.in_service_at = None
        self.maintenance_until = None
        self.mode = "normal"
        if not self.moving:  # faults happen in service: the unit was running
            self._start(t)
        getattr(self, f"_f_{fault}")(t, **params)
        return True

    def release(self, t: int, reason: str = "freed") -> bool:
        """End the current fault: reset, recover the events, out of service for the repair."""
        if self.fault is None:
            return False
        fault = self.fault
        self.script = []
        self.missing_step = self.emergency_stop = self.safety_open = False
        self.rail_factor = [1.0 + self.rail_lead[0], 1.0 + self.rail_lead[1]]
        self._stop(t, report=False)
        for code in sorted(self.active_events):
            self.recover(t, code, reason=reason)
        self.fault = None
        self.fault_params = {}
        # an emergency stop is reset by the user unit once it has checked; the rest need a repair
        down_s = self.rng.uniform(60, 300) if fault == "emergency_stop" else lognormal_s(self.rng, 2400, 0.6)
        self.mode = "out_of_service"
        self.in_service_at = t + int(down_s * 1000)
        self.telemetry(t)
        return True

    def _schedule_release(self, t: int, seconds: float | None) -> None:
        if seconds is not None:
            self._after(t, seconds, lambda tt: self.release(tt, "auto"))

    def _halt(self, t: int, *, safety: bool = True) -> None:
        """The safety device stops the unit (brake applied, safety chain open)."""
        self._stop(t, report=False)
        self.safety_open = safety

    def _f_reversal(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """逆转: under load the step band slows and runs back; the non-reversal device stops it."""
        opposite = "down" if self.set_direction == "up" else "up"

        def reverses(tt: int) -> None:
            self.direction, self.speed = opposite, round(self.rng.uniform(0.15, 0.35), 2)
            self.telemetry(tt)
            self.occur(tt, "reversal", set_direction=self.set_direction, direction=opposite)

        def stops(tt: int) -> None:
            self._halt(tt)
            self.telemetry(tt)

        self._after(t, 1.0, reverses)
        self._after(t, 3.0, lambda tt: self.telemetry(tt))
        self._after(t, 4.0, stops)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 3600, 0.5))

    def _f_overspeed(
        self, t: int, factor: float | None = None, auto_release_s: float | None = None, **_: Any
    ) -> None:
        """超速: the drive runs away (a failed brake or drive) past 1.2 × nominal until it is stopped."""
        k = factor or self.rng.uniform(1.25, 1.4)

        def runaway(tt: int) -> None:
            self.speed = round(self.rated_speed * k, 3)
            self.telemetry(tt)
            self.occur(
                tt, "overspeed", speed_mps=self.speed, rated_speed_mps=self.rated_speed, ratio=round(k, 3)
            )

        def stops(tt: int) -> None:
            self._halt(tt)
            self.telemetry(tt)

        self._after(t, 1.0, runaway)
        self._after(t, 2.5, lambda tt: self.telemetry(tt))
        self._after(t, 4.0, stops)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 3600, 0.5))

    def _f_handrail_speed_fault(
        self, t: int, slow_pct: float | None = None, auto_release_s: float | None = None, **_: Any
    ) -> None:
        """扶手带速度偏差: a worn drive lets one handrail slip; after 15 s the monitor stops the unit."""
        slow = slow_pct if slow_pct is not None else self.rng.uniform(20, 35)
        side = self.rng.randrange(2)
        self.rail_factor[side] = 1.0 - slow / 100.0
        self.telemetry(t)
        self._every(t, 2.0, 9)  # terminals report faster during an incident: up to 18 s

        def stops(tt: int) -> None:
            self.telemetry(tt)
            self.occur(
                tt, "handrail_speed_fault", side="left" if side == 0 else "right", slow_pct=round(slow, 1)
            )
            self._halt(tt)
            self.telemetry(tt)

        self._after(t, 19.0, stops)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 3600, 0.5))

    def _f_missing_step(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """缺级: a step or pallet is missing; the device stops the unit before the gap reaches the comb."""

        def detected(tt: int) -> None:
            self.missing_step = True
            self._halt(tt)
            self.telemetry(tt)
            self.occur(tt, "missing_step")

        self._after(t, 1.0, detected)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 7200, 0.5))

    def _f_emergency_stop(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """急停: someone pressed an emergency stop switch at a landing (often after a fall)."""

        def pressed(tt: int) -> None:
            self.emergency_stop = True
            self._halt(tt, safety=False)  # reported as its own flag, not as a safety-chain fault
            self.telemetry(tt)
            self.occur(tt, "emergency_stop")

        self._after(t, 1.0, pressed)
        self._schedule_release(t, auto_release_s or self.rng.uniform(120, 900))

    def _f_safety_circuit_open(self, t: int, auto_release_s: float | None = None, **_: Any) -> None:
        """安全回路断路: a comb-plate, skirt or step-sag switch opens the safety chain."""

        def trips(tt: int) -> None:
            self._halt(tt)
            self.telemetry(tt)
            self.occur(tt, "safety_circuit_open")

        self._after(t, 1.0, trips)
        self._schedule_release(t, auto_release_s or lognormal_s(self.rng, 1800, 0.6))
