"""Load the rule catalogue (YAML, for inspectors to read) and compile it for the hot path.

The catalogue is data; this module turns it into plain Python once, at load time: each
condition becomes one generated lambda over the unit's merged telemetry values, and each
threshold that depends on the registry becomes a per-unit parameter resolved once per unit.
No pydantic or dict-walking happens per reading.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sesmon.registry import RATED_PARAMETERS

DEFAULT_CATALOGUE = Path(__file__).with_name("catalogue.yaml")

#: Unit attributes a threshold may use (sesmon.registry.Unit), plus derived ones.
UNIT_PARAMS = (*RATED_PARAMETERS, "full_travel_s")

OPS = {"==", "!=", ">", ">=", "<", "<=", "in", "not_in"}
LEVELS = ("P1", "P2", "P3")
GRADES = ("general", "major")
SUPPRESS_REASONS = {"maintenance", "inspection_mode", "out_of_service", "not_in_use", "offline"}

Cond = Callable[[dict[str, Any], dict[str, Any], dict[str, float]], bool]


class CatalogueError(ValueError):
    """The catalogue file is wrong; the message names the rule and the key."""


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A threshold: a constant, or factor × the first registry parameter the unit has."""

    name: str
    default: float
    sources: tuple[tuple[str, float, float], ...] = ()  # (unit attribute, factor, offset)
    min: float | None = None
    max: float | None = None

    def resolve(self, unit: Any) -> float:
        value = self.default
        if unit is not None:
            for attr, factor, offset in self.sources:
                raw = unit_param(unit, attr)
                if raw is not None:
                    value = raw * factor + offset
                    break
        if self.min is not None:
            value = max(value, self.min)
        if self.max is not None:
            value = min(value, self.max)
        return value


def unit_param(unit: Any, attr: str) -> float | None:
    """A registry parameter of a unit, or a derived one (full_travel_s)."""
    if attr == "full_travel_s":
        floors = getattr(unit, "floors", None)
        speed = getattr(unit, "rated_speed_mps", None)
        if not floors or not speed:
            return None
        # the tallest storey of domain.md §1.5 (4.5 m), plus acceleration and braking (≈ v / 0.5 m/s²)
        # and the limiter's 10 s margin: a full run never trips it, a stuck motor does
        return floors * 4.5 / speed + speed / 0.5 + 10.0
    value = getattr(unit, attr, None)
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class HazardSpec:
    source: str
    grade: str
    deadline_days: int
    title: str


@dataclass(slots=True)
class Rule:
    """One compiled rule. ``when``/``clear`` are generated lambdas ``(v, p, t) -> bool``."""

    id: str
    kind: str  # elevator | boiler | any
    level: str
    title: str
    ctype: str  # state | count | followup | deadman | calendar | report
    description: str = ""
    when: Cond | None = None
    clear: Cond | None = None
    when_src: str = ""
    clear_src: str = ""
    for_ms: ParamSpec | None = None
    confirm: int = 1  # readings that must show the condition before it counts (debounce)
    events: tuple[str, ...] = ()
    event_detail: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> detail that must match
    event_auto_resolve_ms: int = 0
    fields: tuple[str, ...] = ()
    params: tuple[ParamSpec, ...] = ()
    suppress: frozenset[str] = frozenset()
    suppress_events: bool = False
    inhibited_by: tuple[str, ...] = ()
    applies: str = ""  # "steam" | "hot_water" | ""
    hazard: HazardSpec | None = None
    centre: bool = False
    regulator: bool = False
    titles: dict[str, str] = field(default_factory=dict)  # variant titles keyed by "field=value"
    # count rules
    count_of: tuple[str, ...] = ()
    count_n: int = 0
    window_ms: int = 0
    # calendar / report rules
    extra: dict[str, Any] = field(default_factory=dict)
    index: int = 0


@dataclass(slots=True)
class Derived:
    """A value computed from telemetry before rules run (rate of change, saturation margin)."""

    name: str
    func: str  # rate | tsat_margin | efficiency
    source: str = ""
    window_ms: int = 30_000
    per_ms: int = 60_000
    kind: str = "boiler"


