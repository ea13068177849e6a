"""Scenario streams through the engine: normal days stay quiet, incidents page once.

Hand-built streams first (independent of the simulators), then the simulators' own offline
renderer (simulators/scenario.py) through the real parser, as the worker would see them.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from rules import RuleEngine
from rules.testing import T0, Run, boiler, elevator, event, report, tele

E, B = "elevator", "boiler"


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine()


def normal_elevator_day(rng: random.Random, hours: float = 2.0) -> list[dict[str, Any]]:
    """Calls, door cycles and trips as a residential car does them, publishing on change."""
    msgs: list[dict[str, Any]] = []
    t, seq, floor = 0.0, 0, 1

    def pub(**kw: Any) -> None:
        nonlocal seq
        seq += 1
        base = dict(mode="normal", power="mains", safety_circuit_open=False, up_limit=False, down_limit=False)
        msgs.append(tele(E, "E1", t, seq, **{**base, **kw}))

    while t < hours * 3600:
        # idle at a landing, heartbeat-like status every 45 s
        for _ in range(rng.randint(0, 3)):
            pub(moving=False, door="closed", door_zone=True, occupied=False, speed_mps=0.0, floor=floor)
            t += 45
        # a passenger calls, door cycle, trip, door cycle, leaves
        for door in ("opening", "open"):
            pub(moving=False, door=door, door_zone=True, occupied=door == "open", speed_mps=0.0, floor=floor)
            t += 2.5
        t += rng.uniform(2, 5)
        pub(moving=False, door="closing", door_zone=True, occupied=True, speed_mps=0.0, floor=floor)
        t += 3
        pub(moving=False, door="closed", door_zone=True, occupied=True, speed_mps=0.0, floor=floor)
        t += 1
        target = rng.choice([f for f in range(-1, 13) if f not in (0, floor)])
        trip = abs(target - floor) * 3.0 / 1.0 + 3
        steps = max(1, int(trip // 2))
        for _ in range(steps):
            pub(
                moving=True,
                door="closed",
                door_zone=False,
                occupied=True,
                speed_mps=round(rng.uniform(0.95, 1.02), 2),
            )
            t += trip / steps
        floor = target
        pub(moving=False, door="closed", door_zone=True, occupied=True, speed_mps=0.0, floor=floor)
        t += 1
        for door in ("opening", "open"):
            pub(moving=False, door=door, door_zone=True, occupied=True, speed_mps=0.0, floor=floor)
            t += 2.5
        pub(moving=False, door="open", door_zone=True, occupied=False, speed_mps=0.0, floor=floor)
        t += 4
        pub(moving=False, door="closing", door_zone=True, occupied=False, speed_mps=0.0, floor=floor)
        t += 3
        pub(moving=False, door="closed", door_zone=True, occupied=False, speed_mps=0.0, floor=floor)
        t += rng.uniform(5, 40)
    return msgs


def normal_boiler_day(rng: random.Random, hours: float = 2.0) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    t, seq, p = 0.0, 0, 0.95
    burner = "high_fire"
    while t < hours * 3600:
        seq += 1
        if burner == "high_fire" and p > 1.08:
            burner = "off"
        elif burner == "off" and p < 0.9:
            burner = "high_fire"
        p += (0.004 if burner == "high_fire" else -0.003) + rng.gauss(0, 0.001)
        firing = burner == "high_fire"
        msgs.append(
            tele(
                B,
                "B1",
                t,
                seq,
                pressure_mpa=round(p, 3),
                water_level_mm=round(rng.gauss(0, 12), 1),
                burner=burner,
                fuel_flow_nm3h=290.0 if firing else 0.0,
                flue_gas_temp_c=round(150 + rng.gauss(0, 3), 1) if firing else 90.0,
                o2_pct=3.4 if firing else 20.9,
                steam_flow_tph=3.5,
            )
        )
        t += 5
    return msgs


def test_a_normal_elevator_day_raises_nothing(engine: RuleEngine) -> None:
    run = Run(engine, elevator()).feed(*normal_elevator_day(random.Random(7))).tick()
    assert run.alerts == [], Counter(a.rule for a in run.alerts)
    assert sum(o.evaluated for o in run.outcomes) > 500


def test_a_normal_boiler_day_raises_nothing(engine: RuleEngine) -> None:
    run = Run(engine, boiler()).feed(*normal_boiler_day(random.Random(8))).tick()
    assert run.alerts == [], Counter(a.rule for a in run.alerts)


def test_trapped_between_floors_incident(engine: RuleEngine) -> None:
    """Car stops between floors with people inside; terminal confirms; rescuers free them."""
    held = dict(moving=False, door="closed", door_zone=False, occupied=True, speed_mps=0.0, mode="normal")
    msgs = [tele(E, "E1", 0, 1, **{**held, "moving": True, "speed_mps": 1.0})]
    msgs.append(tele(E, "E1", 2, 2, **held, safety_circuit_open=True))
    msgs.append(event(E, "E1", 2, 3, "safety_circuit_open"))
    msgs += [tele(E, "E1", 2 + 10 * k, 3 + k, **held, safety_circuit_open=True) for k in range(1, 6)]
    msgs.append(event(E, "E1", 27, 20, "trapped"))
    msgs.append(event(E, "E1", 60, 21, "alarm_button"))
    msgs += [tele(E, "E1", 60 + 30 * k, 30 + k, **held, safety_circuit_open=True) for k in range(1, 40)]
    freed = dict(held, door="open", door_zone=True, occupied=False, safety_circuit_open=False)
    msgs.append(tele(E, "E1", 1300, 80, **freed))
    msgs += [
        event(E, "E1", 1300, 81 + i, c, "recover") for i, c in enumerate(("trapped", "safety_circuit_open"))
    ]
    run = Run(engine, elevator()).feed(*msgs).tick()
    trapped = [a for a in run.alerts if a.rule == "elevator.trapped"]
    assert [a.state for a in trapped] == ["firing", "resolved"]  # one alert for terminal + telemetry paths
    assert trapped[0].opened_at == T0 + 2000  # the telemetry condition began before the event
    assert trapped[0].title.startswith("非平层困人")
    assert trapped[1].changed_at == T0 + 1_300_000
    assert {a.rule for a in run.alerts} >= {"elevator.safety_circuit_open", "elevator.alarm_button"}
    assert not run.open_rules() - {"elevator.alarm_button"}


def test_maintenance_window_suppresses_expected_faults(engine: RuleEngine) -> None:
    start, end = T0, T0 + 3600_000
    m = report("maintenance", 0, device_id="E1", firm_id="F001", kind="routine_15d", start=start, end=end)
    open_door = dict(moving=False, door="open", door_zone=True, occupied=False, speed_mps=0.0)
    msgs = [m] + [tele(E, "E1", 60 * k, k + 1, **open_door, safety_circuit_open=True) for k in range(50)]
    run = Run(engine, elevator()).feed(*msgs).tick()
    assert run.alerts == []
    assert sum(o.suppressed for o in run.outcomes) >= 1
    # after the window the still-open safety circuit does page (it was only held back)
    run.feed(
        tele(E, "E1", 3700, 100, **open_door, safety_circuit_open=True), tele(E, "E1", 3710, 101, **open_door)
    )
    run.tick()
    assert ("elevator.safety_circuit_open", "firing") in run.transitions()


def test_boiler_low_water_with_failed_trip(engine: RuleEngine) -> None:
    msgs = []
    for k, level in enumerate([0, -30, -55, -80, -105, -118, -126, -135, -140, -145]):
        seq = k + 1
        msgs.append(
            tele(
                B,
                "B1",
                5 * k,
                seq,
                pressure_mpa=1.0,
                water_level_mm=float(level),
                burner="high_fire",
                fuel_flow_nm3h=290.0,
            )
        )
    run = Run(engine, boiler()).feed(*msgs).tick()
    rules = [a.rule for a in run.alerts if a.state == "firing"]
    assert "boiler.extreme_low_water" in rules and "boiler.low_water_trip_failed" in rules
    # reaching the lowest safe level is an alarm; firing on below it is the hidden danger, and an
    # IoT sign of a failed trip is suspected until the interlock is tested on site
    assert {h.source for h in run.hazards} == {"low_water_trip_failed"}
    assert all(h.grade == "suspected_major" for h in run.hazards)


# ------------------------------------------------------------------ the simulators' streams

import simulators.scenario as sim  # noqa: E402


def _through_engine(engine: RuleEngine, msgs: list[Any], units: list[Any]) -> tuple[list[Any], Counter[str]]:
    from sesmon.contract.schemas import BadInput, parse_mqtt

    by_id = {u.device_id: u for u in units}
    states: dict[str, Any] = {}
    alerts: list[Any] = []
    rejected: Counter[str] = Counter()
    last = 0
    for m in msgs:
        try:
            env = parse_mqtt(m.topic, m.payload(), m.t).model_dump(mode="json")
        except BadInput as exc:
            rejected[exc.reason] += 1
            continue
        last = max(last, m.t)
        dev = env.get("device_id")
        if env["type"] not in ("telemetry", "event", "status", "report") or not dev:
            continue
        out = engine.process(states.get(dev), env, by_id.get(dev))
        if out.state:
            states[dev] = out.state
        alerts += out.alerts
    for dev, state in states.items():
        alerts += engine.tick(state, last + engine.lateness_ms, by_id.get(dev)).alerts
    return alerts, rejected


def test_simulated_fleet_incidents_page_once(engine: RuleEngine) -> None:
    scen = sim.Scenario(
        name="rules-check",
        fleet={"elevators": 12, "boilers": 4, "seed": 3},
        duration_s=2400,
        options={"faults": "none"},
        timeline=[
            sim.Step(
                300, "elevator#0", fault="trapped", params={"between_floors": True, "auto_release_s": 900}
            ),
            sim.Step(600, "steam#0", fault="low_water", params={"auto_release_s": 600}),
        ],
    )
    units = scen.select_units(None)
    alerts, rejected = _through_engine(engine, scen.render(None), units)
    assert not rejected
    trapped_dev = scen.resolve("elevator#0", units)
    steam_dev = scen.resolve("steam#0", units)
    firing = Counter((a.device_id, a.rule) for a in alerts if a.state == "firing")
    assert firing[(trapped_dev, "elevator.trapped")] == 1
    assert firing[(steam_dev, "boiler.extreme_low_water")] == 1
    # no device-condition alert on a unit without an injected fault (calendar rules aside)
    calendar = {r.id for r in engine.catalogue.rules if r.ctype == "calendar"}
    stray = [a for a in alerts if a.device_id not in (trapped_dev, steam_dev) and a.rule not in calendar]
    assert stray == [], Counter(a.rule for a in stray)
    # every alert that opened also carries its rule version and a deterministic id
    assert all(a.alert_id.startswith(f"{a.device_id}.{a.rule}.") for a in alerts)


SCENARIO_FILES = sim.scenario_files() if hasattr(sim, "scenario_files") else []

#: rules each simulator scenario must raise on the units its timeline names
MUST_FIRE: dict[str, set[str]] = {
    "alarm_button": {"elevator.alarm_button"},
    "boiler_flame_failure": {"boiler.flame_failure", "boiler.fuel_without_flame"},
    "boiler_gas_leak": {"boiler.gas_leak"},
    "boiler_low_water_trip": {"boiler.extreme_low_water"},
    "boiler_low_water_trip_fails": {"boiler.extreme_low_water", "boiler.low_water_trip_failed"},
    "boiler_overpressure_no_lift": {"boiler.overpressure", "boiler.safety_valve_failed"},
    "boiler_overpressure_trip": {"boiler.overpressure"},
    "boiler_overpressure_valve_lift": {"boiler.overpressure"},
    "boiler_pump_fault": {"boiler.pump_fault"},
    "door_faults": {"elevator.door_close_fault", "elevator.door_open_fault"},
    "door_open_while_running": {"elevator.door_open_while_running"},
    "offline_dropout": {"offline"},
    "overspeed": {"elevator.overspeed"},
    "overtravel": {"elevator.overtravel_top", "elevator.overtravel_bottom"},
    "power_failure": {"elevator.power_failure"},
    "stopped_outside_door_zone": {"elevator.stopped_outside_door_zone"},
    "trapped_between_floors": {"elevator.trapped"},
    "trapped_landing": {"elevator.trapped"},
    "unintended_movement": {"elevator.unintended_movement"},
}


@pytest.mark.skipif(not SCENARIO_FILES, reason="simulators/scenarios/*.yaml not written yet")
@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_scenario_files_through_engine(engine: RuleEngine, path: Any) -> None:
    scen = sim.load_scenario(path)
    if not scen.fleet:
        pytest.skip("scenario needs a registry file")
    units = scen.select_units(None)
    named = {scen.resolve(s.device, units) for s in scen.timeline if s.device}
    alerts, rejected = _through_engine(engine, scen.render(None), units)
    assert not rejected
    firing = [a for a in alerts if a.state == "firing"]
    missing = MUST_FIRE.get(path.stem, set()) - {a.rule for a in firing if a.device_id in named}
    assert not missing, f"{path.stem}: no {sorted(missing)}"
    # once per condition: the same alert id never fires twice
    ids = [a.alert_id for a in firing]
    assert len(ids) == len(set(ids))
    # units the timeline leaves alone raise nothing but date-driven (calendar) alerts
    calendar = {r.id for r in engine.catalogue.rules if r.ctype == "calendar"}
    stray = [a.rule for a in firing if a.device_id not in named and a.rule not in calendar]
    assert stray == []
    # every terminal event the scenario expects raised the alert its code maps to
    for exp in scen.expect:
        if "event" in exp and exp.get("state", "occur") == "occur" and "device" in exp:
            dev = scen.resolve(str(exp["device"]), units)
            unit = next(u for u in units if u.device_id == dev)
            rules = {r.id for r in engine.rules_for_event(unit, str(unit.kind), exp["event"])}
            if rules:
                assert any(a.device_id == dev and a.rule in rules for a in alerts), exp
