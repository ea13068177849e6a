"""Escalators and moving walks (3310 / 3320), per-boiler limits, and healthy simulated lifts (issue 8).

Table-driven where there is a table: each vendor code 61–65 maps to the event the catalogue's
escalator rules listen to (the old adapter dead-lettered them as ``unmapped_code``); each
injected escalator fault opens its rule, from the simulator's own messages through the real
parser and engine (no servers).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.vendor import canonical_to_vendor, vendor_to_canonical
from rules import RuleEngine
from rules.fields import PENDING_FIELDS, TELEMETRY_FIELDS
from sesmon.contract.registry import Registry, Unit, write_registry
from sesmon.contract.schemas import BadInput, ElevatorTelemetry, Kind, parse_mqtt
from simulators.common import Msg
from simulators.engine import FleetSim, SimOptions
from simulators.escalator import Escalator
from simulators.fleet import generate_fleet

NOW = 1_795_000_000_000
DAY_S = 86_400


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine()


def escalator_units(n: int = 4) -> list[Unit]:
    """Escalators and moving walks as the fleet generator makes them (in use)."""
    units = [u for u in generate_fleet(400, 0, seed=7) if u.type_code.startswith("33") and u.in_use]
    assert len(units) >= n
    return units[:n]


def through_engine(engine: RuleEngine, msgs: list[Msg], units: list[Unit]) -> list[Any]:
    """Messages -> parser -> engine, as the worker sees them; every message must parse."""
    by_id = {u.device_id: u for u in units}
    states: dict[str, Any] = {}
    alerts: list[Any] = []
    last = 0
    for m in msgs:
        env = parse_mqtt(m.topic, m.payload(), m.t).model_dump(mode="json")
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
    return alerts


def firing(alerts: list[Any], calendar: set[str]) -> Counter[tuple[str, str]]:
    return Counter((a.device_id, a.rule) for a in alerts if a.state == "firing" and a.rule not in calendar)


def calendar_rules(engine: RuleEngine) -> set[str]:
    return {r.id for r in engine.catalogue.rules if r.ctype == "calendar"}


# ------------------------------------------------------------------ vendor codes 61–65


@pytest.mark.parametrize(
    ("fault_id", "code", "rule"),
    [
        (61, "safety_circuit_open", "elevator.safety_circuit_open"),
        (62, "overspeed", "escalator.overspeed"),
        (63, "reversal", "escalator.reversal"),
        (64, "missing_step", "escalator.missing_step"),
        (65, "restart_prevention_fault", "elevator.restart_prevention_fault"),
    ],
)
def test_escalator_vendor_codes_map_to_the_catalogue_events(
    engine: RuleEngine, fault_id: int, code: str, rule: str
) -> None:
    raw = {"regCode": "E1", "time": NOW, "seq": 3, "faultType": 1, "faultId": fault_id, "state": 1}
    topic, payload = vendor_to_canonical("gbt24476/v1/E1/fault", orjson.dumps(raw))
    env = parse_mqtt(topic, payload, NOW)
    assert env.type == "event" and env.body["code"] == code and env.body["state"] == "occur"
    assert env.body["detail"]["vendor_code"] == f"1:{fault_id}"
    # the catalogue is the authority: the escalator's rule for that code listens to this event
    unit = escalator_units(1)[0]
    listening = {r.id for r in engine.catalogue.rules if code in r.events}
    assert rule in listening
    out = engine.process(None, env.model_dump(mode="json") | {"device_id": unit.device_id}, unit)
    assert rule in {a.rule for a in out.alerts if a.state == "firing"}


def test_escalator_service_mode_3_is_unknown_not_fire_recall() -> None:
    raw = orjson.dumps({"regCode": "E1", "time": NOW, "seq": 1, "serviceMode": 3})
    _, payload = vendor_to_canonical("gbt24476/v1/E1/status", raw, type_code="3310")
    assert orjson.loads(payload)["mode"] == "unknown"
    _, payload = vendor_to_canonical("gbt24476/v1/E1/status", raw, type_code="3320")
    assert orjson.loads(payload)["mode"] == "unknown"
    _, payload = vendor_to_canonical("gbt24476/v1/E1/status", raw, type_code="3110")
    assert orjson.loads(payload)["mode"] == "fire_recall"  # a lift's 3 is 消防返回
    # and back: a simulated escalator in "unknown" mode says 3, a reversal says 1:63
    body = {"device_id": "E1", "ts": NOW, "seq": 1, "mode": "unknown"}
    _, out = canonical_to_vendor("sesmon/v1/elevator/E1/telemetry", body, type_code="3310")  # type: ignore[misc]
    assert orjson.loads(out)["serviceMode"] == 3
    event = {"device_id": "E1", "ts": NOW, "seq": 2, "code": "reversal", "state": "occur", "detail": {}}
    _, out = canonical_to_vendor("sesmon/v1/elevator/E1/event", event, type_code="3310")  # type: ignore[misc]
    assert (orjson.loads(out)["faultType"], orjson.loads(out)["faultId"]) == (1, 63)


# ------------------------------------------------------------------ schema fields


def test_escalator_and_brake_fields_are_declared_in_the_schema() -> None:
    names = {
        "brake",
        "set_direction",
        "handrail_left_mps",
        "handrail_right_mps",
        "missing_step",
        "emergency_stop",
    }
    assert names <= set(ElevatorTelemetry.model_fields)
    assert PENDING_FIELDS["elevator"] == {}
    assert TELEMETRY_FIELDS["elevator"]["brake"].values == ("lifted", "applied")
    assert TELEMETRY_FIELDS["elevator"]["set_direction"].values == ("up", "down")
    assert TELEMETRY_FIELDS["elevator"]["handrail_left_mps"].kind == "number"
    body = {"device_id": "E1", "ts": NOW, "seq": 1, "set_direction": "sideways"}
    with pytest.raises(BadInput):
        parse_mqtt("sesmon/v1/elevator/E1/telemetry", orjson.dumps(body), NOW)
    body = {"device_id": "E1", "ts": NOW, "seq": 1, "missing_step": "no"}  # strict: not a bool
    with pytest.raises(BadInput):
        parse_mqtt("sesmon/v1/elevator/E1/telemetry", orjson.dumps(body), NOW)


# ------------------------------------------------------------------ fleet


def test_fleet_has_escalators_and_moving_walks() -> None:
    units = generate_fleet(5000, 0, seed=5)
    elevators = [u for u in units if u.kind == Kind.elevator]
    assert len(elevators) == 5000
    codes = Counter(u.type_code for u in elevators)
    share = (codes["3310"] + codes["3320"]) / len(elevators)
    assert 0.05 <= share <= 0.11, codes
    assert codes["3310"] > 3 * codes["3320"] > 0
    for u in elevators:
        if u.type_code.startswith("33"):
            assert u.rated_speed_mps == 0.5 and u.floors == 2 and u.rated_load_kg is None
            assert u.device_id.startswith(u.type_code)
    assert generate_fleet(300, 10, seed=4) == generate_fleet(300, 10, seed=4)


def test_boiler_limits_in_the_registry_round_trip(tmp_path: Path) -> None:
    units = generate_fleet(0, 60, seed=3)
    steam = [u for u in units if u.type_code == "1100"]
    hot = [u for u in units if u.type_code == "1200"]
    assert steam and hot
    assert all(u.lowest_safe_water_level_mm in (-100.0, -120.0, -150.0) for u in steam)
    assert all(u.rated_outlet_temp_c is None for u in steam)
    assert all(u.rated_outlet_temp_c in (95.0, 115.0) for u in hot)
    assert all(u.lowest_safe_water_level_mm is None for u in hot)
    assert {u.rated_outlet_temp_c for u in hot} == {95.0, 115.0}
    path = tmp_path / "fleet.csv"
    write_registry(units, path)
    assert list(Registry.load(path)) == units


def test_simulated_boiler_trips_at_its_registered_lowest_safe_level() -> None:
    unit = next(u for u in generate_fleet(0, 60, seed=3) if u.lowest_safe_water_level_mm == -150.0)
    sim = FleetSim([unit], seed=3, options=SimOptions(human=False))
    sim.inject(unit.device_id, "low_water", trip=True, rate_mm_s=5.0, auto_release_s=3600.0)
    msgs = sim.run_for(1800, step_s=30)
    trips = [m.body for m in msgs if m.leaf == "event" and m.body["code"] == "low_water_trip"]  # type: ignore[index]
    assert trips and trips[0]["detail"]["water_level_mm"] <= -150.0  # type: ignore[index]
    levels = [m.body["water_level_mm"] for m in msgs if m.leaf == "telemetry"]  # type: ignore[index]
    assert min(levels) < -140  # it did not trip at the generic −120


# ------------------------------------------------------------------ simulated escalators


def test_engine_builds_escalator_models_and_keeps_lift_faults_off_them() -> None:
    units = generate_fleet(400, 0, seed=7)
    sim = FleetSim(units, seed=7, options=SimOptions(human=False, announce=False))
    escalators = {u.device_id for u in units if u.type_code.startswith("33") and u.in_use}
    assert escalators and set(sim.escalator_ids) == escalators
    assert all(isinstance(sim.devices[d], Escalator) for d in escalators)
    assert not set(sim.lift_ids) & escalators
    assert sim.devices[next(iter(escalators))].inject(sim.now, "trapped") is False


@pytest.mark.parametrize(
    ("fault", "rule"),
    [
        ("reversal", "escalator.reversal"),
        ("overspeed", "escalator.overspeed"),
        ("handrail_speed_fault", "escalator.handrail_speed"),
        ("missing_step", "escalator.missing_step"),
        ("emergency_stop", "escalator.emergency_stop"),
    ],
)
@pytest.mark.parametrize("with_events", [True, False], ids=["events", "telemetry-only"])
def test_injected_escalator_fault_opens_its_rule(
    engine: RuleEngine, fault: str, rule: str, with_events: bool
) -> None:
    units = escalator_units(3)
    target = units[1].device_id
    sim = FleetSim(units, seed=11, options=SimOptions(human=False))
    sim.inject(target, fault, at_ms=sim.start_ms + 120_000, auto_release_s=1200.0)
    msgs = sim.run_for(1800, step_s=60)
    assert sim.fault_log and sim.fault_log[0][1:3] == (target, fault)
    if not with_events:  # the telemetry alone must show it (terminals without event codes)
        msgs = [m for m in msgs if m.leaf != "event"]
    tele = [m.body for m in msgs if m.device_id == target and m.leaf == "telemetry"]
    assert all(t["set_direction"] in ("up", "down") for t in tele)  # type: ignore[index]
    got = firing(through_engine(engine, msgs, units), calendar_rules(engine))
    assert got[(target, rule)] == 1, got
    assert not [k for k in got if k[0] != target], got  # the other escalators stay quiet


def test_a_healthy_escalator_day_opens_nothing(engine: RuleEngine) -> None:
    units = escalator_units(4)
    sim = FleetSim(units, seed=12, options=SimOptions(human=False))
    msgs = sim.run_for(DAY_S, step_s=600)
    tele = [m.body for m in msgs if m.leaf == "telemetry"]
    running = [t for t in tele if t["moving"]]  # type: ignore[index]
    assert running and any(not t["moving"] for t in tele)  # type: ignore[index]  # runs by day, stops at night
    for t in running:
        speed = t["speed_mps"]  # type: ignore[index]
        assert 0.49 <= speed <= 0.51 and t["direction"] == t["set_direction"]  # type: ignore[index]
        for side in ("handrail_left_mps", "handrail_right_mps"):
            assert 0 <= t[side] / speed - 1 <= 0.02  # type: ignore[index,operator]
    assert firing(through_engine(engine, msgs, units), calendar_rules(engine)) == Counter()


# ------------------------------------------------------------------ healthy lifts: door-lock circuit


def test_simulated_lift_lock_circuit_is_open_whenever_the_door_is() -> None:
    units = [u for u in generate_fleet(20, 0, seed=3) if not u.type_code.startswith("33")]
    sim = FleetSim(units, seed=3, options=SimOptions(human=False))
    msgs = sim.run_for(4 * 3600, step_s=600)
    tele = [m.body for m in msgs if m.leaf == "telemetry"]
    not_closed = [t for t in tele if t["door"] != "closed"]  # type: ignore[index]
    assert len(not_closed) > 100
    assert all(t["door_lock_circuit_open"] for t in not_closed)  # type: ignore[index]


def test_a_healthy_fleet_day_opens_no_door_lock_jumper_alert(engine: RuleEngine) -> None:
    units = generate_fleet(12, 0, seed=3)
    sim = FleetSim(units, seed=3, options=SimOptions(human=True))  # maintenance visits included
    msgs = sim.run_for(DAY_S, step_s=600)
    got = firing(through_engine(engine, msgs, units), calendar_rules(engine))
    assert not [k for k in got if k[1] == "elevator.door_lock_jumpered"], got
    assert got == Counter(), got
