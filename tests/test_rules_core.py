"""Milestone-1 rules, table-driven: each case fires, does not fire, or fires and clears."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from rules import RuleEngine
from rules.testing import T0, Run, boiler, elevator, event, status, tele

E = "elevator"
B = "boiler"


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine()


def stopped(t: float, seq: int, **kw: Any) -> dict[str, Any]:
    fields = dict(moving=False, door="closed", occupied=True, door_zone=False, speed_mps=0.0, mode="normal")
    fields.update(kw)
    return tele(E, "E1", t, seq, **fields)


def running(t: float, seq: int, **kw: Any) -> dict[str, Any]:
    fields = dict(moving=True, door="closed", occupied=True, door_zone=False, speed_mps=1.0, mode="normal")
    fields.update(kw)
    return tele(E, "E1", t, seq, **fields)


def water(t: float, seq: int, level: float, **kw: Any) -> dict[str, Any]:
    fields = dict(pressure_mpa=1.0, water_level_mm=level, burner="off")
    fields.update(kw)
    return tele(B, "B1", t, seq, **fields)


def press(t: float, seq: int, p: float) -> dict[str, Any]:
    return tele(B, "B1", t, seq, pressure_mpa=p, water_level_mm=0.0, burner="high_fire")


@dataclass
class Case:
    name: str
    unit: Callable[[], Any]
    messages: list[dict[str, Any]]
    expect: list[tuple[str, str]]  # (rule, firing|resolved) in order, after a final flush


CASES = [
    # ---- trapped (困人)
    Case(
        "trapped between floors fires after 20 s",
        elevator,
        [stopped(0, 1), stopped(10, 2), stopped(20, 3), stopped(30, 4)],
        [("elevator.trapped", "firing")],
    ),
    Case(
        "trapped does not fire when the door opens at 15 s",
        elevator,
        [stopped(0, 1), stopped(10, 2), stopped(15, 3, door="open"), stopped(40, 4, door="open")],
        [],
    ),
    Case(
        "trapped does not fire for an empty car",
        elevator,
        [stopped(0, 1, occupied=False, door_zone=True), stopped(40, 2, occupied=False, door_zone=True)],
        [],
    ),
    Case(
        "trapped clears when the door opens",
        elevator,
        [stopped(0, 1), stopped(30, 2), stopped(35, 3, door="open")],
        [("elevator.trapped", "firing"), ("elevator.trapped", "resolved")],
    ),
    Case(
        "trapped event fires at once and recovers",
        elevator,
        [event(E, "E1", 0, 1, "trapped"), event(E, "E1", 60, 2, "trapped", "recover")],
        [("elevator.trapped", "firing"), ("elevator.trapped", "resolved")],
    ),
    Case(
        "trapped event and telemetry give one alert",
        elevator,
        [stopped(0, 1), event(E, "E1", 20, 2, "trapped"), stopped(30, 3), stopped(40, 4)],
        [("elevator.trapped", "firing")],
    ),
    Case(
        "trapped event cleared by the door opening",
        elevator,
        [event(E, "E1", 0, 1, "trapped"), stopped(5, 2, door="open", occupied=False)],
        [("elevator.trapped", "firing"), ("elevator.trapped", "resolved")],
    ),
    Case(
        "trapped suppressed in inspection mode",
        elevator,
        [stopped(0, 1, mode="inspection"), stopped(30, 2, mode="inspection")],
        [],
    ),
    # ---- door open while running (运行中开门)
    Case(
        "door opening while moving outside the door zone fires",
        elevator,
        [
            running(0, 1),
            running(1, 2, door="opening"),
            running(2, 3, moving=False, door="open", speed_mps=0.0),
        ],
        [("elevator.door_open_while_running", "firing"), ("elevator.door_open_while_running", "resolved")],
    ),
    Case(
        "door closed while moving does not fire",
        elevator,
        [running(0, 1), running(1, 2), running(2, 3)],
        [],
    ),
    Case(
        "door-open-while-running event and telemetry give one alert",
        elevator,
        [running(0, 1), event(E, "E1", 1, 2, "door_open_while_running"), running(1.5, 3, door="open")],
        [("elevator.door_open_while_running", "firing")],
    ),
    # ---- overspeed (超速), 1.15 × rated 1.0 m/s
    Case(
        "overspeed fires above 115 %",
        elevator,
        [running(0, 1, speed_mps=1.2)],
        [("elevator.overspeed", "firing")],
    ),
    Case("overspeed does not fire at 112 %", elevator, [running(0, 1, speed_mps=1.12)], []),
    Case(
        "overspeed holds in the hysteresis band and clears at 105 %",
        elevator,
        [running(0, 1, speed_mps=1.2), running(1, 2, speed_mps=1.1), running(2, 3, speed_mps=1.0)],
        [("elevator.overspeed", "firing"), ("elevator.overspeed", "resolved")],
    ),
    Case(
        "overspeed threshold follows the registry rated speed",
        lambda: elevator(rated_speed_mps=2.5),
        [running(0, 1, speed_mps=2.8)],
        [],
    ),
    Case(
        "overspeed event fires",
        elevator,
        [event(E, "E1", 0, 1, "overspeed")],
        [("elevator.overspeed", "firing")],
    ),
    Case("unknown unit uses safe default rated speed", lambda: None, [running(0, 1, speed_mps=1.9)], []),
    # ---- boiler extreme-low water (极低水位)
    Case(
        "extreme-low water fires at the default lowest safe level (-120 mm)",
        boiler,
        [water(0, 1, -20), water(5, 2, -121)],
        [("boiler.extreme_low_water", "firing")],
    ),
    Case("low water at -110 mm is above the lowest safe level", boiler, [water(0, 1, -110)], []),
    Case(
        "extreme-low water follows the registry's lowest safe level",
        lambda: boiler(lowest_safe_water_level_mm=-80.0),
        [water(0, 1, -85)],
        [("boiler.extreme_low_water", "firing")],
    ),
    Case(
        "extreme-low water clears 25 mm above the lowest safe level",
        boiler,
        [water(0, 1, -125), water(5, 2, -100), water(10, 3, -90)],
        [("boiler.extreme_low_water", "firing"), ("boiler.extreme_low_water", "resolved")],
    ),
    Case(
        "extreme-low water rule skips hot-water boilers", lambda: boiler(steam=False), [water(0, 1, -130)], []
    ),
    Case(
        "low-water trip event raises the same alert",
        boiler,
        [water(0, 1, -125), event(B, "B1", 0.5, 2, "low_water_trip"), water(5, 3, -128)],
        [("boiler.extreme_low_water", "firing")],
    ),
    # ---- boiler overpressure (超压), rated 1.25 MPa
    Case(
        "overpressure fires at rated pressure",
        boiler,
        [press(0, 1, 1.26)],
        [("boiler.overpressure", "firing")],
    ),
    Case("overpressure does not fire at 1.18 MPa", boiler, [press(0, 1, 1.18)], []),
    Case(
        "overpressure clears below 97 %",
        boiler,
        [press(0, 1, 1.26), press(5, 2, 1.22), press(10, 3, 1.20)],
        [("boiler.overpressure", "firing"), ("boiler.overpressure", "resolved")],
    ),
    Case(
        "safety-valve lift event raises the overpressure alert",
        boiler,
        [event(B, "B1", 0, 1, "safety_valve_lift")],
        [("boiler.overpressure", "firing")],
    ),
    # ---- offline (离线)
    Case(
        "LWT offline fires and the next reading resolves it",
        elevator,
        [stopped(0, 1, occupied=False), status(E, "E1", 30, "offline"), stopped(90, 2, occupied=False)],
        [("offline", "firing"), ("offline", "resolved")],
    ),
    Case(
        "status online resolves offline",
        elevator,
        [status(E, "E1", 0, "offline"), status(E, "E1", 20, "online")],
        [("offline", "firing"), ("offline", "resolved")],
    ),
]


def _expect(run: Run, wanted: list[tuple[str, str]]) -> None:
    core = {w[0] for w in wanted} | {
        "elevator.trapped",
        "elevator.door_open_while_running",
        "elevator.overspeed",
        "boiler.extreme_low_water",
        "boiler.overpressure",
        "offline",
    }
    got = [t for t in run.transitions() if t[0] in core]
    assert got == wanted


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_core_rule(engine: RuleEngine, case: Case) -> None:
    run = Run(engine, case.unit()).feed(*case.messages).tick()
    _expect(run, case.expect)
    for a in run.alerts:
        assert a.rule_version == engine.version
        assert a.alert_id.startswith(f"{a.device_id}.{a.rule}.")


def test_trapped_alert_fields(engine: RuleEngine) -> None:
    run = Run(engine, elevator()).feed(stopped(0, 1), stopped(10, 2), stopped(30, 3)).tick()
    (alert,) = run.alerts
    assert alert.alert_id == f"E1.elevator.trapped.{T0}"
    assert alert.level == "P1"
    assert alert.opened_at == T0
    assert alert.changed_at == T0 + 20_000  # between floors: matured at since + 20 s (sample-and-hold)
    assert alert.title.startswith("非平层困人")
    assert {(r.kind, r.id) for r in alert.receivers} == {
        ("firm", "F001"),
        ("user_unit", "U001"),
        ("centre", "96333"),
    }
    assert alert.district == "天河"
    assert alert.evidence and alert.evidence[0]["occupied"] is True


def test_open_alert_is_not_reemitted(engine: RuleEngine) -> None:
    run = Run(engine, elevator()).feed(*[running(i, i + 1, speed_mps=1.3) for i in range(30)]).tick()
    assert run.transitions() == [("elevator.overspeed", "firing")]


def test_deadman_by_tick_uses_event_time_id(engine: RuleEngine) -> None:
    run = Run(engine, elevator()).feed(stopped(0, 1, occupied=False, door_zone=True))
    rx = run.last_rx
    assert not engine.due_for_tick(run.state, rx + 1000) or run.state.reorder
    run.tick(rx + 100_000)  # flush only
    assert run.transitions() == []
    assert engine.due_for_tick(run.state, rx + 180_000)
    run.tick(rx + 181_000)
    assert run.transitions() == [("offline", "firing")]
    assert run.alerts[0].alert_id == f"E1.offline.{T0 + 180_000}"
    assert run.alerts[0].level == "P3"
    run.tick(rx + 300_000)
    assert len(run.alerts) == 1  # not re-emitted
    run.feed(stopped(400, 2, occupied=False, door_zone=True))
    run.tick()
    assert run.transitions() == [("offline", "firing"), ("offline", "resolved")]


def test_deadman_replay_without_tick_gives_same_ids(engine: RuleEngine) -> None:
    msgs = [stopped(0, 1, occupied=False, door_zone=True), stopped(400, 2, occupied=False, door_zone=True)]
    live = Run(engine, elevator()).feed(msgs[0]).tick(msgs[0]["received_ms"] + 200_000).feed(msgs[1]).tick()
    replay = Run(engine, elevator()).feed(*msgs).tick()
    assert [(a.alert_id, a.state) for a in live.alerts] == [(a.alert_id, a.state) for a in replay.alerts]
    assert [a.alert_id for a in replay.alerts] == [f"E1.offline.{T0 + 180_000}"] * 2


def test_state_is_json_roundtrippable(engine: RuleEngine) -> None:
    import json

    run = Run(engine, elevator())
    msgs = [
        stopped(0, 1),
        stopped(10, 2),
        event(E, "E1", 12, 3, "trapped"),
        stopped(30, 4),
        status(E, "E1", 40, "offline"),
    ]
    for m in msgs:
        out = engine.process(run.state, m, run.unit)
        # the worker stores state as JSON: simulate the round trip every message
        run.state = json.loads(json.dumps(engine.dump_state(out.state)))
        run.alerts.extend(out.alerts)
    assert [a.rule for a in run.alerts] == ["elevator.trapped", "offline"]


def test_a_custom_catalogue_path_and_version(tmp_path: Any) -> None:
    from rules.testing import minimal_catalogue

    path = tmp_path / "mine.yaml"
    path.write_text(
        minimal_catalogue(
            "  - {id: fast, kind: elevator, level: P2, title: fast, params: {v: 0.5},\n"
            '     when: [[speed_mps, ">", $v]], assumption: true, why: a threshold for this test only}\n',
            version="test.1",
            lateness_s=0,
        ),
        encoding="utf-8",
    )
    engine = RuleEngine(catalogue_path=path)
    assert engine.version == "test.1"
    out = engine.process(None, tele(E, "E9", 0, 1, speed_mps=0.6), None)
    assert [(a.rule, a.rule_version, a.level) for a in out.alerts] == [("fast", "test.1", "P2")]
    assert out.alerts[0].receivers == []  # unknown unit: no firm to page, and no crash


def test_dispatch_and_unknown_messages_are_ignored_safely(engine: RuleEngine) -> None:
    dispatch = {"type": "dispatch", "alert_id": "E1.x.1", "ts": T0, "received_ms": T0, "body": {}}
    out = engine.process(None, dispatch, None)
    assert out.alerts == [] and out.rejected


def test_units_with_equal_rated_parameters_share_their_resolved_thresholds() -> None:
    """A city's lifts come in few models: thresholds are resolved once per model, not per unit,
    and a unit of another model (here faster) still gets its own."""
    engine = RuleEngine()
    a, b = elevator("E1", rated_speed_mps=1.0), elevator("E2", rated_speed_mps=1.0)
    fast = elevator("E3", rated_speed_mps=2.5)
    ctx_a, ctx_b, ctx_fast = (engine._ctx(u.device_id, u, "elevator") for u in (a, b, fast))
    assert ctx_a.params is ctx_b.params and ctx_a.unit is a and ctx_b.unit is b
    assert ctx_fast.params is not ctx_a.params
    fresh = RuleEngine()._ctx("E3", fast, "elevator")  # resolved on its own, nothing shared
    assert ctx_fast.params == fresh.params and ctx_fast.for_ms == fresh.for_ms
    assert ctx_fast.defaults == fresh.defaults
