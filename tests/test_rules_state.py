"""Typed per-unit state: named fields, a compact versioned JSON form, and states written by the
2026.11 engine (version 1, captured in tests/fixtures/rules_state_v1.json before the change)
resumed by this one — open alerts keep their ids, pending durations keep their start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules import RuleEngine
from rules.state import AlertEntry, CondEntry, UnitState, load
from rules.testing import T0, Run, boiler, elevator, event, status, tele
from sesmon.contract.registry import Unit

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "rules_state_v1.json").read_text(encoding="utf-8"))
CASES = {c["name"]: c for c in FIXTURE["cases"]}
E = "elevator"


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine()


def test_fixture_was_captured_from_the_old_engine() -> None:
    assert FIXTURE["T0"] == T0
    for case in FIXTURE["cases"]:
        assert "sv" not in case["state"] and "b" in case["state"], "version-1 dicts have no version key"


def test_v1_fields_are_read_into_named_fields() -> None:
    raw = CASES["elevator_flapping_buffered"]["state"]
    st = load(json.loads(json.dumps(raw)))
    assert isinstance(st, UnitState)
    assert (st.device_id, st.kind) == ("E1", "elevator")
    assert (st.max_ts, st.watermark_ts, st.watermark_seq) == (raw["mx"], raw["wm"], raw["ws"])
    assert [list(r) for r in st.reorder] == raw["b"] and len(st.reorder) == 2
    assert st.mode == raw["md"][1] and st.mode_ts == raw["md"][0]
    assert (st.maint_start, st.maint_end) == tuple(raw["m"])
    overspeed = st.alerts["elevator.overspeed"]
    assert isinstance(overspeed, AlertEntry) and overspeed.alert_id == raw["a"]["elevator.overspeed"][0]
    assert st.events == raw["e"] and st.open_times == raw["f"]
    pending = [c for c in st.conditions.values() if not c.matured]
    assert pending and all(isinstance(c, CondEntry) and c.wait_ms is None for c in pending)
    boiler_state = load(json.loads(json.dumps(CASES["steam_boiler_low_water"]["state"])))
    assert boiler_state is not None and "pressure_rate_mpa_min" in boiler_state.rate_anchors
    (trip,) = [c for rid, c in boiler_state.conditions.items() if rid == "boiler.low_water_trip_failed"]
    assert trip.seen == 2 and not trip.matured
    lwt = load(json.loads(json.dumps(CASES["elevator_lwt_offline"]["state"])))
    assert lwt is not None and lwt.offline_rx == CASES["elevator_lwt_offline"]["state"]["ox"]
    rectified = load(json.loads(json.dumps(CASES["boiler_hazard_rectified"]["state"])))
    assert rectified is not None
    for hz in rectified.hazards.values():
        assert "escalate_at" not in hz and hz["use_stopped"] is False  # calendar escalation is gone


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_written_by_the_old_engine_resumes(engine: RuleEngine, name: str) -> None:
    case = CASES[name]
    unit = Unit(**case["unit"])
    run = Run(engine, unit)
    run.state = json.loads(json.dumps(case["state"]))  # as the worker's JSON table hands it back
    run.feed(*case["continuation"]).tick()
    recorded = [tuple(x) for x in case["continuation_alerts"]]
    rules = {r for r, _, _ in recorded}
    # the same alert ids open and close as the old engine would have (new rules aside)
    assert [(a.rule, a.alert_id, a.state) for a in run.alerts if a.rule in rules] == recorded
    known = {hid for hid in case["state"]["hz"]}
    old_hazards = [tuple(h) for h in case["continuation_hazards"] if h[0] in known]
    assert [(h.hazard_id, h.status) for h in run.hazards if h.hazard_id in known] == old_hazards
    assert isinstance(run.state, UnitState)


def test_v2_round_trip_is_exact_and_compact(engine: RuleEngine) -> None:
    run = Run(engine, elevator())
    held = dict(moving=False, door="closed", occupied=True, door_zone=False, speed_mps=0.0, mode="normal")
    run.feed(*[tele(E, "E1", t, i + 1, **held) for i, t in enumerate((0, 10, 21, 30, 35))])
    run.feed(event(E, "E1", 36, 20, "alarm_button"), status(E, "E1", 37, "offline"))
    st = run.state
    data = engine.dump_state(st)
    assert data["sv"] == 2
    again = load(json.loads(json.dumps(data)))
    assert again is not None and again.to_json() == json.loads(json.dumps(data))
    assert set(again.alerts) == set(st.alerts) and again.reorder == st.reorder
    assert len(json.dumps(data)) < 4000
    with pytest.raises(ValueError, match="unknown rule state format"):
        load({"sv": 99})


def test_faust_json_codec_stores_the_state_as_is(engine: RuleEngine) -> None:
    """The worker's table uses Faust's JSON serializer: it must store ``out.state`` unchanged."""
    from faust.serializers import codecs

    run = Run(engine, boiler())
    out = engine.process(None, tele("boiler", "B1", 0, 1, pressure_mpa=1.3, burner="high_fire"), run.unit)
    raw = codecs.dumps("json", out.state)
    stored: dict[str, Any] = codecs.loads("json", raw)
    assert stored["sv"] == 2 and stored["d"] == "B1"
    assert engine.next_due(stored) == out.state.due  # the worker's due index reads it without decoding
    nxt = engine.process(stored, tele("boiler", "B1", 20, 2, pressure_mpa=1.3, burner="high_fire"), run.unit)
    assert ("boiler.overpressure", "firing") in [(a.rule, a.state) for a in nxt.alerts]


def test_tests_use_named_fields_not_keys(engine: RuleEngine) -> None:
    run = Run(engine, elevator()).feed(tele(E, "E1", 0, 1, moving=False, door="closed", door_zone=True))
    st = run.state
    assert st.reorder and st.watermark_ts == 0 and st.max_ts == T0
    run.tick()
    assert not st.reorder and st.watermark_ts == T0 and st.values["door"] == "closed"
    assert engine.next_due(st) == st.due and engine.next_due(None) is None
