"""Load the rule catalogue (YAML, for inspectors to read), validate it, compile it for the hot path.

The catalogue is data; this module turns it into plain Python once, at load time: each
condition becomes one generated lambda over the unit's merged telemetry values, and each
threshold that depends on the registry becomes a per-unit parameter resolved once per unit.
Nothing is compiled from a catalogue that has not passed ``rules.validate`` (unknown keys,
fields, operators, wrong threshold types and uncited rules are refused with the file, line,
rule id and key). No pydantic or dict-walking happens per reading.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import expr as expr_mod
from .model import OPS, CatalogueDoc, Citation, DerivedSpec, ParamExpr, RuleSpec
from .validate import CatalogueError, Problem, check_document, read_yaml

DEFAULT_CATALOGUE = Path(__file__).with_name("catalogue.yaml")

Cond = Callable[[dict[str, Any], dict[str, Any], dict[str, float]], bool]

__all__ = [
    "DEFAULT_CATALOGUE",
    "Catalogue",
    "CatalogueError",
    "Derived",
    "HazardSpec",
    "ParamSpec",
    "Problem",
    "Rule",
    "compile_batch",
    "load_catalogue",
    "prev_fields",
    "prev_getter",
]


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A threshold: a constant, or an expression over the unit's registry values with a default."""

    name: str
    default: float
    text: str = ""  # the expression as written ("" for a constant)
    tree: ast.expr | None = None
    scale: float = 1.0  # 1000 for durations kept in ms

    @classmethod
    def of(cls, name: str, spec: float | ParamExpr, scale: float = 1.0) -> ParamSpec:
        if isinstance(spec, ParamExpr):
            return cls(name, float(spec.default), spec.expr, expr_mod.parse(spec.expr), scale)
        return cls(name, float(spec), "", None, scale)

    def resolve_noting(self, unit: Any) -> tuple[float, bool]:
        """(value, whether the default stood in for a registry value the unit lacks)."""
        if self.tree is None:
            return self.default * self.scale, False
        value = expr_mod.evaluate(self.tree, unit)
        if value is None:
            return self.default * self.scale, True
        return value * self.scale, False

    def resolve(self, unit: Any) -> float:
        return self.resolve_noting(unit)[0]


@dataclass(frozen=True, slots=True)
class HazardSpec:
    source: str  # hazard source id (part of the hazard id)
    grade: str  # general | suspected_major | major
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
    applies: str = ""  # lift | escalator | steam | hot_water | ""
    when: Cond | None = None
    clear: Cond | None = None
    when_src: str = ""
    clear_src: str = ""
    for_ms: ParamSpec | None = None
    for_cases: tuple[tuple[Cond, int], ...] = ()  # (condition at the start, duration ms): first match
    clear_after: Cond | None = None  # a clear that must hold clear_after_ms
    clear_after_ms: int = 0
    clear_after_src: str = ""
    confirm: int = 1  # readings that must show the condition before it counts (debounce)
    events: tuple[str, ...] = ()
    event_detail: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> detail that must match
    event_auto_resolve_ms: int = 0
    fields: tuple[str, ...] = ()
    params: tuple[ParamSpec, ...] = ()
    suppress: frozenset[str] = frozenset()
    suppress_events: bool = False
    inhibited_by: tuple[str, ...] = ()
    hazard: HazardSpec | None = None
    centre: bool = False
    regulator: bool = False
    titles: dict[str, str] = field(default_factory=dict)  # variant titles keyed by "field=value"
    # count rules
    count_of: tuple[str, ...] = ()
    count_n: int = 0
    window_ms: int = 0
    # followup / calendar / report rules
    open_for: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    spec: RuleSpec | None = None  # the validated catalogue entry (sources, assumptions) for display


@dataclass(slots=True)
class Derived:
    """A value computed from telemetry before rules run (rate of change, saturation margin...)."""

    name: str
    func: str  # rate | tsat_margin | efficiency | handrail_deviation | direction_mismatch
    source: str = ""  # the telemetry field it is computed from
    window_ms: int = 30_000
    per_ms: int = 60_000
    kind: str = "boiler"
    spec: DerivedSpec | None = None


@dataclass(slots=True)
class Catalogue:
    version: str
    settings: dict[str, Any]
    rules: list[Rule]
    derived: list[Derived]
    path: Path | None = None
    doc: CatalogueDoc | None = None
    #: SHA-256 of the file's exact bytes (hex; "" when compiled from a document): which version ran
    sha256: str = ""
    source: bytes = field(default=b"", repr=False)  # those bytes, for the catalogue store (issue 12)

    @property
    def catalogue_sha(self) -> str:
        """What alerts and hazards record: the first 16 hex digits of :attr:`sha256`."""
        return self.sha256[:16]

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}

    def citations(self) -> list[tuple[str, Citation]]:
        """Every citation with what cites it (for the inspectors' listing)."""
        out: list[tuple[str, Citation]] = []
        if self.doc is None:
            return out
        for rule in self.doc.rules:
            out += [(rule.id, c) for c in rule.source]
            if rule.hazard is not None:
                out += [(f"{rule.id} hazard", c) for c in rule.hazard.source]
        return out


# --------------------------------------------------------------------------- compile conditions


def _literal(value: Any) -> str:
    if isinstance(value, str) and value.startswith("$"):
        return f"t[{value[1:]!r}]"
    if isinstance(value, list):
        return "{" + ", ".join(_literal(x) for x in value) + ",}"
    return repr(value)