@dataclass(slots=True)
class Catalogue:
    version: str
    settings: dict[str, Any]
    rules: list[Rule]
    derived: list[Derived]
    path: Path | None = None

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


# --------------------------------------------------------------------------- compile conditions


def _literal(value: Any, params: dict[str, ParamSpec], rule_id: str) -> str:
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if name not in params:
            raise CatalogueError(f"rule {rule_id}: unknown parameter {value}")
        return f"t[{name!r}]"
    if isinstance(value, list):
        return "{" + ", ".join(_literal(x, params, rule_id) for x in value) + ",}"
    if isinstance(value, bool | int | float | str) or value is None:
        return repr(value)
    raise CatalogueError(f"rule {rule_id}: unsupported value {value!r}")


def _clause(
    spec: Any, params: dict[str, ParamSpec], rule_id: str, fields: list[str], counter: list[int]
) -> str:
    """One condition node to a Python expression; a missing field makes a clause False."""
    if isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and spec[1] in OPS:
        name, op, value = spec
        src = "p" if name.startswith("prev.") else "v"
        fname = name[5:] if src == "p" else name
        if fname not in fields:
            fields.append(fname)
        lit = _literal(value, params, rule_id)
        get = f"{src}.get({fname!r})"
        if op in ("in", "not_in"):
            if not isinstance(value, list):
                raise CatalogueError(f"rule {rule_id}: {op} needs a list")
            return f"({get} {'in' if op == 'in' else 'not in'} {lit})"
        if op in ("==", "!="):
            if isinstance(value, bool):
                return f"({get} is {lit})" if op == "==" else f"({get} is not {lit})"
            return f"({get} {op} {lit})"
        counter[0] += 1
        tmp = f"_x{counter[0]}"
        return f"(({tmp} := {get}) is not None and {tmp} {op} {lit})"
    if isinstance(spec, list):
        if not spec:
            raise CatalogueError(f"rule {rule_id}: empty condition")
        return "(" + " and ".join(_clause(s, params, rule_id, fields, counter) for s in spec) + ")"
    if isinstance(spec, dict) and len(spec) == 1:
        ((key, body),) = spec.items()
        if key == "all":
            return _clause(list(body), params, rule_id, fields, counter)
        if key == "any":
            return "(" + " or ".join(_clause(s, params, rule_id, fields, counter) for s in body) + ")"
        if key == "not":
            return f"(not {_clause(body, params, rule_id, fields, counter)})"
    raise CatalogueError(f"rule {rule_id}: cannot read condition {spec!r}")


def compile_condition(
    spec: Any, params: dict[str, ParamSpec], rule_id: str, fields: list[str]
) -> tuple[Cond, str]:
    expr = _clause(spec, params, rule_id, fields, [0])
    src = f"lambda v, p, t: bool{expr}"
    return eval(compile(src, f"<rule {rule_id}>", "eval"), {"__builtins__": {"bool": bool}}), expr


def compile_batch(rules: list[Rule], name: str) -> Callable[..., list[int]]:
    """All ``when`` conditions of a rule list as ONE generated function returning the hits.

    One call per reading instead of one per rule: the hot path's cost is mostly Python call
    overhead, and most conditions are false most of the time.
    """
    get = re.compile(r"\b([vp])\.get\('(\w+)'\)")
    names: dict[str, str] = {}

    def local(m: re.Match[str]) -> str:
        name = f"_{m.group(1)}_{m.group(2)}"
        names[name] = m.group(0)
        return name

    body = []
    for i, r in enumerate(rules):
        if r.params:
            body.append(f"    t = T[{i}]")
        body.append(f"    if {get.sub(local, r.when_src)}:")
        body.append(f"        hits.append({i})")
    # each field read once per reading, however many rules use it
    lines = ["def _batch(v, p, T):", "    hits = []"]
    lines += [f"    {name} = {src}" for name, src in names.items()]
    lines += [*body, "    return hits"]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<rules {name}>", "exec"), {"__builtins__": {}}, namespace)
    return namespace["_batch"]


