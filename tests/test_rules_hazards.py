"""Hidden dangers (隐患): the closed loop, supervision set at grading, and the rectification rate."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from rules import (
    HazardBook,
    RuleEngine,
    apply_hazard_report,
    hazard_device_id,
    hazard_id_for,
    mark_overdue,
    rectification_rate,
)
from rules.hazards import DAY_MS, new_hazard
from rules.testing import T0, Run, elevator, event, report, tele

E = "elevator"
DAY = 86_400


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine()


def fresh(grade: str = "major", days: int = 30) -> dict[str, Any]:
    return new_hazard(
        device_id="E1", source="unintended_movement", grade=grade, opened_ms=T0, deadline_days=days
    )


def act(action: str, t_s: float, by: str = "inspector-7", **kw: Any) -> dict[str, Any]:
    return {
        "hazard_id": hazard_id_for("E1", "unintended_movement", T0),
        "action": action,
        "by": by,
        "ts": T0 + int(t_s * 1000),
        **kw,
    }


def test_hazard_id_encodes_the_unit() -> None:
    hid = hazard_id_for("44010620170012345678", "overdue_inspection", T0)
    assert hid == f"HZ.44010620170012345678.overdue_inspection.{T0}"
    assert hazard_device_id(hid) == "44010620170012345678"
    assert hazard_device_id("not-a-hazard") is None


def test_full_loop_found_to_closed() -> None:
    hz = fresh()
    assert hz["status"] == "reported" and hz["supervision"] == "district"  # major: 挂牌督办 from the start
    hz, changed = apply_hazard_report(hz, act("rectified", 3 * DAY, by="F001"))
    assert changed and hz["status"] == "rectified" and hz["rectified_at"] == T0 + 3 * DAY * 1000
    hz, changed = apply_hazard_report(hz, act("verified", 4 * DAY, note="re-checked, lock replaced"))
    assert changed and hz["status"] == "closed" and hz["closed_on_time"] is True
    assert hz["effect"] == "re-checked, lock replaced"
    assert [h["action"] for h in hz["history"]] == ["reported", "rectified", "verified"]


def test_invalid_transitions_and_repeats_change_nothing() -> None:
    hz = fresh()
    same, changed = apply_hazard_report(hz, act("verified", 1 * DAY))
    assert not changed and same["status"] == "reported"  # cannot verify before rectification
    hz, _ = apply_hazard_report(hz, act("rectified", 2 * DAY))
    again, changed = apply_hazard_report(hz, act("rectified", 2 * DAY))
    assert not changed and len(again["history"]) == len(hz["history"])
    _, changed = apply_hazard_report(hz, act("demolish", 3 * DAY))
    assert not changed


def test_reopen_restarts_the_deadline() -> None:
    hz = fresh(days=30)
    hz, _ = apply_hazard_report(hz, act("rectified", 1 * DAY))
    hz, _ = apply_hazard_report(hz, act("verified", 2 * DAY))
    hz, changed = apply_hazard_report(hz, act("reopened", 10 * DAY, note="lock jumpered again"))
    assert changed and hz["status"] == "reported" and hz["reopened"] == 1
    assert hz["deadline"] == T0 + (10 + 30) * DAY * 1000
    assert hz["closed_at"] is None


def test_supervise_climbs_one_level_up_to_province() -> None:
    hz = fresh(grade="general")
    assert hz["supervision"] == "none"
    levels = []
    for i in range(5):
        hz, changed = apply_hazard_report(hz, act("supervise", i + 1))
        levels.append((hz["supervision"], changed))
    assert levels == [
        ("district", True),
        ("city", True),
        ("province", True),
        ("province", False),
        ("province", False),
    ]


def test_overdue_is_flagged_but_supervision_is_not_climbed_by_the_calendar() -> None:
    hz = fresh(grade="general", days=7)
    assert not mark_overdue(hz, T0 + 6 * DAY_MS)
    assert mark_overdue(hz, T0 + 7 * DAY_MS)
    assert hz["overdue"] and hz["supervision"] == "none"  # a general hazard never reaches province by itself
    assert not mark_overdue(hz, T0 + 400 * DAY_MS)  # flagged once
    assert hz["supervision"] == "none"
    assert [h["action"] for h in hz["history"]] == ["reported", "overdue"]


def test_rectified_hazard_is_not_overdue() -> None:
    hz = fresh(grade="general", days=7)
    hz, _ = apply_hazard_report(hz, act("rectified", 3 * DAY))
    assert not mark_overdue(hz, T0 + 30 * DAY_MS)
    assert hz["supervision"] == "none" and not hz["overdue"]


def test_rectification_rate_counts_numerator_and_denominator() -> None:
    a = fresh()
    b = new_hazard(device_id="E2", source="overdue_inspection", grade="major", opened_ms=T0, deadline_days=30)
    c = new_hazard(device_id="E3", source="maintenance_gap", grade="general", opened_ms=T0, deadline_days=7)
    a, _ = apply_hazard_report(a, act("rectified", DAY))
    a, _ = apply_hazard_report(a, act("verified", 2 * DAY))
    mark_overdue(b, T0 + 40 * DAY_MS)
    window = (T0, T0 + 60 * DAY_MS)
    rate = rectification_rate([a, b, c], window)
    assert (rate.identified, rate.closed, rate.closed_on_time, rate.overdue_open) == (2, 1, 1, 1)
    assert rate.rate == 0.5
    assert rectification_rate([a, b, c], window, grade=None).identified == 3
    assert rectification_rate([], window).rate is None  # nothing identified is not 100 %
    assert rectification_rate([a, b, c], (T0 + DAY_MS, T0 + 2 * DAY_MS)).rate is None  # outside the window


def test_hazard_book() -> None:
    book = HazardBook([fresh(days=7)])
    hz, changed = book.apply(act("rectified", DAY))
    assert changed and hz is not None and hz["status"] == "rectified"
    assert book.apply({"hazard_id": "HZ.X.y.1", "action": "rectified", "by": "x", "ts": T0}) == (None, False)
    assert book.mark_overdue(T0 + 30 * DAY_MS) == []  # rectified: not overdue
    window = (T0, T0 + 30 * DAY_MS)
    assert book.rate(window).identified == 1 and book.rate(window).closed == 0
    assert len(book.open()) == 1


# ------------------------------------------------------------------ through the engine


def ucm(run: Run, t: float, seq: int) -> None:
    """The car leaves the landing with its door open, faster than re-levelling (开门走车)."""
    idle = dict(moving=False, door="open", door_zone=True, occupied=True, speed_mps=0.0, mode="normal")
    run.feed(
        tele(E, "E1", t, seq, **idle),
        tele(E, "E1", t + 1, seq + 1, **{**idle, "moving": True, "speed_mps": 0.5}),
    )
    run.feed(tele(E, "E1", t + 3, seq + 2, **idle))


def test_ucm_opens_suspected_major_hazard_and_report_loop_closes_it(engine: RuleEngine) -> None:
    run = Run(engine, elevator())
    ucm(run, 0, 1)
    run.tick()
    firing = [a for a in run.alerts if a.rule == "elevator.unintended_movement" and a.state == "firing"]
    assert len(firing) == 1
    assert ("regulator", "district:天河") in {(r.kind, r.id) for r in firing[0].receivers}
    (hz,) = run.hazards
    # an IoT sign of a bypassed lock: suspected until an inspector confirms it on site (GB 45067-2024)
    assert hz.grade == "suspected_major" and hz.source == "unintended_movement" and hz.device_id == "E1"
    assert hz.alert_id == firing[0].alert_id and hz.rule_version == engine.version
    hid = hz.hazard_id
    assert hazard_device_id(hid) == "E1"
    # a second 开门走车 a day later: same hazard, one more occurrence (not a second hazard)
    ucm(run, DAY, 10)
    run.tick()
    assert {h.hazard_id for h in run.hazards} == {hid}
    assert run.hazards[-1].occurrences == 2
    # the loop, driven by sesmon/v1/reports/hazard
    for action, t, by in (("rectified", 2 * DAY, "firm-F001"), ("verified", 3 * DAY, "inspector-7")):
        out = engine.process(run.state, report("hazard", t, hazard_id=hid, action=action, by=by), run.unit)
        assert out.hazards and out.hazards[0].status == ("rectified" if action == "rectified" else "closed")
        run.state = out.state
    out = engine.process(
        run.state,
        report("hazard", 4 * DAY, hazard_id="HZ.E1.nothing.1", action="verified", by="inspector-7"),
        None,
    )
    assert out.rejected and not out.hazards


def test_overdue_inspection_hazard_auto_rectified_by_pass(engine: RuleEngine) -> None:
    unit = elevator(next_inspection_due=date(2026, 9, 1))
    run = Run(engine, unit).feed(tele(E, "E1", 0, 1, moving=False, door="closed", door_zone=True))
    hz = [h for h in run.hazards if h.source == "overdue_inspection"]
    assert len(hz) == 1 and hz[0].grade == "major" and hz[0].supervision == "district"
    run.feed(report("inspection", 3600, device_id="E1", result="pass", next_due="2027-09-01"))
    assert run.hazards[-1].status == "rectified"
    assert ("inspection_overdue", "resolved") in run.transitions()


def test_overdue_hazard_is_flagged_on_tick_and_keeps_its_supervision(engine: RuleEngine) -> None:
    unit = elevator(next_inspection_due=date(2026, 9, 1))
    run = Run(engine, unit).feed(tele(E, "E1", 0, 1, moving=False, door="closed", door_zone=True))
    hid = next(h.hazard_id for h in run.hazards if h.source == "overdue_inspection")
    run.tick(run.last_rx + 61 * DAY * 1000)  # silent unit: the processing-time guard still flags it
    overdue = [h for h in run.hazards if h.hazard_id == hid and h.overdue]
    # major: district from grading; overdue does not climb it (that is a regulator's supervise report)
    assert overdue and {h.supervision for h in overdue} == {"district"}
    assert [h["action"] for h in overdue[-1].history].count("overdue") == 1


def test_maintenance_gap_hazard_and_report(engine: RuleEngine) -> None:
    run = Run(engine, elevator()).feed(tele(E, "E1", 0, 1, moving=False, door="closed", door_zone=True))
    run.feed(tele(E, "E1", 16 * DAY, 2, moving=False, door="closed", door_zone=True))
    gap = [h for h in run.hazards if h.source == "maintenance_gap"]
    assert gap and gap[0].grade == "general" and gap[0].opened_at == T0 + 15 * DAY * 1000
    end = T0 + (16 * DAY + 600) * 1000
    run.feed(
        report("maintenance", 16 * DAY + 600, device_id="E1", firm_id="F001", kind="routine_15d", end=end)
    )
    assert run.hazards[-1].source == "maintenance_gap" and run.hazards[-1].status == "rectified"


def test_repeated_trapping_opens_general_hazard(engine: RuleEngine) -> None:
    run = Run(engine, elevator())
    seq = 0
    for d in (0, 3, 9, 20):
        seq += 2
        run.feed(
            event(E, "E1", d * DAY, seq, "trapped"),
            event(E, "E1", d * DAY + 900, seq + 1, "trapped", "recover"),
        )
    fired = [a for a in run.alerts if a.rule == "elevator.trapped_repeated"]
    assert [a.state for a in fired] == ["firing"]
    assert fired[0].opened_at == T0 + 9 * DAY * 1000  # the third trapping within 30 days
    rep = [h for h in run.hazards if h.source == "repeated_faults"]
    assert rep and rep[0].grade == "general"
    assert engine.rules["elevator.trapped_repeated"].count_n == 3


def test_closed_hazards_leave_the_state_after_retention(engine: RuleEngine) -> None:
    run = Run(engine, elevator(next_inspection_due=date(2027, 9, 1)))
    ucm(run, 0, 1)
    run.tick()
    hid = run.hazards[0].hazard_id
    for action, t in (("rectified", DAY), ("verified", 2 * DAY)):
        run.feed(report("hazard", t, hazard_id=hid, action=action, by="inspector-7"))
    assert hid in run.state.hazards
    run.feed(tele(E, "E1", 100 * DAY, 50, moving=False, door="closed", door_zone=True))
    assert hid not in run.state.hazards


def test_hazard_records_validate_as_models(engine: RuleEngine) -> None:
    run = Run(engine, elevator(next_inspection_due=date.fromtimestamp(T0 // 1000) - timedelta(days=400)))
    run.feed(tele(E, "E1", 0, 1, moving=False, door="closed", door_zone=True))
    for h in run.hazards:
        dumped = h.model_dump(mode="json")
        assert dumped["hazard_id"].startswith("HZ.E1.")
        assert dumped["deadline"] > dumped["opened_at"]
