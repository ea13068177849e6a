"""The catalogue is a validated document: typos, bad operators, unknown fields and wrong threshold
types are refused with file, line, rule id and key — by ``sesmon rules check`` and by every stage
that loads a catalogue. Also: every rule cites a source or states an assumption, the shipped JSON
Schema is current, and scenario files are validated the same way."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules import CatalogueError, RuleEngine
from rules.catalogue import DEFAULT_CATALOGUE
from rules.cli import SCHEMA_FILE, schema_text
from rules.cli import main as rules_main
from sesmon.app.cli import main as sesmon_main

SHIPPED: dict[str, Any] = yaml.safe_load(DEFAULT_CATALOGUE.read_text(encoding="utf-8"))


def rule(doc: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(r for r in doc["rules"] if r["id"] == rid)


def rename(rid: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        r = rule(doc, rid)
        r[new] = r.pop(old)

    return edit


def setkey(rid: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: rule(doc, rid).__setitem__(key, value)


def drop(rid: str, *keys: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: [rule(doc, rid).pop(k) for k in keys]


BAD: list[tuple[str, Callable[[dict[str, Any]], None], str, str, str]] = [
    # (case, edit, rule id, key, words of the reason) — the three typos first
    (
        "clear_whn",
        rename("elevator.trapped", "clear_when", "clear_whn"),
        "elevator.trapped",
        "clear_whn",
        "unknown key",
    ),
    (
        "supress",
        rename("elevator.trapped", "suppress", "supress"),
        "elevator.trapped",
        "supress",
        "unknown key",
    ),
    ("for", rename("elevator.trapped", "for_s", "for"), "elevator.trapped", "for", "unknown key"),
    (
        "bad operator",
        setkey("elevator.overspeed", "when", [["speed_mps", "=>", "$limit"]]),
        "elevator.overspeed",
        "when",
        "operator '=>'",
    ),
    (
        "unknown field",
        setkey("elevator.overspeed", "when", [["sped_mps", ">", "$limit"]]),
        "elevator.overspeed",
        "when[0]",
        "unknown field 'sped_mps'",
    ),
    (
        "threshold of the wrong type",
        setkey("boiler.high_flue_gas", "params", {"limit_c": "250", "reset_c": 230}),
        "boiler.high_flue_gas",
        "params.limit_c",
        "valid number",
    ),
    (
        "bool field against a number",
        setkey("elevator.overtravel_top", "when", [["up_limit", "==", 1]]),
        "elevator.overtravel_top",
        "when[0]",
        "up_limit is a bool",
    ),
    (
        "enum value that cannot occur",
        setkey("boiler.burner_lockout", "when", [["burner", "==", "locked"]]),
        "boiler.burner_lockout",
        "when[0]",
        "'locked' is not one of them",
    ),
    (
        "duration as text",
        setkey("elevator.door_held_open", "for_s", "120"),
        "elevator.door_held_open",
        "for_s",
        "valid number",
    ),
    (
        "unknown parameter",
        setkey("elevator.overspeed", "when", [["speed_mps", ">", "$limt"]]),
        "elevator.overspeed",
        "when[0]",
        "unknown parameter $limt",
    ),
    (
        "unknown registry column in a threshold",
        lambda d: rule(d, "elevator.overspeed")["params"]["limit"].__setitem__("expr", "1.15 * rated_sped"),
        "elevator.overspeed",
        "params.limit.expr",
        "unknown unit attribute 'rated_sped'",
    ),
    (
        "unknown rule reference",
        setkey("elevator.speed_abnormal", "inhibited_by", ["elevator.overspeeed"]),
        "elevator.speed_abnormal",
        "inhibited_by",
        "unknown rule 'elevator.overspeeed'",
    ),
    (
        "unknown suppression",
        setkey("offline", "suppress", ["lunch"]),
        "offline",
        "suppress[0]",
        "Input should be",
    ),
    (
        "unknown event code",
        setkey("elevator.trapped", "events", ["trappd"]),
        "elevator.trapped",
        "events[0]",
        "'trappd'",
    ),
    (
        "hazard grade",
        lambda d: rule(d, "inspection_overdue")["hazard"].__setitem__("grade", "huge"),
        "inspection_overdue",
        "hazard.grade",
        "'general', 'suspected_major' or 'major'",
    ),
    (
        "no source and no assumption",
        drop("elevator.overspeed", "source", "assumption", "why"),
        "elevator.overspeed",
        "",
        "cite a source",
    ),
    (
        "assumption without why",
        drop("boiler.pressure_rising_fast", "why"),
        "boiler.pressure_rising_fast",
        "",
        "needs why",
    ),
    (
        "citation of an unknown reference",
        lambda d: rule(d, "elevator.overtravel_top")["source"][0].__setitem__("ref", "GB-0000"),
        "elevator.overtravel_top",
        "source",
        "not under references",
    ),
    (
        "96333 for a boiler",
        setkey("boiler.gas_leak", "centre", True),
        "boiler.gas_leak",
        "centre",
        "elevator emergency platform",
    ),
    (
        "a key of another rule type",
        setkey("elevator.trapped", "count", {"of": ["elevator.trapped"], "n": 3, "window_s": 60}),
        "elevator.trapped",
        "",
        "only rules of type count",
    ),
]


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(("case", "edit", "rid", "key", "why"), BAD, ids=[b[0] for b in BAD])
def test_check_names_file_rule_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, edit: Any, rid: str, key: str, why: str
) -> None:
    doc = copy.deepcopy(SHIPPED)
    edit(doc)
    path = write(tmp_path, doc)
    assert sesmon_main(["rules", "check", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    prefix = f"{path}:"
    hits = [ln for ln in lines if ln.startswith(prefix) and f"rule {rid}:" in ln and why in ln]
    assert hits, lines
    if key:
        assert any(f"rule {rid}: {key}:" in ln for ln in hits), hits
    assert any(ln.split(":")[1].isdigit() for ln in hits), "problems carry the YAML line"
    # the same check runs whenever a catalogue is loaded: a stage refuses to start
    with pytest.raises(CatalogueError) as info:
        RuleEngine(catalogue_path=path)
    assert f"rule {rid}" in str(info.value) and why in str(info.value)


def test_shipped_catalogue_passes_and_every_rule_is_sourced_or_assumed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert sesmon_main(["rules", "check"]) == 0
    assert "ok" in capsys.readouterr().out
    engine = RuleEngine()
    for r in engine.catalogue.rules:
        spec = r.spec
        assert spec is not None and (spec.source or (spec.assumption and spec.why)), r.id
        if r.hazard is not None:
            assert spec.hazard is not None and (spec.hazard.source or spec.hazard.why), r.id
    doc = engine.catalogue.doc
    assert doc is not None and set(doc.settings_basis) == set(engine.catalogue.settings)


def test_bad_yaml_and_missing_file_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: [\n", encoding="utf-8")
    assert sesmon_main(["rules", "check", str(broken), str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "missing.yaml" in err


def test_python_m_rules_still_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rules", "--rated-speed", "1.75", "--rated-load", "450", "--floors", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "[P1] elevator.trapped" in out
    assert "limit_pct = 116.667 = max(110, 100 + 7500 / rated_load_kg)" in out  # Q + 75 kg for a 450 kg car
    assert "from memory — verify the clause" in out  # clauses not taken from domain.md say so
    assert "ASSUMED" in out and "references" in out


def test_show_marks_registry_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert rules_main(["show", "--type-code", "1100"]) == 0
    out = capsys.readouterr().out
    assert "extreme_low_mm = -120 = lowest_safe_water_level_mm (default: registry value missing)" in out
    assert rules_main(["show", "--lowest-safe-level", "-90"]) == 0
    assert "extreme_low_mm = -90 = lowest_safe_water_level_mm\n" in capsys.readouterr().out


def test_shipped_json_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), "run `sesmon rules schema`"


def test_json_schema_accepts_the_catalogue_and_rejects_typos(tmp_path: Path) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(SHIPPED)) == []
    doc = copy.deepcopy(SHIPPED)
    rename("elevator.trapped", "clear_when", "clear_whn")(doc)
    rule(doc, "elevator.overspeed")["when"] = [["speed_mps", "~", 1]]
    errors = {e.json_path for e in validator.iter_errors(doc)}
    assert errors == {"$.rules[0]", "$.rules[8].when"}, errors
    out = tmp_path / "schema.json"
    assert sesmon_main(["rules", "schema", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == schema_text()
    assert sesmon_main(["rules", "schema", "-o", str(out), "--check"]) == 0
    out.write_text("{}", encoding="utf-8")
    assert sesmon_main(["rules", "schema", "-o", str(out), "--check"]) == 1


# --------------------------------------------------------------------------- scenario files

import simulators.scenario as sim  # noqa: E402


@pytest.mark.parametrize("path", sim.scenario_files(), ids=[p.stem for p in sim.scenario_files()])
def test_shipped_scenarios_validate(path: Path) -> None:
    from rules.scenario_model import validate_scenario

    doc = validate_scenario(yaml.safe_load(path.read_text(encoding="utf-8")), path)
    assert doc.name


SCENARIO_TYPOS = [
    (lambda d: d.__setitem__("expcet", d.pop("expect")), "expcet: unknown key"),
    (
        lambda d: d["expect"][0].__setitem__("withn", d["expect"][0].pop("within")),
        "expect[0].withn: unknown key",
    ),
    (lambda d: d["timeline"][0].__setitem__("at", "20 sec"), "timeline[0].at: bad duration"),
    (
        lambda d: d["timeline"][0].__setitem__("action", "release"),
        "timeline[0]: a step has either fault: or action:",
    ),
    (
        lambda d: (
            d["options"].__setitem__("faults", "lots")
            if "options" in d
            else d.__setitem__("options", {"faults": "lots"})
        ),
        "options.faults",
    ),
    (lambda d: d["expect"].append({"device": "elevator#0"}), "exactly one of event"),
]


@pytest.mark.parametrize(("edit", "why"), SCENARIO_TYPOS, ids=[w for _, w in SCENARIO_TYPOS])
def test_scenario_typos_are_errors(edit: Any, why: str) -> None:
    from rules.scenario_model import ScenarioError, validate_scenario

    doc = yaml.safe_load((sim.SCENARIO_DIR / "trapped_landing.yaml").read_text(encoding="utf-8"))
    edit(doc)
    with pytest.raises(ScenarioError) as info:
        validate_scenario(doc, "trapped_landing.yaml")
    assert why in str(info.value) and "trapped_landing.yaml" in str(info.value)


def test_scenario_faults_and_params_checked_against_the_simulators_table() -> None:
    from rules.scenario_model import ScenarioError, validate_scenario

    doc = yaml.safe_load((sim.SCENARIO_DIR / "trapped_landing.yaml").read_text(encoding="utf-8"))
    faults = {"trapped": {"between_floors", "auto_release", "detect"}}
    validate_scenario(doc, "t.yaml", faults=faults)
    doc["timeline"][0]["params"]["between_flors"] = True
    with pytest.raises(ScenarioError, match=r"timeline\[0\]\.params\.between_flors"):
        validate_scenario(doc, "t.yaml", faults=faults)