def prev_fields(rules: list[Rule]) -> tuple[str, ...]:
    """Fields whose previous value some condition reads (``prev.<field>``)."""
    found: list[str] = []
    for r in rules:
        for m in re.finditer(r"p\.get\('(\w+)'\)", r.when_src + r.clear_src):
            if m.group(1) not in found:
                found.append(m.group(1))
    return tuple(found)


def prev_getter(fields: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A generated ``v -> {field: v.get(field), ...}`` (a dict display beats a comprehension)."""
    src = "lambda v: {" + ", ".join(f"{f!r}: v.get({f!r})" for f in fields) + "}"
    return eval(compile(src, "<prev>", "eval"), {"__builtins__": {}})


def _param(name: str, spec: Any, rule_id: str) -> ParamSpec:
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return ParamSpec(name, float(spec))
    if not isinstance(spec, dict) or "default" not in spec:
        raise CatalogueError(f"rule {rule_id}: parameter {name} needs a number or {{from, factor, default}}")
    sources: list[tuple[str, float, float]] = []
    raw = spec.get("from", [])
    if isinstance(raw, str):
        raw = [raw]
    for item in raw:
        if isinstance(item, str):
            attr, factor, offset = item, float(spec.get("factor", 1.0)), float(spec.get("offset", 0.0))
        else:
            attr, factor, offset = item[0], float(item[1]), float(item[2]) if len(item) > 2 else 0.0
        if attr not in UNIT_PARAMS:
            raise CatalogueError(f"rule {rule_id}: parameter {name} uses unknown unit attribute {attr}")
        sources.append((attr, factor, offset))
    return ParamSpec(name, float(spec["default"]), tuple(sources), spec.get("min"), spec.get("max"))


def _duration_ms(value: Any) -> int:
    return round(float(value) * 1000)


def compile_rule(raw: dict[str, Any], index: int) -> Rule:
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise CatalogueError(f"rule #{index}: no id")
    level = raw.get("level")
    if level not in LEVELS:
        raise CatalogueError(f"rule {rid}: level must be one of {LEVELS}")
    ctype = raw.get("type", "state")
    params = {n: _param(n, s, rid) for n, s in (raw.get("params") or {}).items()}
    fields: list[str] = []
    rule = Rule(
        id=rid,
        kind=raw.get("kind", "any"),
        level=level,
        title=raw.get("title", rid),
        ctype=ctype,
        description=raw.get("description", ""),
        events=tuple(e["code"] if isinstance(e, dict) else e for e in raw.get("events", ())),
        event_detail={
            e["code"]: dict(e.get("detail", {})) for e in raw.get("events", ()) if isinstance(e, dict)
        },
        event_auto_resolve_ms=_duration_ms(raw.get("event_auto_resolve_s", 0)),
        suppress=frozenset(raw.get("suppress", ())),
        suppress_events=bool(raw.get("suppress_events", False)),
        inhibited_by=tuple(raw.get("inhibited_by", ())),
        applies=raw.get("applies", ""),
        centre=bool(raw.get("centre", level == "P1")),
        regulator=bool(raw.get("regulator", False)),
        titles=dict(raw.get("titles", {})),
        extra=dict(raw.get("settings", {})),
        confirm=int(raw.get("confirm_readings", 1)),
        index=index,
    )
    if rule.kind not in ("elevator", "boiler", "any"):
        raise CatalogueError(f"rule {rid}: kind must be elevator, boiler or any")
    bad = rule.suppress - SUPPRESS_REASONS
    if bad:
        raise CatalogueError(f"rule {rid}: unknown suppression reason(s) {sorted(bad)}")
    if "when" in raw:
        rule.when, rule.when_src = compile_condition(raw["when"], params, rid, fields)
    if "clear_when" in raw:
        rule.clear, rule.clear_src = compile_condition(raw["clear_when"], params, rid, fields)
    fs = raw.get("for_s", 0)
    rule.for_ms = _param("for_s", fs, rid)
    rule.for_ms = ParamSpec(
        "for_ms",
        rule.for_ms.default * 1000,
        tuple((a, f * 1000, o * 1000) for a, f, o in rule.for_ms.sources),
        None if rule.for_ms.min is None else rule.for_ms.min * 1000,
        None if rule.for_ms.max is None else rule.for_ms.max * 1000,
    )
    rule.fields = tuple(f for f in fields)
    rule.params = tuple(params.values())
    if "hazard" in raw:
        hz = raw["hazard"]
        if hz.get("grade") not in GRADES:
            raise CatalogueError(f"rule {rid}: hazard grade must be general or major")
        rule.hazard = HazardSpec(
            source=hz.get("source", rid.split(".")[-1]),
            grade=hz["grade"],
            deadline_days=int(hz.get("deadline_days", 30 if hz["grade"] == "general" else 15)),
            title=hz.get("title", rule.title),
        )
        if hz["grade"] == "major":
            rule.regulator = bool(raw.get("regulator", True))
    if ctype == "count":
        cnt = raw.get("count") or {}
        rule.count_of = tuple(cnt.get("of", ()))
        rule.count_n = int(cnt.get("n", 3))
        rule.window_ms = _duration_ms(cnt.get("window_s", 30 * 86400))
        if not rule.count_of:
            raise CatalogueError(f"rule {rid}: count needs of: [rule ids]")
    elif ctype == "state":
        if rule.when is None and not rule.events:
            raise CatalogueError(f"rule {rid}: a state rule needs when: or events:")
    elif ctype == "followup":
        if "open_for" not in rule.extra:
            raise CatalogueError(f"rule {rid}: a followup rule needs settings: {{open_for: <rule id>}}")
    elif ctype not in ("deadman", "calendar", "report"):
        raise CatalogueError(f"rule {rid}: unknown type {ctype}")
    return rule


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Read and compile a catalogue file; raises :class:`CatalogueError` with the culprit."""
    path = Path(path) if path else DEFAULT_CATALOGUE
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict) or "version" not in raw or "rules" not in raw:
        raise CatalogueError(f"{path}: needs version: and rules:")
    rules = [compile_rule(r, i) for i, r in enumerate(raw["rules"])]
    ids = [r.id for r in rules]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise CatalogueError(f"{path}: duplicate rule id(s) {sorted(dup)}")
    known = set(ids)
    for r in rules:
        for ref in (*r.inhibited_by, *r.count_of, *([r.extra["open_for"]] if r.ctype == "followup" else [])):
            if ref not in known:
                raise CatalogueError(f"rule {r.id}: refers to unknown rule {ref}")
    derived = []
    for name, spec in (raw.get("derived") or {}).items():
        derived.append(
            Derived(
                name=name,
                func=spec["func"],
                source=spec.get("source", ""),
                window_ms=_duration_ms(spec.get("window_s", 30)),
                per_ms=_duration_ms(spec.get("per_s", 60)),
                kind=spec.get("kind", "boiler"),
            )
        )
    return Catalogue(str(raw["version"]), dict(raw.get("settings") or {}), rules, derived, path)