def _clause(spec: Any, fields: list[str], counter: list[int]) -> str:
    """One (validated) condition node to a Python expression; a missing field makes a clause False."""
    if isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and spec[1] in OPS:
        name, op, value = spec
        src = "p" if name.startswith("prev.") else "v"
        fname = name[5:] if src == "p" else name
        if fname not in fields:
            fields.append(fname)
        lit = _literal(value)
        get = f"{src}.get({fname!r})"
        if op in ("in", "not_in"):
            return f"({get} {'in' if op == 'in' else 'not in'} {lit})"
        if op in ("==", "!="):
            if isinstance(value, bool):
                return f"({get} is {lit})" if op == "==" else f"({get} is not {lit})"
            return f"({get} {op} {lit})"
        counter[0] += 1
        tmp = f"_x{counter[0]}"
        return f"(({tmp} := {get}) is not None and {tmp} {op} {lit})"
    if isinstance(spec, list):
        return "(" + " and ".join(_clause(s, fields, counter) for s in spec) + ")"
    ((key, body),) = spec.items()
    if key == "all":
        return _clause(list(body), fields, counter)
    if key == "any":
        return "(" + " or ".join(_clause(s, fields, counter) for s in body) + ")"
    return f"(not {_clause(body, fields, counter)})"


def compile_condition(spec: Any, rule_id: str, fields: list[str]) -> tuple[Cond, str]:
    expr = _clause(spec, fields, [0])
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
        for m in re.finditer(r"p\.get\('(\w+)'\)", r.when_src + r.clear_src + r.clear_after_src):
            if m.group(1) not in found:
                found.append(m.group(1))
    return tuple(found)


def prev_getter(fields: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A generated ``v -> {field: v.get(field), ...}`` (a dict display beats a comprehension)."""
    src = "lambda v: {" + ", ".join(f"{f!r}: v.get({f!r})" for f in fields) + "}"
    return eval(compile(src, "<prev>", "eval"), {"__builtins__": {}})


def compile_rule(spec: RuleSpec, index: int) -> Rule:
    """A validated catalogue entry as the engine's :class:`Rule`."""
    fields: list[str] = []
    events = [e if isinstance(e, str) else e.code for e in spec.events]
    rule = Rule(
        id=spec.id,
        kind=spec.kind,
        level=spec.level,
        title=spec.title,
        ctype=spec.type,
        description=spec.description.strip(),
        applies=spec.applies or "",
        events=tuple(events),
        event_detail={e.code: dict(e.detail) for e in spec.events if not isinstance(e, str) and e.detail},
        event_auto_resolve_ms=round(spec.event_auto_resolve_s * 1000),
        suppress=frozenset(spec.suppress),
        suppress_events=spec.suppress_events,
        inhibited_by=tuple(spec.inhibited_by),
        centre=spec.centre if spec.centre is not None else (spec.level == "P1" and spec.kind != "boiler"),
        titles=dict(spec.titles),
        confirm=spec.confirm_readings,
        open_for=tuple(spec.open_for),
        extra={k: v for k, v in (("check", spec.check), ("days", spec.days), ("report", spec.report)) if v},
        index=index,
        spec=spec,
    )
    if spec.when is not None:
        rule.when, rule.when_src = compile_condition(spec.when, spec.id, fields)
    if spec.clear_when is not None:
        rule.clear, rule.clear_src = compile_condition(spec.clear_when, spec.id, fields)
    if spec.clear_after is not None:
        rule.clear_after, rule.clear_after_src = compile_condition(spec.clear_after.when, spec.id, fields)
        rule.clear_after_ms = round(spec.clear_after.for_s * 1000)
    rule.for_cases = tuple(
        (compile_condition(case.when, spec.id, fields)[0], round(case.for_s * 1000))
        for case in spec.for_s_cases
    )
    rule.for_ms = ParamSpec.of("for_s", spec.for_s, scale=1000.0)
    rule.fields = tuple(fields)
    rule.params = tuple(ParamSpec.of(name, p) for name, p in spec.params.items())
    if spec.hazard is not None:
        hz = spec.hazard
        rule.hazard = HazardSpec(source=hz.id, grade=hz.grade, deadline_days=hz.deadline_days, title=hz.title)
    rule.regulator = (
        spec.regulator
        if spec.regulator is not None
        else rule.hazard is not None and rule.hazard.grade in ("major", "suspected_major")
    )
    if spec.count is not None:
        rule.count_of = tuple(spec.count.of)
        rule.count_n = spec.count.n
        rule.window_ms = round(spec.count.window_s * 1000)
    return rule


def compile_document(doc: CatalogueDoc, path: Path | None = None) -> Catalogue:
    rules = [compile_rule(spec, i) for i, spec in enumerate(doc.rules)]
    derived = [
        Derived(
            name=name,
            func=spec.func,
            source=spec.field or "",
            window_ms=round(spec.window_s * 1000),
            per_ms=round(spec.per_s * 1000),
            kind=spec.kind,
            spec=spec,
        )
        for name, spec in doc.derived.items()
    ]
    settings = doc.settings.model_dump()
    return Catalogue(doc.version, settings, rules, derived, path, doc)


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Read, validate and compile a catalogue file; raises :class:`CatalogueError` with every problem."""
    path = Path(path) if path else DEFAULT_CATALOGUE
    try:
        source = path.read_bytes()
        raw, lines = read_yaml(path)
        if path.read_bytes() != source:  # changed while read: what was parsed may not be what is hashed
            raise OSError("the file changed while it was read; try again")
    except OSError as exc:
        raise CatalogueError(path, [Problem("catalogue", "", f"cannot read: {exc}")]) from None
    doc, problems = check_document(raw, lines)
    if problems or doc is None:
        raise CatalogueError(path, problems)
    catalogue = compile_document(doc, path)
    catalogue.sha256, catalogue.source = hashlib.sha256(source).hexdigest(), source
    return catalogue
