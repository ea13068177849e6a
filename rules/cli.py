"""``sesmon rules check | show | schema``: the catalogue for its authors and for inspectors.

* ``check [FILE ...]`` validates catalogues (default: the shipped one); every problem is printed
  as ``file:line: rule <id>: <key>: <why>`` and the exit status is 1 if there is any.
* ``show [FILE] [--rated-speed ...]`` prints every rule with its thresholds for such a unit, its
  sources (standard and clause; ``memory`` marks a clause to verify) and its assumptions.
* ``schema [-o FILE] [--check]`` writes the catalogue's JSON Schema (the shipped copy is
  ``rules/schema/catalogue.schema.json``), or checks that the shipped copy is current.

``python -m rules`` runs the same commands (``python -m rules [FILE] [--rated-speed ...]`` is ``show``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .catalogue import DEFAULT_CATALOGUE, Catalogue, compile_document
from .model import Citation, json_schema
from .validate import check_file

SCHEMA_FILE = Path(__file__).with_name("schema") / "catalogue.schema.json"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``rules check|show|schema`` to the ``sesmon`` command line."""
    rules = sub.add_parser("rules", help="check, show or export the rule catalogue")
    _add_commands(rules)


def _add_commands(parser: argparse.ArgumentParser) -> None:
    cmds = parser.add_subparsers(dest="rules_command", required=True)
    check = cmds.add_parser("check", help="validate catalogue files; exit 1 naming file, rule and key")
    check.add_argument("files", nargs="*", type=Path, metavar="FILE")
    check.set_defaults(func=cmd_check)
    show = cmds.add_parser("show", help="print the catalogue with thresholds and sources for inspectors")
    show.add_argument("file", nargs="?", type=Path, default=None, metavar="FILE")
    _unit_args(show)
    show.set_defaults(func=cmd_show)
    schema = cmds.add_parser("schema", help="write the catalogue's JSON Schema")
    schema.add_argument("-o", "--output", type=Path, default=SCHEMA_FILE, metavar="FILE")
    schema.add_argument("--check", action="store_true", help="exit 1 if FILE is not the current schema")
    schema.set_defaults(func=cmd_schema)


def _unit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type-code", default="", help="registry type code (3110 lift, 3310 escalator, 1100 steam)"
    )
    parser.add_argument("--rated-speed", type=float, default=None, help="elevator rated speed, m/s")
    parser.add_argument("--rated-load", type=float, default=None, help="elevator rated load, kg")
    parser.add_argument("--floors", type=int, default=None)
    parser.add_argument("--rated-pressure", type=float, default=None, help="boiler rated pressure, MPa")
    parser.add_argument("--valve-set", type=float, default=None, help="lower safety-valve set pressure, MPa")
    parser.add_argument(
        "--lowest-safe-level", type=float, default=None, help="boiler lowest safe water level, mm"
    )
    parser.add_argument("--rated-outlet-temp", type=float, default=None, help="hot-water rated outlet, °C")


# --------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    files = args.files or [DEFAULT_CATALOGUE]
    bad = 0
    for path in files:
        doc, problems = check_file(path)
        if problems or doc is None:
            bad += 1
            for p in problems:
                print(p.format(path), file=sys.stderr)
            print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        else:
            sourced = sum(1 for r in doc.rules if r.source)
            assumed = sum(1 for r in doc.rules if r.assumption)
            print(
                f"{path}: ok — version {doc.version}, {len(doc.rules)} rules "
                f"({sourced} cite a source, {assumed} state an assumption)"
            )
    return 1 if bad else 0


# --------------------------------------------------------------------------- show


def render_condition(spec: Any) -> str:
    """A condition as an inspector reads it: ``door in [closed, closing] and speed_mps > $limit``."""
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        field, op, value = spec
        if isinstance(value, list):
            value = "[" + ", ".join(str(x) for x in value) + "]"
        elif isinstance(value, bool):
            value = str(value).lower()
        return f"{field} {op.replace('_', ' ')} {value}"
    if isinstance(spec, list):
        return " and ".join(render_condition(s) for s in spec)
    ((key, body),) = spec.items()
    if key == "not":
        return f"not ({render_condition(body)})"
    joined = f" {'or' if key == 'any' else 'and'} ".join(render_condition(s) for s in body)
    return f"({joined})"


def _cite(c: Citation, refs: dict[str, Any]) -> str:
    ref = refs.get(c.ref)
    title = ref.title.split(" (")[0] if ref is not None else c.ref
    clause = f" §{c.clause}" if c.clause else ""
    via = "from memory — verify the clause" if c.via == "memory" else f"via {c.via}"
    note = f": {c.note}" if c.note else ""
    return f"{title}{clause} [{via}]{note}"


