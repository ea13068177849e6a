"""Check a catalogue document and say exactly what is wrong: file, line, rule id, key, why.

Two passes: the pydantic models (``rules.model``, ``extra="forbid"``) check keys and types rule
by rule, so one bad rule does not hide the others; then the checks that need the whole
document — fields the engine knows (``rules.fields``), thresholds of the field's type, ``$param``
and rule references, event codes the ingest schemas accept, sources cited in ``references:``.
``sesmon rules check`` prints :attr:`CatalogueError.problems`; ``RuleEngine`` refuses to start on
any of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sesmon.contract.schemas import EVENT_CODES, Kind

from .fields import DERIVED_TYPES, TELEMETRY_FIELDS, FieldType, fields_for
from .model import Basis, CatalogueDoc, Citation, RuleSpec, SettingsSpec


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a catalogue: ``where`` is ``rule <id>``, ``settings``, ``derived <name>``..."""

    where: str
    key: str
    message: str
    line: int | None = None

    def format(self, path: Path | str | None) -> str:
        at = f"{path or '<catalogue>'}{f':{self.line}' if self.line else ''}"
        key = f" {self.key}:" if self.key else ""
        return f"{at}: {self.where}:{key} {self.message}"


class CatalogueError(ValueError):
    """The catalogue is invalid; ``problems`` lists everything found (file, line, rule, key)."""

    def __init__(self, path: Path | str | None, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        shown = "\n  ".join(p.format(path) for p in problems[:30])
        more = f"\n  … and {len(problems) - 30} more" if len(problems) > 30 else ""
        super().__init__(
            f"invalid rule catalogue {path or ''} ({len(problems)} problem(s)):\n  {shown}{more}"
        )


# --------------------------------------------------------------------------- YAML with line numbers

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster


def read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document and the line of each top-level key, rule, and rule key (1-based)."""
    text = path.read_text(encoding="utf-8")
    loader = _Loader(text)
    try:  # parse once: the node tree gives the lines, the same nodes give the data
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise CatalogueError(path, [Problem("catalogue", "", f"not valid YAML: {exc}", line)]) from None
    finally:
        loader.dispose()
    return data, _lines(node)


def _lines(node: Any) -> dict[tuple[Any, ...], int]:
    lines: dict[tuple[Any, ...], int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value in node.value:
        key = key_node.value
        lines[(key,)] = key_node.start_mark.line + 1
        if key == "rules" and isinstance(value, yaml.SequenceNode):
            for i, item in enumerate(value.value):
                lines[("rules", i)] = item.start_mark.line + 1
                if isinstance(item, yaml.MappingNode):
                    for rk, _ in item.value:
                        lines[("rules", i, rk.value)] = rk.start_mark.line + 1
        elif isinstance(value, yaml.MappingNode):
            for sub, _ in value.value:
                lines[(key, sub.value)] = sub.start_mark.line + 1
    return lines


# --------------------------------------------------------------------------- pass 1: shapes

_TYPE_TAGS = {"float", "int", "str", "bool", "list", "dict", "constrained-float", "constrained-int"}


def _key_path(loc: Iterable[Any]) -> str:
    """A pydantic error location as the catalogue key path (union branch tags dropped)."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        text = str(item)
        if text in _TYPE_TAGS or text[:1].isupper() or text.startswith(("function-", "literal[", "tagged-")):
            continue
        parts.append(("." if parts else "") + text)
    return "".join(parts)


def _pydantic_problems(exc: ValidationError, where: str, line_of: Any) -> list[Problem]:
    by_key: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        key = _key_path(err["loc"])
        got = err.get("input")
        # a union (number | {expr, default}) reports every branch: keep the one the input meant
        if err["type"] in ("float_type", "int_type") and isinstance(got, dict):
            continue
        if err["type"] in ("model_type", "dict_type") and not isinstance(got, dict | list):
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the catalogue format: a typo?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        if err["type"] not in ("extra_forbidden", "missing", "value_error") and not isinstance(
            got, dict | list
        ):
            msg = f"{msg} (got {got!r})"
        if msg not in by_key.setdefault(key, []):
            by_key[key].append(msg)
    return [Problem(where, key, " | ".join(msgs), line_of(key)) for key, msgs in by_key.items()]


# --------------------------------------------------------------------------- pass 2: meaning


def _citations(basis: Basis | None) -> list[Citation]:
    return list(basis.source) if basis is not None else []


def _clauses(spec: Any, path: str) -> Iterator[tuple[str, list[Any]]]:
    """Every ``[field, op, value]`` of a condition, with its path inside the rule."""
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        yield path, spec
    elif isinstance(spec, list):
        for i, item in enumerate(spec):
            yield from _clauses(item, f"{path}[{i}]")
    elif isinstance(spec, dict):
        for key, body in spec.items():
            if key == "not":
                yield from _clauses(body, f"{path}.not")
            else:
                for i, item in enumerate(body):
                    yield from _clauses(item, f"{path}.{key}[{i}]")


def check_clause(clause: list[Any], ftypes: dict[str, FieldType], params: set[str]) -> str | None:
    """Why a clause cannot work (unknown field, wrong operator or value type), or None."""
    field, op, value = clause
    name = field[5:] if field.startswith("prev.") else field
    ftype = ftypes.get(name)
    if ftype is None:
        return f"unknown field {name!r}: not a telemetry or derived field the engine knows"
    values = value if op in ("in", "not_in") else [value]
    if ftype.kind in ("bool", "enum", "text") and op not in ("==", "!=", "in", "not_in"):
        return f"{field} is {ftype.describe()}: compare it with ==, !=, in or not_in, not {op}"
    for x in values:
        if isinstance(x, str) and x.startswith("$"):
            if x[1:] not in params:
                return f"unknown parameter {x} (declare it under params:)"
            if ftype.kind != "number":
                return f"threshold {x} is a number, but {field} is {ftype.describe()}"
            continue
        if ftype.kind == "bool" and not isinstance(x, bool):
            return f"{field} is a bool: compare it with true/false, not {x!r}"
        if ftype.kind == "number" and (isinstance(x, bool) or not isinstance(x, int | float)):
            return f"{field} is a number: threshold {x!r} has the wrong type"
        if ftype.kind == "enum" and x not in ftype.values:
            return f"{field} is {ftype.describe()}: {x!r} is not one of them"
        if ftype.kind == "text" and not isinstance(x, str):
            return f"{field} is text: {x!r} has the wrong type"
    return None


def _rule_conditions(rule: RuleSpec) -> Iterator[tuple[str, Any]]:
    if rule.when is not None:
        yield "when", rule.when
    if rule.clear_when is not None:
        yield "clear_when", rule.clear_when
    if rule.clear_after is not None:
        yield "clear_after.when", rule.clear_after.when
    for i, case in enumerate(rule.for_s_cases):
        yield f"for_s_cases[{i}].when", case.when


def _event_codes(kind: str) -> frozenset[str]:
    if kind == "any":
        return frozenset().union(*EVENT_CODES.values())
    return EVENT_CODES[Kind(kind)]


def _semantic(
    doc: CatalogueDoc, rules: list[tuple[int, RuleSpec]], all_ids: set[str], line_of: Any
) -> list[Problem]:
    out: list[Problem] = []
    refs = set(doc.references)

    def cite(where: str, key: str, basis: Basis | None, line: int | None) -> None:
        for c in _citations(basis):
            if c.ref not in refs:
                out.append(
                    Problem(where, f"{key}source", f"cites {c.ref!r}, which is not under references:", line)
                )

    # settings: every one sourced or assumed
    for name in SettingsSpec.model_fields:
        if name not in doc.settings_basis:
            out.append(
                Problem("settings_basis", name, "setting has no source or assumption", line_of(("settings",)))
            )
    for name, basis in doc.settings_basis.items():
        if name not in SettingsSpec.model_fields:
            out.append(Problem("settings_basis", name, "not a setting", line_of(("settings_basis", name))))
        cite("settings_basis", f"{name}.", basis, line_of(("settings_basis", name)))
    # derived values
    derived: dict[str, dict[str, FieldType]] = {"elevator": {}, "boiler": {}}
    for name, spec in doc.derived.items():
        where, line = f"derived {name}", line_of(("derived", name))
        cite(where, "", spec, line)
        if name in TELEMETRY_FIELDS[spec.kind]:
            out.append(Problem(where, "", f"{name!r} is already a {spec.kind} telemetry field", line))
        if spec.func in ("rate", "tsat_margin") and spec.field not in TELEMETRY_FIELDS[spec.kind]:
            out.append(
                Problem(where, "field", f"{spec.func} needs field: <a {spec.kind} telemetry field>", line)
            )
        derived[spec.kind][name] = DERIVED_TYPES[spec.func]
    # rules
    known = set(all_ids)
    seen: set[str] = set()
    hazard_grades: dict[str, tuple[str, str]] = {}
    deadman = 0
    for i, rule in rules:
        where = f"rule {rule.id}"

        def line(key: str, i: int = i) -> int | None:
            return line_of(("rules", i, key)) or line_of(("rules", i))

        if rule.id in seen:
            out.append(Problem(where, "id", "duplicate rule id", line("id")))
        seen.add(rule.id)
        cite(where, "", rule, line("source"))
        kind_derived = (
            {**derived["elevator"], **derived["boiler"]} if rule.kind == "any" else derived[rule.kind]
        )
        ftypes = fields_for(rule.kind, kind_derived)
        params = set(rule.params)
        used: set[str] = set()
        for key, cond in _rule_conditions(rule):
            for path, clause in _clauses(cond, key):
                why = check_clause(clause, ftypes, params)
                if why:
                    out.append(Problem(where, path, why, line(key.split(".")[0].split("[")[0])))
                vals = clause[2] if isinstance(clause[2], list) else [clause[2]]
                used |= {v[1:] for v in vals if isinstance(v, str) and v.startswith("$")}
        for name in sorted(params - used):
            out.append(
                Problem(where, f"params.{name}", "declared but never used in a condition", line("params"))
            )
        for key in rule.titles:
            fname, sep, _ = key.partition("=")
            if not sep or fname not in ftypes:
                out.append(
                    Problem(
                        where, f"titles.{key}", "keys are 'field=value' with a known field", line("titles")
                    )
                )
        codes = _event_codes(rule.kind)
        for j, ev in enumerate(rule.events):
            code = ev if isinstance(ev, str) else ev.code
            if code not in codes:
                out.append(
                    Problem(
                        where,
                        f"events[{j}]",
                        f"{code!r} is not a {rule.kind} event code ingest accepts",
                        line("events"),
                    )
                )
        refs_of = (
            [("inhibited_by", r) for r in rule.inhibited_by]
            + [("open_for", r) for r in rule.open_for]
            + [("count.of", r) for r in (rule.count.of if rule.count else [])]
        )
        for key, ref in refs_of:
            if ref not in known:
                out.append(Problem(where, key, f"refers to unknown rule {ref!r}", line(key.split(".")[0])))
        if rule.hazard is not None:
            cite(where, "hazard.", rule.hazard, line("hazard"))
            prev = hazard_grades.setdefault(rule.hazard.id, (rule.hazard.grade, rule.id))
            if prev[0] != rule.hazard.grade:
                out.append(
                    Problem(
                        where,
                        "hazard.grade",
                        f"hazard {rule.hazard.id!r} is graded {prev[0]} by {prev[1]}: one source, one grade",
                        line("hazard"),
                    )
                )
        if rule.centre and rule.kind == "boiler":
            out.append(
                Problem(
                    where,
                    "centre",
                    "96333 is the elevator emergency platform: boiler alerts go to the "
                    "boiler's user unit and firm",
                    line("centre"),
                )
            )
        if rule.clear_after is not None and rule.when is None and not rule.events:
            out.append(Problem(where, "clear_after", "needs when: or events:", line("clear_after")))
        deadman += rule.type == "deadman"
    if deadman > 1:
        out.append(Problem("rules", "type", "at most one deadman rule", line_of(("rules",))))
    return out


def check_document(
    raw: Any, lines: dict[tuple[Any, ...], int] | None = None
) -> tuple[CatalogueDoc | None, list[Problem]]:
    """Validate a parsed catalogue; returns the document (None if unusable) and every problem."""
    lines = lines or {}

    def line_of(key: tuple[Any, ...]) -> int | None:
        return lines.get(key)

    if not isinstance(raw, dict):
        return None, [
            Problem("catalogue", "", "a catalogue is a mapping: version, references, settings, rules")
        ]
    problems: list[Problem] = []
    top = {k: v for k, v in raw.items() if k != "rules"}
    top["rules"] = []
    doc: CatalogueDoc | None = None
    try:
        doc = CatalogueDoc.model_validate(top)
    except ValidationError as exc:
        problems += _pydantic_problems(
            exc, "catalogue", lambda key: line_of((key.split(".")[0].split("[")[0],))
        )
    raw_rules = raw.get("rules")
    if not isinstance(raw_rules, list):
        problems.append(Problem("catalogue", "rules", "needs a list of rules", line_of(("rules",))))
        raw_rules = []
    valid: list[tuple[int, RuleSpec]] = []
    for i, item in enumerate(raw_rules):
        rid = item.get("id") if isinstance(item, dict) else None
        where = f"rule {rid}" if isinstance(rid, str) and rid else f"rule #{i + 1}"
        if not isinstance(item, dict):
            problems.append(Problem(where, "", "a rule is a mapping", line_of(("rules", i))))
            continue
        try:
            valid.append((i, RuleSpec.model_validate(item)))
        except ValidationError as exc:
            problems += _pydantic_problems(
                exc,
                where,
                lambda key, i=i: (
                    line_of(("rules", i, key.split(".")[0].split("[")[0])) or line_of(("rules", i))
                ),
            )
    if doc is not None:
        all_ids = {r["id"] for r in raw_rules if isinstance(r, dict) and isinstance(r.get("id"), str)}
        problems += _semantic(doc, valid, all_ids, line_of)
        if not problems:
            doc.rules = [r for _, r in valid]
            return doc, []
    return None, problems


def check_file(path: Path | str) -> tuple[CatalogueDoc | None, list[Problem]]:
    path = Path(path)
    try:
        raw, lines = read_yaml(path)
    except CatalogueError as exc:
        return None, exc.problems
    except OSError as exc:
        return None, [Problem("catalogue", "", f"cannot read: {exc}")]
    return check_document(raw, lines)