# --------------------------------------------------------------------------- physics helpers

# Saturation temperature of water (°C) against absolute pressure (MPa), IAPWS-IF97 values.
_TSAT_TABLE = (
    (0.101325, 100.0),
    (0.2, 120.2),
    (0.3, 133.5),
    (0.4, 143.6),
    (0.5, 151.8),
    (0.6, 158.8),
    (0.7, 165.0),
    (0.8, 170.4),
    (0.9, 175.4),
    (1.0, 179.9),
    (1.2, 188.0),
    (1.4, 195.0),
    (1.6, 201.4),
    (1.8, 207.1),
    (2.0, 212.4),
    (2.5, 224.0),
    (3.0, 233.9),
    (4.0, 250.4),
    (5.0, 263.9),
    (6.0, 275.6),
    (8.0, 295.0),
    (10.0, 311.0),
)


def tsat_c(gauge_mpa: float) -> float:
    """Saturation temperature at a gauge pressure (linear in log p between table points)."""
    p = gauge_mpa + 0.101325
    table = _TSAT_TABLE
    if p <= table[0][0]:
        return table[0][1]
    for (p0, t0), (p1, t1) in itertools.pairwise(table):
        if p <= p1:
            return t0 + (t1 - t0) * (math.log(p) - math.log(p0)) / (math.log(p1) - math.log(p0))
    return table[-1][1]