def _unit(args: argparse.Namespace) -> SimpleNamespace:
    return SimpleNamespace(
        type_code=args.type_code,
        rated_speed_mps=args.rated_speed,
        rated_load_kg=args.rated_load,
        floors=args.floors,
        rated_pressure_mpa=args.rated_pressure,
        safety_valve_set_mpa=args.valve_set,
        capacity_tph=None,
        capacity_mw=None,
        lowest_safe_water_level_mm=args.lowest_safe_level,
        rated_outlet_temp_c=args.rated_outlet_temp,
    )


def show(cat: Catalogue, unit: Any, out: Any = None) -> None:
    out = out or sys.stdout
    doc = cat.doc
    assert doc is not None
    refs = doc.references

    def say(text: str = "") -> None:
        print(text, file=out)

    say(f"sesmon rule catalogue {cat.version} ({cat.path}), {len(cat.rules)} rules")
    s = cat.settings
    say(
        f"lateness bound {s['lateness_s']} s; offline after {s['offline_after_heartbeats']} × "
        f"{s['heartbeat_s']} s heartbeat; supervision at grading {s['supervision_at_grading']}"
    )
    for rule in cat.rules:
        spec = rule.spec
        assert spec is not None
        scope = rule.kind + (f"/{rule.applies}" if rule.applies else "")
        say(f"\n[{rule.level}] {rule.id}  ({scope}, {rule.ctype})  {rule.title}")
        if spec.when is not None:
            say(f"    when    {render_condition(spec.when)}")
        for case in spec.for_s_cases:
            say(f"    for     {case.for_s:g} s if {render_condition(case.when)}")
        if rule.for_ms is not None and rule.for_ms.resolve(unit):
            value, used = rule.for_ms.resolve_noting(unit)
            text = f" = {rule.for_ms.text}" if rule.for_ms.text else ""
            text += " otherwise" if spec.for_s_cases else ""
            say(f"    for     {value / 1000:g} s{text}{' (default: registry value missing)' if used else ''}")
        if spec.clear_when is not None:
            say(f"    clear   {render_condition(spec.clear_when)}")
        if spec.clear_after is not None:
            say(f"    clear   {render_condition(spec.clear_after.when)} for {spec.clear_after.for_s:g} s")
        for p in rule.params:
            value, used = p.resolve_noting(unit)
            expr = f" = {p.text}" if p.text else ""
            note = " (default: registry value missing)" if used else ""
            say(f"    param   {p.name} = {value:g}{expr}{note}")
        if rule.events:
            say(f"    events  {', '.join(rule.events)}")
        if rule.suppress or rule.inhibited_by:
            say(f"    quiet   suppress={sorted(rule.suppress)} inhibited_by={list(rule.inhibited_by)}")
        receivers = ["firm", "user unit"] + (["96333 centre"] if rule.centre else [])
        receivers += ["district regulator"] if rule.regulator else []
        say(f"    to      {', '.join(receivers)}")
        for c in spec.source:
            say(f"    source  {_cite(c, refs)}")
        if spec.assumption:
            say(f"    ASSUMED {spec.why}")
        if spec.hazard is not None:
            hz = spec.hazard
            say(f"    hazard  {hz.grade} '{hz.id}', rectify within {hz.deadline_days} d — {hz.title}")
            for c in hz.source:
                say(f"      grade {_cite(c, refs)}")
            if hz.assumption:
                say(f"      ASSUMED {hz.why}")
    say("\nsettings")
    for name, basis in doc.settings_basis.items():
        say(f"    {name} = {s.get(name)}")
        for c in basis.source:
            say(f"      source  {_cite(c, refs)}")
        if basis.assumption:
            say(f"      ASSUMED {basis.why}")
    say("\nreferences")
    for key, ref in refs.items():
        say(f"    {key}: {ref.title}{f' <{ref.url}>' if ref.url else ''}")


def cmd_show(args: argparse.Namespace) -> int:
    path = args.file or DEFAULT_CATALOGUE
    doc, problems = check_file(path)
    if problems or doc is None:
        for p in problems:
            print(p.format(path), file=sys.stderr)
        return 1
    show(compile_document(doc, Path(path)), _unit(args))
    return 0


# --------------------------------------------------------------------------- schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def cmd_schema(args: argparse.Namespace) -> int:
    text = schema_text()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is not the current catalogue schema: run `sesmon rules schema`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output}: current")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------- python -m rules


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m rules", description=__doc__.splitlines()[0])
    if not argv or argv[0] not in ("check", "show", "schema", "-h", "--help"):
        argv = ["show", *argv]  # the historical form: python -m rules [FILE] [--rated-speed ...]
    _add_commands(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))
