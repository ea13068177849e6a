"""Scenario files: a YAML timeline for chosen units, for tests, demos and evidence drills.

A scenario names its fleet (a registry subset or a generated mini fleet), the options
(background faults, network effects, humans), a timeline of faults and actions at
offsets from the start, and optionally ``expect``: what the stream must contain. The
same file can be published live (``sesmon simulate --scenario``) or rendered offline
(:func:`render_scenario`) for rule tests. Format: see simulators/README.md.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rules.scenario_model import ScenarioDoc, ScenarioError, validate_scenario
from sesmon.contract.gbt24476 import is_escalator
from sesmon.contract.registry import Registry, Unit
from sesmon.contract.schemas import Kind
from simulators import boiler, elevator, escalator
from simulators.common import Msg
from simulators.engine import FleetSim, SimOptions
from simulators.network import NetworkOptions

SCENARIO_DIR = Path(__file__).parent / "scenarios"
_DUR = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?")
#: params a scenario may write as a duration without the ``_s`` (see ``Scenario._schedule``)
_DURATION_PARAMS = ("auto_release", "detect", "duration")
_UNIT_S = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(value: Any) -> float:
    """'90s', '5m', '2h', '1d' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).replace(" ", "")
    parts = list(_DUR.finditer(text))
    if not parts or "".join(m.group(0) for m in parts) != text:
        raise ValueError(f"bad duration {value!r} (use 30s, 5m, 2h, 1d, 9m10s)")
    return sum(float(m.group(1)) * _UNIT_S[m.group(2)] for m in parts)


def fault_params() -> dict[str, frozenset[str]]:
    """Every fault the models know, with the params a scenario may give it (for validation).

    Taken from the models' ``_f_<fault>`` signatures, so a new fault or param needs no list kept
    by hand; ``auto_release_s`` / ``detect_s`` may also be written as durations (``auto_release: 2m``).
    """
    found: dict[str, set[str]] = {}
    models = ((elevator.Elevator, elevator.FAULTS), (escalator.Escalator, escalator.FAULTS),
              (boiler.Boiler, boiler.FAULTS))  # fmt: skip
    for model, faults in models:
        for fault in faults:
            keys = found.setdefault(fault, {"auto_release", "auto_release_s"})
            handler = getattr(model, f"_f_{fault}", None)
            if handler is None:
                continue
            for name, param in inspect.signature(handler).parameters.items():
                if name in ("self", "t") or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                    continue
                keys.add(name)
                if name.removesuffix("_s") in _DURATION_PARAMS:
                    keys.add(name.removesuffix("_s"))
    found.setdefault("fouling", set()).add("rate_k_per_day")  # read by Boiler.inject itself
    return {fault: frozenset(keys) for fault, keys in found.items()}


