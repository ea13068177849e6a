"""Scenario files are validated (rules.scenario_model, extra="forbid"): a typo names file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.scenario_model import ScenarioError
from simulators.scenario import fault_params, load_scenario, scenario_files

GOOD = """\
name: typo-check
fleet: {elevators: 3, boilers: 0, seed: 5}
duration: 5m
timeline:
  - {at: 20s, device: "elevator#0", fault: overspeed, params: {factor: 1.25, auto_release: 2m}}
expect:
  - {device: "elevator#0", event: overspeed, within: [20s, 40s]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scen.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_scenario_loads() -> None:
    files = scenario_files()
    assert len(files) >= 20
    for path in files:
        assert load_scenario(path).expect, path.name


def test_a_correct_file_loads(tmp_path: Path) -> None:
    scen = load_scenario(write(tmp_path, GOOD))
    assert (
        scen.name == "typo-check"
        and scen.duration_s == 300
        and scen.fleet == {"elevators": 3, "boilers": 0, "seed": 5}
    )
    assert scen.timeline[0].fault == "overspeed" and scen.timeline[0].params == {
        "factor": 1.25,
        "auto_release": "2m",
    }
    assert scen.expect == [{"device": "elevator#0", "event": "overspeed", "within": ("20s", "40s")}]


@pytest.mark.parametrize(
    ("good", "bad", "where"),
    [
        ("expect:", "expcet:", "expcet"),  # top-level key
        ("within: [20s, 40s]", "withn: [20s, 40s]", "expect[0].withn"),  # inside an expectation
        ("at: 20s", "att: 20s", "timeline[0].att"),  # inside a step
        ("fleet: {elevators: 3", "fleet: {elevator: 3", "fleet.elevator"),
        ("factor: 1.25", "factr: 1.25", "timeline[0].params.factr"),  # a param the fault does not take
        ("fault: overspeed", "fault: overspeeed", "timeline[0].fault"),  # an unknown fault
    ],
)
def test_a_misspelt_key_is_an_error_naming_file_and_key(
    tmp_path: Path, good: str, bad: str, where: str
) -> None:
    assert good in GOOD
    path = write(tmp_path, GOOD.replace(good, bad, 1))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    text = str(err.value)
    assert str(path) in text and where in text, text


def test_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(write(tmp_path, "- just\n- a list\n"))


def test_fault_params_come_from_the_models() -> None:
    params = fault_params()
    assert {"between_floors", "auto_release", "detect"} <= params["trapped"]
    assert {"trip", "valve", "rate_mpa_s"} <= params["overpressure"]
    assert {"reversal", "missing_step", "handrail_speed_fault", "emergency_stop"} <= set(params)
    assert "rate_mm" not in params["low_water"]  # only the durations the scheduler converts lose "_s"
