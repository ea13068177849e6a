"""Scenario files: each produces the telemetry and events it promises, on the published stream."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sesmon.contract.physics import flue_gas_loss_pct
from sesmon.contract.schemas import parse_mqtt
from simulators.engine import DEMO_SEQUENCE, FleetSim, SimOptions
from simulators.fleet import generate_fleet
from simulators.scenario import load_scenario, render_scenario, scenario_files, seconds

FILES = scenario_files()


def test_there_is_a_scenario_for_every_promised_fault() -> None:
    names = {p.stem for p in FILES}
    needed = [
        "trapped_landing",
        "trapped_between_floors",
        "unintended_movement",
        "door_open_while_running",
        "overspeed",
        "overtravel",
        "stopped_outside_door_zone",
        "door_faults",
        "power_failure",
        "alarm_button",
        "boiler_low_water_trip",
        "boiler_low_water_trip_fails",
        "boiler_overpressure_valve_lift",
        "boiler_overpressure_no_lift",
        "boiler_flame_failure",
        "boiler_gas_leak",
        "boiler_pump_fault",
        "boiler_fouling",
        "offline_dropout",
    ]
    assert set(needed) <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_meets_its_expectations(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.expect, f"{path.name} promises nothing"
    msgs = scenario.render()
    assert scenario.check(msgs) == []
    for m in msgs[:: max(1, len(msgs) // 2000)]:
        parse_mqtt(m.topic, m.payload(), m.t)


def test_expectation_checker_can_fail() -> None:
    scenario = load_scenario("trapped_landing")
    msgs = scenario.render()
    scenario.expect = [
        {"device": "elevator#0", "event": "overspeed"},
        {"device": "elevator#0", "no_event": "trapped"},
    ]
    problems = scenario.check(msgs)
    assert len(problems) == 2 and "overspeed" in problems[0] and "unexpected trapped" in problems[1]


def test_render_scenario_gives_topic_and_bytes() -> None:
    stream = render_scenario("trapped_landing")
    assert stream and all(isinstance(t, str) and isinstance(p, bytes) for t, p in stream)
    codes = [orjson.loads(p)["code"] for t, p in stream if t.endswith("/event")]
    assert "trapped" in codes
    assert stream == render_scenario("trapped_landing")  # deterministic


def test_fouling_raises_flue_gas_and_lowers_efficiency() -> None:
    msgs = load_scenario("boiler_fouling").render()
    device = load_scenario("boiler_fouling").resolve("steam#0", generate_fleet(0, 2, seed=2))
    rows = [(m.t, m.body) for m in msgs if m.device_id == device and m.leaf == "telemetry"]
    firing = [(t, b) for t, b in rows if b["burner"] == "high_fire"]  # type: ignore[index]
    t0, t1 = rows[0][0], rows[-1][0]
    early = [b for t, b in firing if t < t0 + 3 * 86_400_000]
    late = [b for t, b in firing if t > t1 - 3 * 86_400_000]
    assert len(early) > 50 and len(late) > 50

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    rise = mean([b["flue_gas_temp_c"] for b in late]) - mean([b["flue_gas_temp_c"] for b in early])  # type: ignore[index]
    assert 20 < rise < 35  # ≈ 1 K/day over 27 days
    eff_early = mean([100 - (flue_gas_loss_pct(b["flue_gas_temp_c"], b["o2_pct"]) or 0.0) for b in early])  # type: ignore[index]
    eff_late = mean([100 - (flue_gas_loss_pct(b["flue_gas_temp_c"], b["o2_pct"]) or 0.0) for b in late])  # type: ignore[index]
    assert eff_early - eff_late > 1.0


def test_durations() -> None:
    assert seconds("90s") == 90 and seconds("5m") == 300 and seconds("9m10s") == 550 and seconds(2) == 2
    assert seconds("1d") == 86_400 and seconds("2h") == 7200
    with pytest.raises(ValueError):
        seconds("soon")


def test_demo_faults_show_what_the_first_rules_detect() -> None:
    """--faults demo: within ~30 s, every fault the first rules look for, as DESIGN.md §2 says."""
    units = generate_fleet(300, 30, seed=1)
    sim = FleetSim(units, seed=1, options=SimOptions(faults="demo", human=False))
    msgs = sim.run_for(35, step_s=1)
    assert len(sim.fault_log) >= 10 and len(DEMO_SEQUENCE) >= 6
    by_id = {u.device_id: u for u in units}
    ev = [(m.device_id, m.body["code"]) for m in msgs if m.leaf == "event"]  # type: ignore[index]
    codes = {c for _, c in ev}
    assert {"trapped", "door_open_while_running", "overspeed", "low_water_trip", "safety_valve_lift"} <= codes
    assert any(m.leaf == "status" and m.body == b"offline" for m in msgs)
    tele = [m for m in msgs if m.leaf == "telemetry"]
    trapped_dev = next(d for d, c in ev if c == "trapped")
    assert any(
        m.device_id == trapped_dev
        and m.body["occupied"]
        and not m.body["moving"]  # type: ignore[index]
        and m.body["door"] == "closed"
        and m.body["door_zone"]
        for m in tele
    )  # type: ignore[index]
    dowr = next(d for d, c in ev if c == "door_open_while_running")
    assert any(m.device_id == dowr and m.body["moving"] and m.body["door"] == "open" for m in tele)  # type: ignore[index]
    over = next(d for d, c in ev if c == "overspeed")
    rated = by_id[over].rated_speed_mps or 0
    assert any(m.device_id == over and m.body["speed_mps"] > 1.15 * rated for m in tele)  # type: ignore[index]
    low = next(d for d, c in ev if c == "low_water_trip")
    assert any(m.device_id == low and m.body["water_level_mm"] <= -120 for m in tele)  # type: ignore[index]
    lift = next(d for d, c in ev if c == "safety_valve_lift")
    valve = by_id[lift].safety_valve_set_mpa or 0
    assert any(m.device_id == lift and m.body["pressure_mpa"] >= valve for m in tele)  # type: ignore[index]