@dataclass
class Step:
    at_s: float
    device: str
    fault: str | None = None
    action: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    start_ms: int | None = None
    duration_s: float = 600.0
    units: list[str] | None = None
    fleet: dict[str, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timeline: list[Step] = field(default_factory=list)
    expect: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    # ------------------------------------------------------------------ fleet
    def select_units(self, registry: Registry | list[Unit] | str | Path | None) -> list[Unit]:
        if self.fleet:
            from simulators.fleet import generate_fleet

            return generate_fleet(
                int(self.fleet.get("elevators", 0)),
                int(self.fleet.get("boilers", 0)),
                seed=int(self.fleet.get("seed", 1)),
            )
        if registry is None:
            raise ValueError(f"scenario {self.name} names no fleet: pass a registry")
        if isinstance(registry, str | Path):
            registry = Registry.load(registry)
        units = list(registry)
        if self.units is None:
            return units
        by_id = {u.device_id: u for u in units}
        missing = [d for d in self.units if d not in by_id and "#" not in d]
        if missing:
            raise ValueError(f"scenario {self.name}: units not in the registry: {missing}")
        return [by_id[d] for d in self.units if d in by_id]

    def resolve(self, device: str, units: list[Unit]) -> str:
        """``elevator#0`` / ``boiler#1`` / ``steam#0`` → the n-th such unit; ids pass through.

        ``elevator#N`` is the N-th *lift*: escalators and moving walks (33xx) are elevator-kind
        units too, but a lift fault (trapped, door faults) means nothing to them; they are
        ``escalator#N``."""
        if "#" not in device:
            return device
        kind, _, idx = device.partition("#")
        if kind == "elevator":
            pool = [u for u in units if u.kind == Kind.elevator and not is_escalator(u.type_code)]
        elif kind == "escalator":
            pool = [u for u in units if u.kind == Kind.elevator and is_escalator(u.type_code)]
        elif kind == "steam":
            pool = [u for u in units if u.kind == Kind.boiler and u.steam]
        elif kind == "hotwater":
            pool = [u for u in units if u.kind == Kind.boiler and not u.steam]
        else:
            pool = [u for u in units if u.kind.value == kind]
        pool = [u for u in pool if u.in_use]
        if int(idx) >= len(pool):
            raise ValueError(f"scenario {self.name}: no {device} in a fleet of {len(units)}")
        return pool[int(idx)].device_id

    def build(
        self,
        registry: Registry | list[Unit] | str | Path | None = None,
        *,
        start_ms: int | None = None,
        seed: int | None = None,
        time_scale: float = 1.0,
    ) -> FleetSim:
        """A FleetSim with the timeline scheduled (start: file's, else argument, else default)."""
        units = self.select_units(registry)
        o = dict(self.options)
        net = o.pop("network", None)
        if net == "realistic":
            network = NetworkOptions.realistic()
        elif isinstance(net, dict):
            network = NetworkOptions(**net)
        else:
            network = NetworkOptions(iso_ts_fraction=0.0)
        options = SimOptions(
            faults=str(o.pop("faults", "none")),
            fault_rate_multiplier=float(o.pop("fault_rate_multiplier", 1.0)),
            traffic=float(o.pop("traffic", 1.0)),
            periodic=bool(o.pop("periodic", True)),
            human=bool(o.pop("human", False)),
            boiler_tick_s=float(o.pop("boiler_tick_s", 2.0)),
            boiler_report_s=o.pop("boiler_report_s", None),
            responders=bool(o.pop("responders", True)),
            time_scale=time_scale,
            network=network,
        )
        if o:
            raise ValueError(f"scenario {self.name}: unknown options {sorted(o)}")
        start = self.start_ms if self.start_ms is not None else start_ms
        sim = FleetSim(units, seed=self.seed if seed is None else seed, start_ms=start, options=options)
        for step in self.timeline:
            self._schedule(sim, step, units)
        return sim

    def _schedule(self, sim: FleetSim, step: Step, units: list[Unit]) -> None:
        at = sim.start_ms + int(step.at_s * 1000)
        params = dict(step.params)
        if "duration" in params:
            params["duration_s"] = seconds(params.pop("duration"))
        for key in ("auto_release", "detect"):  # "duration" was done above
            if key in params:
                params[f"{key}_s"] = seconds(params.pop(key))
        if step.action == "alert":
            alert = dict(params)
            alert.setdefault("device_id", self.resolve(step.device, units) if step.device else "")
            alert.setdefault("state", "firing")
            sim.schedule(at, lambda t: sim.on_alert(alert))
            return
        device = self.resolve(step.device, units)
        if step.fault:
            sim.inject(device, step.fault, at, **params)
        elif step.action in ("release", "recover"):
            sim.release(device, at, str(params.get("reason", "scenario")))
        elif step.action in ("offline", "online"):
            sim.inject(device, step.action, at, **params)
        elif step.action == "maintenance":
            sim.schedule(at, lambda t: sim.humans._visit(t, device))
        elif step.action == "inspection":
            sim.schedule(at, lambda t: sim.humans._inspect(t, device))
        else:
            raise ValueError(f"scenario {self.name}: step needs a fault or a known action: {step}")

    # ------------------------------------------------------------------ running offline
    def render(self, registry: Registry | list[Unit] | str | Path | None = None) -> list[Msg]:
        sim = self.build(registry)
        return sim.run_for(self.duration_s, step_s=30.0)

    def check(self, msgs: list[Msg], registry: Registry | list[Unit] | str | Path | None = None) -> list[str]:
        """Failures of the ``expect`` list against a rendered stream (empty list = all met)."""
        units = self.select_units(registry)
        start = min((m.t for m in msgs), default=0)
        return [problem for exp in self.expect if (problem := _check_one(self, exp, msgs, units, start))]


def _compare(value: Any, cond: Any) -> bool:
    if isinstance(cond, dict):
        ops = {
            "le": lambda a, b: a <= b,
            "lt": lambda a, b: a < b,
            "ge": lambda a, b: a >= b,
            "gt": lambda a, b: a > b,
            "eq": lambda a, b: a == b,
            "ne": lambda a, b: a != b,
        }
        try:
            return all(ops[k](value, v) for k, v in cond.items())
        except TypeError:
            return False
    return value == cond


def _check_one(scen: Scenario, exp: dict[str, Any], msgs: list[Msg], units: list[Unit], start: int) -> str:
    device = scen.resolve(str(exp["device"]), units) if "device" in exp else None
    lo, hi = (seconds(x) for x in exp.get("within", (0, 10**9)))
    pool = [
        m
        for m in msgs
        if (device is None or m.device_id == device)
        and lo * 1000 <= m.t - start <= hi * 1000
        and isinstance(m.body, dict)
    ]
    if "event" in exp:
        state = exp.get("state", "occur")
        hits = [
            m
            for m in pool
            if m.leaf == "event" and m.body["code"] == exp["event"] and m.body["state"] == state
        ]
        if not hits:
            return f"{scen.name}: no {exp['event']}/{state} event from {device} within {lo}-{hi} s"
        detail = exp.get("detail", {})
        if detail and not any(
            all(_compare(h.body["detail"].get(k), v) for k, v in detail.items()) for h in hits
        ):
            return f"{scen.name}: {exp['event']} from {device} lacks detail {detail}"
        return ""
    if "no_event" in exp:
        hits = [m for m in pool if m.leaf == "event" and m.body["code"] == exp["no_event"]]
        return f"{scen.name}: unexpected {exp['no_event']} from {device}" if hits else ""
    if "telemetry" in exp:
        conds = exp["telemetry"]
        for m in pool:
            if m.leaf == "telemetry" and all(_compare(m.body.get(k), v) for k, v in conds.items()):
                return ""
        return f"{scen.name}: no telemetry from {device} with {conds} within {lo}-{hi} s"
    if "status" in exp:
        want = exp["status"]
        for m in msgs:
            if m.device_id == device and m.leaf == "status" and lo * 1000 <= m.t - start <= hi * 1000:
                got = m.body.decode() if isinstance(m.body, bytes) else m.body.get("status")
                if got == want:
                    return ""
        return f"{scen.name}: no status {want} from {device} within {lo}-{hi} s"
    if "topic" in exp:
        n = sum(1 for m in msgs if m.topic.startswith(exp["topic"]) and lo * 1000 <= m.t - start <= hi * 1000)
        return "" if n >= int(exp.get("min_count", 1)) else f"{scen.name}: {n} messages on {exp['topic']}*"
    return f"{scen.name}: expectation not understood: {exp}"


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file (a bare name looks in simulators/scenarios/).

    Validation is the pydantic model of ``rules.scenario_model`` (``extra="forbid"``): a
    misspelt key (``expcet:``, ``withn:``), an unknown fault or a param the fault does not take
    is a :class:`ScenarioError` naming the file and the key, never an expectation that silently
    checks nothing.
    """
    p = Path(path)
    if not p.exists() and (SCENARIO_DIR / f"{path}.yaml").exists():
        p = SCENARIO_DIR / f"{path}.yaml"
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(p, [f"{p}: not YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ScenarioError(p, [f"{p}: a scenario is a YAML mapping"])
    data.setdefault("name", p.stem)
    doc = validate_scenario(data, p, faults=fault_params())
    return _from_doc(doc, data, p)


def _from_doc(doc: ScenarioDoc, data: dict[str, Any], p: Path) -> Scenario:
    """The runnable scenario of a validated document (options and expectations as written)."""
    start_ms = None
    if isinstance(doc.start, datetime):
        start_ms = int(doc.start.timestamp() * 1000)
    elif isinstance(doc.start, str):
        start_ms = int(datetime.fromisoformat(doc.start).timestamp() * 1000)
    steps = [
        Step(at_s=seconds(step.at), device=step.device, fault=step.fault, action=step.action,
             params=dict(step.params))
        for step in doc.timeline
    ]  # fmt: skip
    steps.sort(key=lambda s: s.at_s)
    return Scenario(
        name=doc.name,
        description=doc.description,
        seed=doc.seed,
        start_ms=start_ms,
        duration_s=seconds(doc.duration),
        units=doc.units,
        fleet=doc.fleet.model_dump() if doc.fleet is not None else None,
        # as written (only the keys given): build() applies the defaults and reads the network
        options=dict(data.get("options", {}) or {}),
        timeline=steps,
        expect=[exp.model_dump(exclude_unset=True) for exp in doc.expect],
        path=p,
    )


def render_scenario(
    path: str | Path, registry: Registry | list[Unit] | str | Path | None = None
) -> list[tuple[str, bytes]]:
    """Run a scenario offline and return the published stream as (topic, payload bytes)."""
    return [(m.topic, m.payload()) for m in load_scenario(path).render(registry)]


def scenario_files() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))
