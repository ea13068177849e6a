"""The hidden-danger loop after issue 8: withdrawn / regrade / stop_use / return_to_service, who may
close a major hazard (publisher role, or the ``by`` convention on an open broker), supervision set
at grading, and the windowed rectification rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from rules import RuleEngine, rectification_rate, transition
from rules.hazards import DAY_MS, new_hazard
from rules.testing import T0, Run, elevator, report, tele

E = "elevator"
DAY = 86_400


def hazard(grade: str) -> dict[str, Any]:
    return new_hazard(device_id="E1", source="door_lock_suspect", grade=grade, opened_ms=T0, deadline_days=7)


def body(action: str, t_days: float, by: str = "", **kw: Any) -> dict[str, Any]:
    return {
        "hazard_id": "HZ.E1.door_lock_suspect.1",
        "action": action,
        "by": by,
        "ts": T0 + int(t_days * DAY_MS),
        **kw,
    }


@dataclass
class Step:
    action: str
    by: str = ""
    publisher: str | None = None
    extra: dict[str, Any] | None = None
    ok: bool = True


@dataclass
class Loop:
    name: str
    grade: str
    steps: list[Step]
    status: str
    grade_after: str | None = None
    supervision: str | None = None
    use_stopped: bool = False


LOOPS = [
    Loop(  # before: any `by` could verify a major hazard
        "a firm cannot close a major hazard",
        "major",
        [Step("rectified", "firm-F001"), Step("verified", "firm-F001", ok=False)],
        "rectified",
    ),
    Loop(
        "an inspector closes a major hazard",
        "major",
        [Step("rectified", "firm-F001"), Step("verified", "inspector-7")],
        "closed",
    ),
    Loop(
        "the verified publisher's role counts, not what `by` claims",
        "major",
        [Step("rectified", "firm-F001"), Step("verified", "inspector-7", publisher="firm-F001", ok=False)],
        "rectified",
    ),
    Loop(
        "an inspector publishing under their own name may verify",
        "suspected_major",
        [Step("rectified", "F001"), Step("verified", "someone", publisher="inspector-3")],
        "closed",
    ),
    Loop(
        "an operator may close a general hazard but not a suspected major one",
        "suspected_major",
        [Step("rectified", "firm-F001"), Step("verified", "operator", ok=False)],
        "rectified",
    ),
    Loop(  # before: no such action
        "a false positive is withdrawn by an inspector",
        "suspected_major",
        [
            Step("withdrawn", "firm-F001", ok=False),
            Step("withdrawn", "inspector-7", extra={"note": "sensor wiring"}),
        ],
        "withdrawn",
    ),
    Loop(  # before: no such action; an IoT sign confirmed on site becomes major and is listed
        "confirmed on site: suspected major regraded to major, listed at district",
        "suspected_major",
        [
            Step("regrade", "firm-F001", extra={"grade": "major"}, ok=False),
            Step("regrade", "inspector-7", extra={"grade": "major"}),
        ],
        "reported",
        grade_after="major",
        supervision="district",
    ),
    Loop(
        "regrade needs a grade",
        "suspected_major",
        [Step("regrade", "inspector-7", ok=False)],
        "reported",
        grade_after="suspected_major",
        supervision="none",
    ),
    Loop(  # before: no 停用 state
        "stop use, rectify, verify, return to service",
        "major",
        [
            Step("stop_use", "firm-F001"),
            Step("return_to_service", "inspector-7", ok=False),  # not rectified yet
            Step("rectified", "firm-F001"),
            Step("return_to_service", "firm-F001", ok=False),  # a major hazard: inspector only
            Step("return_to_service", "inspector-7"),
            Step("verified", "inspector-7"),
        ],
        "closed",
    ),
    Loop(
        "a stopped unit stays stopped while the hazard is open",
        "suspected_major",
        [Step("stop_use", "inspector-7"), Step("stop_use", "firm-F001", ok=False)],
        "reported",
        use_stopped=True,
    ),
    Loop(
        "a device-named `by` on an open broker may only report rectification",
        "general",
        [Step("supervise", "F001", ok=False), Step("rectified", "F001"), Step("verified", "F001", ok=False)],
        "rectified",
        supervision="none",
    ),
]


@pytest.mark.parametrize("loop", LOOPS, ids=[c.name for c in LOOPS])
def test_hazard_actions_and_roles(loop: Loop) -> None:
    hz = hazard(loop.grade)
    for i, step in enumerate(loop.steps, start=1):
        t = transition(hz, body(step.action, i, step.by, **(step.extra or {})), publisher=step.publisher)
        assert t.changed == step.ok, (step, t.refusal)
        if not step.ok:
            assert t.refusal  # the dead-letter record says why
        hz = t.hazard
    assert hz["status"] == loop.status
    assert hz["grade"] == (loop.grade_after or loop.grade)
    if loop.supervision is not None:
        assert hz["supervision"] == loop.supervision
    assert hz["use_stopped"] is loop.use_stopped
    roles = [h.get("role") for h in hz["history"][1:]]
    assert all(roles), "every human action records the role it was accepted under"


def test_supervision_is_set_at_grading() -> None:
    assert hazard("major")["supervision"] == "district"
    assert hazard("suspected_major")["supervision"] == "none"
    assert hazard("general")["supervision"] == "none"


def test_rectification_rate_windows_and_withdrawals() -> None:
    a, b, c = hazard("major"), hazard("major"), hazard("major")
    b["opened_at"] = T0 + 40 * DAY_MS
    for action, day, by in (("rectified", 1, "firm-F001"), ("verified", 2, "inspector-7")):
        a = transition(a, body(action, day, by)).hazard
    c = transition(c, body("withdrawn", 1, "inspector-7")).hazard
    first_month = rectification_rate([a, b, c], (T0, T0 + 30 * DAY_MS))
    assert (first_month.identified, first_month.closed, first_month.withdrawn) == (1, 1, 1)
    assert first_month.rate == 1.0 and first_month.on_time_rate == 1.0
    second_month = rectification_rate([a, b, c], (T0 + 30 * DAY_MS, T0 + 60 * DAY_MS))
    assert (second_month.identified, second_month.closed, second_month.overdue_open) == (1, 0, 1)
    assert second_month.rate == 0.0
    empty = rectification_rate([a, b, c], (T0 + 60 * DAY_MS, T0 + 90 * DAY_MS))
    assert empty.identified == 0 and empty.rate is None and empty.on_time_rate is None


def jumper(run: Run, t: float, seq: int) -> str:
    run.feed(
        tele(E, "E1", t, seq, moving=False, door="open", door_zone=True, door_lock_circuit_open=False),
        tele(
            E, "E1", t + 4, seq + 1, moving=False, door="open", door_zone=True, door_lock_circuit_open=False
        ),
        tele(
            E, "E1", t + 6, seq + 2, moving=False, door="closed", door_zone=True, door_lock_circuit_open=False
        ),
    )
    run.tick()
    return next(h.hazard_id for h in run.hazards if h.source == "door_lock_suspect")


def test_engine_reports_refusals_and_uses_the_envelope_publisher() -> None:
    engine = RuleEngine()
    run = Run(engine, elevator())
    hid = jumper(run, 0, 1)
    env = report("hazard", DAY, hazard_id=hid, action="regrade", by="inspector-7", grade="major")
    env["publisher"] = "firm-F001"  # ingest's verified MQTT username wins over the claimed `by`
    out = engine.process(run.state, env, run.unit)
    assert not out.hazards and out.rejected and "inspector" in out.rejected[0]
    env["publisher"] = "inspector-7"
    out = engine.process(run.state, env, run.unit)
    (hz,) = out.hazards
    assert hz.grade == "major" and hz.supervision == "district"
    assert hz.history[-1]["role"] == "inspector"


def test_a_unit_stopped_for_a_hazard_is_not_in_use() -> None:
    """停用: while a hazard holds the unit out of use, rules suppressed for units not in use stay quiet."""
    engine = RuleEngine()
    run = Run(engine, elevator())
    hid = jumper(run, 0, 1)
    run.feed(report("hazard", 60, hazard_id=hid, action="stop_use", by="inspector-7"))
    assert run.hazards[-1].use_stopped
    # the stopped car sits outside the door zone, empty, for minutes: no 门区外停梯 page
    for k in range(5):
        run.feed(
            tele(E, "E1", 100 + 30 * k, 10 + k, moving=False, door="closed", door_zone=False, occupied=False)
        )
    run.tick()
    assert "elevator.stopped_outside_door_zone" not in {a.rule for a in run.alerts}
    # a passenger held in it is still paged: trapped is never suppressed by stop_use
    for k in range(3):
        run.feed(
            tele(E, "E1", 300 + 15 * k, 20 + k, moving=False, door="closed", door_zone=False, occupied=True)
        )
    run.tick()
    assert ("elevator.trapped", "firing") in run.transitions()
