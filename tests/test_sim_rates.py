"""Background rates over a simulated year, and the human side's timing (domain.md §1.6–1.7)."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter

from simulators.engine import ELEVATOR_RATES, FleetSim, SimOptions
from simulators.fleet import generate_fleet
from simulators.human import ARRIVAL_MEDIAN_S

YEAR_S = 365 * 86_400


def test_elevator_background_rates_over_a_year() -> None:
    """About 400–550 trapped per 10k elevators a year, counted on the published stream."""
    units = [u for u in generate_fleet(10_000, 0, seed=31) if u.in_use]
    n = len(units)
    options = SimOptions(faults="background", traffic=0.0, periodic=False, human=False, announce=False)
    sim = FleetSim(units, seed=31, options=options)
    msgs = sim.run_for(YEAR_S, step_s=30 * 86_400)
    occur = Counter(m.body["code"] for m in msgs if m.leaf == "event" and m.body["state"] == "occur")  # type: ignore[index]
    trapped_per_10k = occur["trapped"] / n * 10_000
    assert 400 <= trapped_per_10k <= 550
    # faults ≈ 0.5–0.7 × trapped (the injected faults other than trapped and alarm presses)
    faults = Counter(f for _, _, f, _ in sim.fault_log)
    other = sum(v for k, v in faults.items() if k in ELEVATOR_RATES and k != "trapped")
    assert 0.5 <= other / faults["trapped"] <= 0.7
    # rare ones stay rare, and each kind shows up as its terminal event
    assert occur["overspeed"] < occur["door_close_fault"] < occur["trapped"]
    assert occur["overtravel_top"] > 0 and occur["unintended_movement"] > 0
    # trapped incidents end: passengers are freed (recover) in the fallback rescue time
    recovered = sum(
        1 for m in msgs if m.leaf == "event" and m.body["code"] == "trapped" and m.body["state"] == "recover"
    )  # type: ignore[index]
    assert recovered >= occur["trapped"] - 2


def test_boiler_background_rates_over_a_year() -> None:
    units = [u for u in generate_fleet(0, 40, seed=32) if u.in_use]  # coarse physics: only rates matter
    options = SimOptions(faults="background", fault_rate_multiplier=50, periodic=False, human=False,
                         announce=False, boiler_tick_s=21_600)  # fmt: skip
    sim = FleetSim(units, seed=32, options=options)
    sim.run_for(YEAR_S, step_s=30 * 86_400)
    faults = Counter(f for _, _, f, _ in sim.fault_log)
    unit_years = len(units) * 50 / 10_000
    assert 0.75 * 2000 < faults["flame_failure"] / unit_years < 1.25 * 2000
    assert 0.7 * 400 < faults["low_water"] / unit_years < 1.3 * 400


def test_maintenance_about_every_15_days_and_inspections() -> None:
    units = [u for u in generate_fleet(60, 0, seed=33) if u.in_use]
    sim = FleetSim(units, seed=33, options=SimOptions(traffic=0.0, periodic=False, announce=False))
    msgs = sim.run_for(120 * 86_400, step_s=86_400)
    visits: dict[str, list[int]] = {}
    for m in msgs:
        if m.topic == "sesmon/v1/reports/maintenance":
            visits.setdefault(m.body["device_id"], []).append(m.t)  # type: ignore[index]
    gaps = [(b - a) / 86_400_000 for ts in visits.values() for a, b in itertools.pairwise(ts)]
    assert len(visits) == len(units)
    assert 12 <= statistics.median(gaps) <= 16
    assert max(gaps) > 15.5  # some firms are late
    late_units = {
        d for d, ts in visits.items() if any((b - a) > 15.5 * 86_400_000 for a, b in itertools.pairwise(ts))
    }
    assert 0 < len(late_units) < len(units)
    inspections = [m for m in msgs if m.topic == "sesmon/v1/reports/inspection"]
    assert inspections and all(m.body["result"] in ("pass", "fail") for m in inspections)  # type: ignore[index]
    # the elevator is in inspection mode (code 2 or name) during a visit
    modes = {m.body["mode"] for m in msgs if m.leaf == "telemetry"}  # type: ignore[index]
    assert modes & {"inspection", 2}


def test_responders_arrive_log_normally_around_13_minutes() -> None:
    units = [u for u in generate_fleet(50, 0, seed=34) if u.in_use]
    sim = FleetSim(
        units, seed=34, options=SimOptions(traffic=0.0, periodic=False, human=False, announce=False)
    )
    opened: dict[str, int] = {}
    for k in range(1500):
        dev = units[k % len(units)].device_id
        alert = {"alert_id": f"a{k}", "state": "firing", "device_id": dev, "rule": "trapped", "level": "P1"}
        sim.on_alert(alert)
        sim.on_alert(alert)  # redelivery: no second set of actions
        opened[f"a{k}"] = sim.now
    msgs = sim.run_for(86_400, step_s=3600)
    actions = Counter(m.body["action"] for m in msgs if m.leaf == "dispatch")  # type: ignore[index]
    assert actions["ack"] == actions["on_site"] == actions["freed"] == actions["closed"] == 1500
    arrive = [
        (m.t - opened[m.body["alert_id"]]) / 1000
        for m in msgs
        if m.leaf == "dispatch" and m.body["action"] == "on_site"
    ]  # type: ignore[index]
    assert abs(statistics.median(arrive) - ARRIVAL_MEDIAN_S) < 60
    late = sum(1 for a in arrive if a > 1800) / len(arrive)
    assert 0.005 < late < 0.08  # a few past 30 minutes
