"""The fleet simulation: models, simulated clock, faults, humans and the network, no I/O.

``FleetSim.advance(until_ms)`` runs every model and scheduled action due up to a
simulated time and returns the messages that reach the broker by then, in delivery
order. The publisher paces it against the wall clock; tests call it directly and a
simulated day takes seconds. Everything is drawn from generators seeded by (seed,
device_id), so the same seed and start time give the same stream byte for byte.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sesmon.contract.gbt24476 import is_escalator
from sesmon.contract.registry import Unit
from sesmon.contract.schemas import Kind
from simulators.boiler import Boiler
from simulators.common import WILL_PAYLOAD, Msg, lognormal_s, unit_rng
from simulators.elevator import Elevator
from simulators.escalator import Escalator
from simulators.network import Network, NetworkOptions

YEAR_S = 365.0 * 86_400.0

# Background incident rates per 10,000 units in use per year (domain.md §1.7):
# trapped ≈ 400–550 per 10k elevators a year; other faults ≈ 0.5–0.7 × trapped.
ELEVATOR_RATES: dict[str, float] = {
    "trapped": 475.0,
    "door_open_fault": 55.0,
    "door_close_fault": 80.0,
    "stopped_outside_door_zone": 40.0,
    "power_failure": 40.0,
    "safety_circuit_open": 30.0,
    "overtravel_top": 8.0,
    "overtravel_bottom": 8.0,
    "door_open_while_running": 10.0,
    "unintended_movement": 5.0,
    "overspeed": 4.0,
}  # faults (all but trapped) sum to 280 ≈ 0.59 × trapped
# The rates above are per 10k elevator-kind units (city counts of 电梯 include escalators), injected
# into lifts. Escalators and moving walks add their own, per 10k escalators a year [D, assumed]:
# emergency stops after falls are common, failed safety devices rare.
ESCALATOR_RATES: dict[str, float] = {
    "emergency_stop": 1500.0,
    "safety_circuit_open": 150.0,
    "handrail_speed_fault": 100.0,
    "missing_step": 15.0,
    "overspeed": 3.0,
    "reversal": 2.0,
}
ALARM_BUTTON_RATE = 300.0  # presses without a trapping (mostly false alarms); not a "fault"
BOILER_RATES: dict[str, float] = {
    "flame_failure": 2000.0,
    "pump_fault": 800.0,
    "low_water": 400.0,
    "overpressure": 200.0,
    "gas_leak": 50.0,
    "fouling": 1500.0,
}
# share of boiler incidents where the protection fails (serious hidden danger)
TRIP_FAIL_SHARE = 0.03
VALVE_SEIZED_SHARE = 0.1
TRAPPED_BETWEEN_FLOORS_SHARE = 0.4

#: what --faults demo cycles through, every few seconds (kind, fault, params)
DEMO_SEQUENCE: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("elevator", "trapped", {"between_floors": False, "detect_s": 15.0, "auto_release_s": 240.0}),
    ("boiler", "low_water", {"trip": True, "rate_mm_s": 10.0, "auto_release_s": 180.0}),
    ("elevator", "door_open_while_running", {"auto_release_s": 120.0}),
    ("boiler", "overpressure", {"trip": False, "valve": "lift", "rate_mpa_s": 0.05, "auto_release_s": 120.0}),
    ("elevator", "overspeed", {"auto_release_s": 150.0}),
    ("elevator", "offline", {"duration_s": 150.0, "lwt_delay_s": 5.0}),
    ("elevator", "unintended_movement", {"auto_release_s": 150.0}),
    ("elevator", "trapped", {"between_floors": True, "detect_s": 20.0, "auto_release_s": 240.0}),
    ("boiler", "flame_failure", {"trip": False, "auto_release_s": 120.0}),
    ("elevator", "overtravel_top", {"auto_release_s": 150.0}),
    ("boiler", "low_water", {"trip": False, "rate_mm_s": 10.0, "auto_release_s": 150.0}),
    ("elevator", "door_close_fault", {"auto_release_s": 120.0}),
    ("boiler", "gas_leak", {"auto_release_s": 120.0}),
    ("elevator", "power_failure", {"auto_release_s": 120.0}),
    ("escalator", "reversal", {"auto_release_s": 150.0}),
)


@dataclass
class SimOptions:
    """How the fleet behaves; see ``simulate --help`` for the CLI names."""

    faults: str = "none"  # none | background | demo
    fault_rate_multiplier: float = 1.0  # scales background rates (accelerate incidents)
    demo_first_s: float = 3.0  # demo: first fault this many *wall* seconds after start
    demo_interval_s: float = 3.0  # demo: then one every this many wall seconds
    time_scale: float = 1.0  # only to space demo faults in wall time
    traffic: float = 1.0  # elevator usage multiplier (0 = no trips)
    periodic: bool = True  # idle reports and heartbeats (off: events-only, for rate tests)
    human: bool = True  # maintenance visits, inspections, accident reports
    responders: bool = True  # act on alerts given to on_alert()
    network: NetworkOptions = field(default_factory=NetworkOptions)
    announce: bool = True  # retained JSON ``online`` status for every device at start
    boiler_tick_s: float = 2.0  # boiler physics step (coarser for month-long runs)
    boiler_report_s: float | None = None  # fixed boiler report period (default: 10–20 s per unit)


class FleetSim:
    """A whole fleet on one simulated clock."""

    def __init__(
        self,
        units: Iterable[Unit],
        seed: int = 1,
        start_ms: int | None = None,
        options: SimOptions | None = None,
    ) -> None:
        self.seed = seed
        self.o = options or SimOptions()
        if start_ms is None:
            start_ms = int(datetime(2026, 11, 23, 1, 0, tzinfo=UTC).timestamp() * 1000)
        self.start_ms = start_ms
        self.now = start_ms
        self.rng = random.Random(f"{seed}:fleet")
        self.outbox: list[Msg] = []
        self.net = Network(self.o.network, random.Random(f"{seed}:net"))
        self.units: dict[str, Unit] = {}
        self.devices: dict[str, Elevator | Escalator | Boiler] = {}
        self.wake_at: dict[str, int] = {}
        self.heap: list[tuple[int, int, str]] = []  # (t, n, device_id) model wakes
        self.actions: list[tuple[int, int, Callable[[int], None]]] = []
        self.n = 0
        self.stats: Counter[str] = Counter()
        self.fault_log: list[tuple[int, str, str, dict[str, Any]]] = []  # (t, device, fault, params)
        for unit in units:
            self._add(unit)
        self.elevator_ids = sorted(d for d, u in self.units.items() if u.kind == Kind.elevator and u.in_use)
        # lifts (traction, hydraulic) and escalators / moving walks (33xx) fail in different ways
        self.escalator_ids = [d for d in self.elevator_ids if is_escalator(self.units[d].type_code)]
        escalators = set(self.escalator_ids)
        self.lift_ids = [d for d in self.elevator_ids if d not in escalators]
        self.boiler_ids = sorted(d for d, u in self.units.items() if u.kind == Kind.boiler and u.in_use)
        self.steam_ids = [d for d in self.boiler_ids if self.units[d].steam]
        if self.o.announce:
            for dev in self.devices.values():
                dev.status(start_ms, "online")
        if self.o.faults in ("background", "demo"):
            self._start_background()
        if self.o.faults == "demo":
            self._start_demo()
        from simulators.human import Humans  # late: human.py imports engine constants

        self.humans = Humans(self, random.Random(f"{seed}:human"))
        if self.o.human:
            self.humans.start()
        self._flush()

    # ------------------------------------------------------------------ setup
    def _add(self, unit: Unit) -> None:
        if unit.status == "scrapped":
            return
        rng = unit_rng(self.seed, unit.device_id)
        dev: Elevator | Escalator | Boiler
        if unit.kind == Kind.elevator and is_escalator(unit.type_code):
            dev = Escalator(unit, rng, self.outbox, self.start_ms, periodic=self.o.periodic)
            if unit.status != "in_use":
                dev.mode = "out_of_service"
        elif unit.kind == Kind.elevator:
            dev = Elevator(
                unit, rng, self.outbox, self.start_ms, traffic=self.o.traffic, periodic=self.o.periodic
            )
            if unit.status != "in_use":
                dev.mode = "out_of_service"
                dev.calls_per_s = 0.0
        else:
            dev = Boiler(unit, rng, self.outbox, self.start_ms, periodic=self.o.periodic)
            dev.tick_ms = int(self.o.boiler_tick_s * 1000)
            dev.next_tick = self.start_ms + dev.tick_ms
            if self.o.boiler_report_s:
                dev.report_ms = int(self.o.boiler_report_s * 1000)
        self.net.configure_device(dev)
        self.units[unit.device_id] = unit
        self.devices[unit.device_id] = dev
        self._wake(unit.device_id, self.start_ms)

    def _wake(self, device_id: str, t: int) -> None:
        self.n += 1
        self.wake_at[device_id] = t
        heapq.heappush(self.heap, (t, self.n, device_id))

    def schedule(self, t: int, fn: Callable[[int], None]) -> None:
        """Run ``fn(t)`` at simulated time ``t`` (human actions, injections, reconnects)."""
        self.n += 1
        heapq.heappush(self.actions, (max(t, self.now), self.n, fn))

    # ------------------------------------------------------------------ running
    def advance(self, until: int) -> list[Msg]:
        """Run to simulated time ``until``; return messages delivered by then, in order."""
        heap, actions, devices, wake_at = self.heap, self.actions, self.devices, self.wake_at
        while True:
            t_dev = heap[0][0] if heap else 1 << 62
            t_act = actions[0][0] if actions else 1 << 62
            if min(t_dev, t_act) > until:
                break
            if t_act <= t_dev:
                t, _, fn = heapq.heappop(actions)
                self.now = t
                fn(t)
                continue
            t, _, dev_id = heapq.heappop(heap)
            if wake_at.get(dev_id) != t:
                continue  # superseded by an earlier wake
            self.now = t
            nxt = devices[dev_id].wake(t)
            self._wake(dev_id, nxt)
            if len(self.outbox) > 5000:
                self._flush()
        self.now = max(self.now, until)
        self._flush()
        out = self.net.due(until)
        self.stats["messages"] += len(out)
        return out

    def _flush(self) -> None:
        if self.outbox:
            self.net.submit(self.outbox)
            self.outbox.clear()

    def run_for(self, seconds: float, step_s: float = 60.0) -> list[Msg]:
        """Convenience for tests and offline rendering: advance in steps, collect everything."""
        end = self.now + int(seconds * 1000)
        out: list[Msg] = []
        t = self.now
        while t < end:
            t = min(end, t + int(step_s * 1000))
            out.extend(self.advance(t))
        return out

    # ------------------------------------------------------------------ faults
    def inject(self, device_id: str, fault: str, at_ms: int | None = None, **params: Any) -> None:
        """Schedule a fault (or ``offline`` / ``online``) on a unit, now or at ``at_ms``."""
        if device_id not in self.devices:
            raise KeyError(f"unknown device {device_id}")
        self.schedule(
            self.now if at_ms is None else at_ms, lambda t: self._do_inject(t, device_id, fault, params)
        )

    def _do_inject(self, t: int, device_id: str, fault: str, params: dict[str, Any]) -> bool:
        dev = self.devices[device_id]
        if fault == "offline":
            self.net.drop(
                dev, t, float(params.get("duration_s", 600.0)), float(params.get("lwt_delay_s", 45.0))
            )
            dur = int(float(params.get("duration_s", 600.0)) * 1000)
            self.schedule(t + dur, lambda tt: self._reconnect(tt, device_id))
            ok = True
        elif fault == "online":
            self._reconnect(t, device_id)
            ok = True
        elif fault == "release":
            ok = dev.release(t, str(params.get("reason", "scenario")))
        else:
            if isinstance(dev, Elevator | Escalator) and dev.maintenance_until is not None:
                dev.maintenance_until = None
                dev.mode = "normal"
            ok = dev.inject(t, fault, **params)
        if ok:
            self.stats[f"fault:{fault}"] += 1
            self.fault_log.append((t, device_id, fault, dict(params)))
            self._wake(device_id, t)
        return ok

    def release(self, device_id: str, at_ms: int | None = None, reason: str = "freed") -> None:
        """End a unit's fault (rescuers freed passengers, repair done)."""
        self.inject(device_id, "release", at_ms, reason=reason)

    def _reconnect(self, t: int, device_id: str) -> None:
        dev = self.devices[device_id]
        if device_id in self.net.offline_until:
            self._flush()
            self.net.reconnect(dev, t)
            self._wake(device_id, t)

    def busy(self, device_id: str) -> bool:
        dev = self.devices[device_id]
        if device_id in self.net.offline_until:
            return True
        if isinstance(dev, Elevator | Escalator):
            return dev.fault is not None or dev.maintenance_until is not None or dev.in_service_at is not None
        return dev.fault is not None

    def _pick(self, ids: list[str], rng: random.Random) -> str | None:
        for _ in range(20):
            if not ids:
                return None
            dev_id = ids[rng.randrange(len(ids))]
            if not self.busy(dev_id):
                return dev_id
        return None

    def _start_background(self) -> None:
        """Fleet-level Poisson processes, one per fault type, at the calibrated rates."""
        mult = self.o.fault_rate_multiplier
        streams: list[tuple[str, str, float]] = []
        n_el, n_bo = len(self.elevator_ids), len(self.boiler_ids)
        if self.lift_ids:
            for fault, rate in ELEVATOR_RATES.items():
                streams.append(("elevator", fault, rate * n_el / 10_000 * mult))
            streams.append(("elevator", "alarm_button", ALARM_BUTTON_RATE * n_el / 10_000 * mult))
        for fault, rate in ESCALATOR_RATES.items():
            streams.append(("escalator", fault, rate * len(self.escalator_ids) / 10_000 * mult))
        for fault, rate in BOILER_RATES.items():
            streams.append(("boiler", fault, rate * n_bo / 10_000 * mult))
        dropouts = self.o.network.dropouts_per_year
        if dropouts:
            streams.append(("any", "offline", dropouts * (n_el + n_bo)))
        for kind, fault, per_year in streams:
            if per_year <= 0:
                continue
            rng = random.Random(f"{self.seed}:bg:{kind}:{fault}")
            self._next_background(self.start_ms, kind, fault, per_year, rng)

    def _next_background(self, t: int, kind: str, fault: str, per_year: float, rng: random.Random) -> None:
        gap_ms = int(rng.expovariate(per_year / YEAR_S) * 1000)

        def fire(tt: int) -> None:
            ids = {"elevator": self.lift_ids, "escalator": self.escalator_ids}.get(kind, self.boiler_ids)
            if kind == "any":
                ids = self.elevator_ids + self.boiler_ids
            if fault == "low_water":
                ids = self.steam_ids
            dev_id = self._pick(ids, rng)
            if dev_id is not None:
                params = self._background_params(fault, rng)
                self.stats[f"background:{fault}"] += 1
                self._do_inject(tt, dev_id, fault, params)
            self._next_background(tt, kind, fault, per_year, rng)

        self.schedule(t + max(1, gap_ms), fire)

    def _background_params(self, fault: str, rng: random.Random) -> dict[str, Any]:
        if fault == "trapped":
            # fallback when no responder acts on an alert: freed after arrival + rescue time
            freed_s = lognormal_s(rng, 13 * 60, 0.45) + lognormal_s(rng, 7 * 60, 0.5)
            return {"between_floors": rng.random() < TRAPPED_BETWEEN_FLOORS_SHARE, "auto_release_s": freed_s}
        if fault in ("low_water", "flame_failure"):
            return {"trip": rng.random() >= TRIP_FAIL_SHARE}
        if fault == "overpressure":
            trip = rng.random() >= 0.25
            return {"trip": trip, "valve": "seized" if rng.random() < VALVE_SEIZED_SHARE else "lift"}
        if fault == "pump_fault":
            return {"standby": rng.random() < 0.7}
        if fault == "fouling":
            return {"rate_k_per_day": rng.uniform(0.3, 1.0)}
        if fault == "offline":
            return {"duration_s": lognormal_s(rng, self.o.network.dropout_median_s, 1.0)}
        return {}

    def _start_demo(self) -> None:
        """Inject the faults the first rules detect: first within seconds, then every few seconds."""
        rng = random.Random(f"{self.seed}:demo")
        scale = max(self.o.time_scale, 0.01)
        k = 0

        def fire(t: int) -> None:
            nonlocal k
            kind, fault, params = DEMO_SEQUENCE[k % len(DEMO_SEQUENCE)]
            k += 1
            ids = {"elevator": self.lift_ids, "escalator": self.escalator_ids}.get(
                kind, self.steam_ids or self.boiler_ids
            )
            dev_id = self._pick(ids, rng)
            if dev_id is not None:
                scaled = dict(params)
                self._do_inject(t, dev_id, fault, scaled)
            self.schedule(t + int(self.o.demo_interval_s * scale * 1000), fire)

        self.schedule(self.start_ms + int(self.o.demo_first_s * scale * 1000), fire)

    # ------------------------------------------------------------------ humans
    def on_alert(self, alert: dict[str, Any]) -> None:
        """An alert seen on ``sesmon/v1/alerts/#``: responders act on it (simulated time)."""
        if self.o.responders:
            self.humans.on_alert(alert)

    def on_hazard(self, hazard: dict[str, Any]) -> None:
        if self.o.responders:
            self.humans.on_hazard(hazard)

    def add_message(self, msg: Msg) -> None:
        """Non-device messages (reports, dispatch) from the human side."""
        self.outbox.append(msg)

    def shutdown_messages(self, t: int | None = None) -> list[Msg]:
        """What the broker would publish if every terminal's connection died: LWT ``offline``."""
        t = self.now if t is None else t
        return [
            Msg(t, dev.topic("status"), WILL_PAYLOAD, True, dev.device_id, "status")
            for dev in self.devices.values()
        ]
