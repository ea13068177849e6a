"""The response loop (alerts/incidents.py) and its durable store (alerts/incident_store.py).

Pure logic on device time: a 2-hour trapped incident runs in milliseconds. Scenarios are tables
of steps (an alert change, a dispatch action, the clock reaching a time) with the changes each
step must page, exactly.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from alerts.incident_store import IncidentStore
from alerts.incidents import (
    ClockConfig,
    EventClock,
    Incident,
    IncidentChange,
    ResponseLoop,
    accident_key,
)
from sesmon.contract.schemas import Alert, DispatchAction, Receiver

T0 = 1_795_300_000_000  # a fixed device time (no test depends on today's date or hour)
S, MIN, H = 1_000, 60_000, 3_600_000
TRAPPED = f"E1.elevator.trapped.{T0}"
FIRM = "firm-F001"


def alert(
    rule: str = "elevator.trapped",
    *,
    level: str = "P1",
    kind: str = "elevator",
    state: str = "firing",
    opened: int = T0,
    changed: int | None = None,
    device: str = "E1",
    district: str = "天河",
    evidence: list[dict[str, Any]] | None = None,
    receivers: list[Receiver] | None = None,
) -> Alert:
    return Alert(
        alert_id=f"{device}.{rule}.{opened}",
        rule=rule,
        level=level,  # type: ignore[arg-type]
        device_id=device,
        kind=kind,  # type: ignore[arg-type]
        district=district,
        firm_id="F001",
        user_unit_id="U01",
        opened_at=opened,
        changed_at=opened if changed is None else changed,
        state=state,  # type: ignore[arg-type]
        evidence=evidence or [],
        receivers=receivers or [],
    )


def trapped_2h(device: str = "E1", trapped_opened: int = T0) -> Alert:
    """The rules' own follow-up alert, as rules/lifecycle.py emits it."""
    limit = trapped_opened + 2 * H
    return alert(
        "elevator.trapped_2h",
        opened=limit,
        device=device,
        evidence=[
            {"ts": limit, "open_since": trapped_opened, "of": f"{device}.elevator.trapped.{trapped_opened}"}
        ],
        receivers=[
            Receiver(kind="firm", id="F001"),
            Receiver(kind="user_unit", id="U01"),
            Receiver(kind="centre", id="96333"),
            Receiver(kind="regulator", id="district:天河"),
        ],
    )


def act(action: str, at: int, by: str = FIRM, alert_id: str = TRAPPED) -> DispatchAction:
    return DispatchAction(alert_id=alert_id, action=action, by=by, ts=at)  # type: ignore[arg-type]


def run(loop: ResponseLoop, steps: list[tuple[str, Any]]) -> list[list[str]]:
    """Each step's changes (their ``what``); dispatch steps must be applied."""
    out = []
    alert_id = steps[0][1].alert_id
    for step, arg in steps:
        if step == "alert":
            changes = loop.on_alert(arg)
        elif step == "clock":
            changes = loop.on_clock(T0 + arg)
        else:
            result = loop.on_dispatch(act(step, T0 + arg, alert_id=alert_id))
            assert result.status == "applied", (step, result)
            changes = result.changes
        out.append([c.what for c in changes])
    return out


def kinds(change: IncidentChange) -> list[str]:
    return [r.kind for r in change.receivers]


# ---------------------------------------------------------------------------- scenario table

SCENARIOS = {
    "trapped walks ack, accepted, on_site, freed, closed: no escalation": (
        [
            ("alert", alert()),
            ("ack", 40 * S),
            ("accepted", 3 * MIN),
            ("clock", 5 * MIN),
            ("on_site", 14 * MIN),
            ("freed", 20 * MIN),
            ("clock", 30 * MIN),
            ("closed", 45 * MIN),
            ("clock", 3 * H),
        ],
        [
            ["opened"],
            ["dispatch:ack"],
            ["dispatch:accepted"],
            [],
            ["dispatch:on_site"],
            ["dispatch:freed"],
            [],
            ["dispatch:closed"],
            [],
        ],
        {"state": "closed", "escalation": 1, "sla_breach": False, "accident": False},
    ),
    "never accepted: level 2 at 5:00 (not 4:59), level 3 + SLA breach at 30:00": (
        [
            ("alert", alert()),
            ("clock", 5 * MIN - 1),
            ("clock", 5 * MIN),
            ("clock", 30 * MIN - 1),
            ("clock", 30 * MIN),
        ],
        [["opened"], [], ["escalation:2"], [], ["sla_breach"]],
        {"state": "open", "escalation": 3, "sla_breach": True, "accident": False},
    ),
    "accepted but never on site: level 3 at 30:00, no level 2": (
        [("alert", alert()), ("accepted", 4 * MIN), ("clock", 5 * MIN), ("clock", 30 * MIN)],
        [["opened"], ["dispatch:accepted"], [], ["sla_breach"]],
        {"state": "open", "escalation": 3, "sla_breach": True, "accident": False},
    ),
    "on site skipping accepted satisfies both clocks": (
        [("alert", alert()), ("on_site", 4 * MIN), ("clock", 3 * H)],
        [["opened"], ["dispatch:on_site"], ["accident"]],
        {"state": "open", "escalation": 1, "sla_breach": False, "accident": True},
    ),
    "freed before 2 h: no accident": (
        [("alert", alert()), ("on_site", 20 * MIN), ("freed", 110 * MIN), ("clock", 3 * H)],
        [["opened"], ["dispatch:on_site"], ["dispatch:freed"], []],
        {"state": "open", "escalation": 1, "sla_breach": False, "accident": False},
    ),
    "resolved by telemetry stops every clock; the incident stays open for the firm": (
        [
            ("alert", alert()),
            ("alert", alert(state="resolved", changed=T0 + 3 * MIN)),
            ("clock", 3 * H),
            ("on_site", 3 * H + MIN),
            ("closed", 3 * H + 10 * MIN),
        ],
        [["opened"], ["resolved"], [], ["dispatch:on_site"], ["dispatch:closed"]],
        {"state": "closed", "escalation": 1, "sla_breach": False, "accident": False},
    ),
    "a late on_site does not undo the breach": (
        [("alert", alert()), ("clock", 31 * MIN), ("on_site", 33 * MIN), ("clock", 3 * H)],
        [["opened"], ["escalation:2", "sla_breach"], ["dispatch:on_site"], ["accident"]],
        {"state": "open", "escalation": 3, "sla_breach": True, "accident": True},
    ),
    "manual escalate to 2 makes the 5-min clock a no-op": (
        [
            ("alert", alert()),
            ("escalate", 2 * MIN),
            ("clock", 5 * MIN),
            ("accepted", 6 * MIN),
            ("clock", 30 * MIN),
        ],
        [["opened"], ["escalation:2"], [], ["dispatch:accepted"], ["sla_breach"]],
        {"state": "open", "escalation": 3, "sla_breach": True, "accident": False},
    ),
    "false alarm closes and stops the clocks": (
        [("alert", alert()), ("ack", MIN), ("false_alarm", 3 * MIN), ("clock", 3 * H)],
        [["opened"], ["dispatch:ack"], ["dispatch:false_alarm"], []],
        {"state": "false_alarm", "escalation": 1, "sla_breach": False, "accident": False},
    ),
    "a P2 runs no clock; escalate raises it by one": (
        [("alert", alert("elevator.door_fault", level="P2")), ("clock", 3 * H), ("escalate", 3 * H)],
        [["opened"], [], ["escalation:1"]],
        {"state": "open", "escalation": 1, "sla_breach": False, "accident": False},
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    steps, expected, final = SCENARIOS[name]
    loop = ResponseLoop()
    first = steps[0][1]
    got = run(loop, steps)
    assert got == expected
    incident = loop.get(first.alert_id)
    assert incident is not None
    assert {k: getattr(incident, k) for k in final} == final


def test_escalation_pages_add_rescue_then_fire_and_the_breach_reaches_the_regulator() -> None:
    loop = ResponseLoop()
    (opened,) = loop.on_alert(alert())
    assert kinds(opened) == ["firm", "user_unit", "centre"]
    assert opened.change_id == f"{TRAPPED}|opened"
    (level2,) = loop.on_clock(T0 + 5 * MIN)
    assert kinds(level2) == ["firm", "user_unit", "centre", "rescue"]
    assert level2.incident["escalation"] == 2
    (breach,) = loop.on_clock(T0 + 30 * MIN)
    assert kinds(breach) == ["firm", "user_unit", "centre", "rescue", "fire", "regulator"]
    timeline = [(e["at"] - T0, e["what"], e["by"], e["level"]) for e in breach.incident["timeline"]]
    assert timeline == [
        (0, "opened", "rules", 1),
        (5 * MIN, "escalated", "clock", 2),
        (30 * MIN, "escalated", "clock", 3),
        (30 * MIN, "sla_breach", "clock", 3),
    ]
    page = breach.page()
    assert page["state"] == "firing" and page["incident_state"] == "open"  # state stays the alert's
    assert page["idempotency_key"] == f"{TRAPPED}|sla_breach"
    assert page["escalation"] == 3 and page["sla_breach"] is True and len(page["timeline"]) == 4


def test_the_outbox_row_is_the_change_as_pydantic_writes_it() -> None:
    """``IncidentChange.to_json`` (orjson, the stage's hot path) must write every field exactly as
    ``model_dump_json`` does, so a change read back from the outbox is the change stored."""
    loop = ResponseLoop()
    (opened,) = loop.on_alert(alert(evidence=[{"temp_c": 41.5, "ts": T0}]))
    opened.evidence = [{"temp_c": 41.5, "ts": T0}]
    later = loop.on_clock(T0 + 30 * MIN)  # level 2, level 3 and the breach
    assert later
    for change in (opened, *later):
        assert orjson.loads(change.to_json()) == orjson.loads(change.model_dump_json())
        assert IncidentChange.model_validate_json(change.to_json()) == change
    assert set(orjson.loads(opened.to_json())) == set(IncidentChange.model_fields)  # a new field: add it


def test_each_clock_change_fires_once_however_often_the_clock_is_asked() -> None:
    loop = ResponseLoop()
    loop.on_alert(alert())
    whats = [c.what for now in range(0, 3 * H, 7 * S) for c in loop.on_clock(T0 + now)]
    assert whats == ["escalation:2", "sla_breach", "accident"]
    assert loop.on_clock(T0 + 10 * H) == []


# ---------------------------------------------------------------------------- the accident, once


def regulator_pages(changes: list[IncidentChange]) -> list[str]:
    return [c.change_id for c in changes if "regulator" in kinds(c)]


def test_trapped_2_h_is_an_accident_once_and_the_rules_follow_up_adds_no_second_regulator_page() -> None:
    loop = ResponseLoop()
    changes = loop.on_alert(alert())
    changes += loop.on_clock(T0 + 30 * MIN)  # level 2 and the breach (a regulator page of its own)
    accident = loop.on_clock(T0 + 2 * H)
    assert [c.what for c in accident] == ["accident"]
    assert "regulator" in kinds(accident[0]) and not accident[0].regulator_suppressed
    follow = loop.on_alert(trapped_2h())
    assert [c.what for c in follow] == ["opened"]
    assert "regulator" not in kinds(follow[0]) and follow[0].regulator_suppressed
    follow += loop.on_alert(trapped_2h().model_copy(update={"state": "resolved", "changed_at": T0 + 3 * H}))
    assert regulator_pages(changes + accident + follow) == [f"{TRAPPED}|sla_breach", f"{TRAPPED}|accident"]
    assert loop.take_accidents() == {accident_key("E1", T0): TRAPPED}
    assert loop.counters["regulator_pages_suppressed"] == 2


def test_the_follow_up_first_reports_the_accident_and_the_clock_then_stays_quiet() -> None:
    loop = ResponseLoop()
    loop.on_alert(alert())
    loop.on_dispatch(act("on_site", T0 + 10 * MIN))  # firm there, passengers still held
    follow = loop.on_alert(trapped_2h())  # the rules' clock ran a little ahead of ours
    assert "regulator" in kinds(follow[0])
    follow_incident = loop.get(follow[0].alert_id)
    assert follow_incident is not None and follow_incident.followup and not follow_incident.clocked
    assert follow_incident.escalation == 0  # no clock of its own: the firm on site is not escalated against
    clock = loop.on_clock(T0 + 2 * H + 5 * MIN)
    assert [c.what for c in clock] == ["accident"]  # the trapped incident records it ...
    assert "regulator" not in kinds(clock[0]) and clock[0].regulator_suppressed  # ... without a 2nd page
    assert loop.on_clock(T0 + 10 * H) == []


def test_power_loss_with_passengers_is_an_accident_rule_too() -> None:
    loop = ResponseLoop()
    loop.on_alert(alert("elevator.power_loss_occupied"))
    assert [c.what for c in loop.on_clock(T0 + 2 * H)] == ["escalation:2", "sla_breach", "accident"]


# ---------------------------------------------------------------------------- the event clock


class FakeWall:
    def __init__(self, ms: int = 0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_a_trapped_event_six_minutes_late_escalates_at_once() -> None:
    wall = FakeWall(T0 + 6 * MIN)
    clock = EventClock(wall_ms=wall, max_ahead_ms=5 * MIN)
    loop = ResponseLoop()
    clock.observe(T0 + 6 * MIN)  # the rest of the city's stream is at 6:00
    late = alert()  # opened at 0:00, reaches the stage only now
    clock.observe(late.changed_at)
    changes = loop.on_alert(late) + loop.on_clock(clock.now())
    assert [c.what for c in changes] == ["opened", "escalation:2"]
    assert changes[1].at == T0 + 5 * MIN  # stamped with its deadline: a replay gives the same timeline


def test_the_wall_clock_guard_keeps_clocks_running_on_a_silent_stream() -> None:
    wall = FakeWall(10_000)
    clock = EventClock(wall_ms=wall)
    loop = ResponseLoop()
    clock.observe(T0)
    loop.on_alert(alert())
    wall.ms += 5 * MIN - 1
    assert loop.on_clock(clock.now()) == []
    wall.ms += 1
    assert [c.what for c in loop.on_clock(clock.now())] == ["escalation:2"]


def test_event_clock_rules() -> None:
    wall = FakeWall(1_000_000)
    clock = EventClock(wall_ms=wall, max_ahead_ms=60_000)
    assert clock.now() is None
    assert clock.observe(900_000)
    wall.ms += 5_000
    assert clock.now() == 905_000
    assert not clock.observe(800_000)  # older: ignored
    assert not clock.observe(wall.ms + 60_001)  # a broken device clock far ahead: ignored, counted
    assert clock.ignored_future == 1
    assert clock.observe(902_000)  # raises high, but now never goes backwards
    assert clock.now() == 905_000
    wall.ms += 10_000
    assert clock.now() == 912_000
    saved = clock.state()
    wall.ms += 60_000  # the stage is down for a minute
    restarted = EventClock(wall_ms=wall)
    restarted.restore(saved)
    assert restarted.now() == 972_000  # the downtime counts: a crash does not pause the 96333 clock
    replay = EventClock(guard=False, wall_ms=wall)
    replay.observe(5_000)
    wall.ms += 10**9
    assert replay.now() == 5_000 and replay.observe(6_000) and replay.now() == 6_000


def test_replay_gives_the_same_changes_byte_for_byte() -> None:
    def once() -> list[bytes]:
        loop, clock = ResponseLoop(), EventClock(guard=False)
        out: list[IncidentChange] = []
        inputs: list[Any] = [
            alert(),
            alert("elevator.door_fault", level="P2", opened=T0 + MIN, device="E2"),
            act("ack", T0 + 2 * MIN),
            alert("boiler.overpressure", kind="boiler", opened=T0 + 3 * MIN, device="B1"),
            act("accepted", T0 + 40 * MIN),
            trapped_2h(),
        ]
        for item in inputs:
            if isinstance(item, Alert):
                clock.observe(item.changed_at)
                out += loop.on_alert(item)
            else:
                clock.observe(item.ts)
                out += loop.on_dispatch(item).changes
            out += loop.on_clock(clock.now())
        return [c.model_dump_json().encode() for c in out]

    first = once()
    assert first == once()
    assert len(first) == len({c for c in first})


# ---------------------------------------------------------------------------- dispatch refusals


def test_dispatch_outcomes() -> None:
    loop = ResponseLoop()
    loop.on_alert(alert())
    cases: list[tuple[Any, str, str | None]] = [
        (act("ack", T0 + MIN, alert_id="E9.elevator.trapped.1"), "refused", "unknown_alert"),
        (SimpleNamespace(alert_id=TRAPPED, action="dance", by=FIRM, ts=T0), "refused", "bad_action"),
        (act("accepted", T0 + 2 * MIN), "applied", None),
        (act("accepted", T0 + 2 * MIN), "duplicate", None),  # the same message again
        (act("ack", T0 + 3 * MIN), "refused", "out_of_order"),
        (act("accepted", T0 + 4 * MIN), "refused", "out_of_order"),  # a second accept is not a repeat
        (act("escalate", T0 + 4 * MIN, by="operator"), "applied", None),
        (act("escalate", T0 + 4 * MIN + 1, by="operator"), "applied", None),
        (act("escalate", T0 + 4 * MIN + 2, by="operator"), "refused", "bad_action"),  # already level 3
        (act("closed", T0 + 50 * MIN, by="centre"), "applied", None),
        (act("closed", T0 + 50 * MIN, by="centre"), "duplicate", None),
        (act("on_site", T0 + 51 * MIN), "refused", "after_close"),
        (act("false_alarm", T0 + 51 * MIN), "refused", "after_close"),
    ]
    for action, status, reason in cases:
        result = loop.on_dispatch(action)
        assert (result.status, result.reason) == (status, reason), action
        assert (result.changes != []) == (status == "applied")
    assert loop.counters["dispatch_duplicates"] == 2
    assert loop.counters["dispatch_refused_out_of_order"] == 2


def test_a_repeated_alert_change_is_no_change() -> None:
    loop = ResponseLoop()
    assert len(loop.on_alert(alert())) == 1
    assert loop.on_alert(alert()) == []
    resolved = alert(state="resolved", changed=T0 + MIN)
    assert len(loop.on_alert(resolved)) == 1
    assert loop.on_alert(resolved) == []
    assert loop.on_alert(alert()) == []  # an old firing record re-read after the resolution
    only_resolved = ResponseLoop()  # the stage first sees an alert already resolved: one change
    (change,) = only_resolved.on_alert(resolved)
    assert change.what == "resolved" and [e["what"] for e in change.incident["timeline"]] == [
        "opened",
        "resolved",
    ]


# ---------------------------------------------------------------------------- configuration


def test_district_override_gives_an_hour_outside_the_city() -> None:
    config = ClockConfig(on_site_s_by_district={"从化": 3600})
    loop = ResponseLoop(config)
    loop.on_alert(alert(district="从化"))
    loop.on_alert(alert(device="E2"))  # 天河: the default 30 min
    assert [c.alert_id[:2] + c.what for c in loop.on_clock(T0 + 30 * MIN)] == [
        "E1escalation:2",
        "E2escalation:2",
        "E2sla_breach",
    ]
    assert loop.on_clock(T0 + 60 * MIN - 1) == []
    assert [c.what for c in loop.on_clock(T0 + 60 * MIN)] == ["sla_breach"]


def test_boiler_p1_runs_the_clock_with_its_own_receivers() -> None:
    loop = ResponseLoop()
    boiler = alert("boiler.overpressure", kind="boiler", device="B1")
    (opened,) = loop.on_alert(boiler)
    assert kinds(opened) == ["firm", "user_unit"]  # no 96333 for a boiler
    (level2,) = loop.on_clock(T0 + 5 * MIN)
    assert level2.what == "escalation:2" and kinds(level2) == ["firm", "user_unit"]  # no rescue station
    (breach,) = loop.on_clock(T0 + 30 * MIN)
    assert kinds(breach) == ["firm", "user_unit", "fire", "regulator"]
    assert loop.on_clock(T0 + 3 * H) == []  # not a trapped rule: no accident
    p2 = alert("boiler.high_flue_gas", level="P2", kind="boiler", device="B2")
    loop.on_alert(p2)
    assert loop.on_clock(T0 + 10 * H) == []


def test_config_from_settings_and_its_checks() -> None:
    from sesmon.runtime.settings import Settings

    config = ClockConfig.from_settings(
        Settings(
            alerts_accept_s=60, alerts_on_site_s_by_district={"从化": 3600}, alerts_clock_levels=["P1", "P2"]
        )
    )
    assert (config.accept_s, config.on_site_for("从化"), config.on_site_for("天河")) == (60, 3600, 1800)
    assert config.clock_levels == {"P1", "P2"}
    with pytest.raises(ValueError):
        ClockConfig(accept_s=600, on_site_s=300)


def test_a_custom_resolver_decides_receivers() -> None:
    def resolver(incident: Incident) -> list[Receiver]:
        out = [Receiver(kind="firm", id=incident.firm_id), Receiver(kind="firm", id=incident.firm_id)]
        if incident.escalation >= 2:
            out.append(Receiver(kind="rescue", id="GZ-TH-1"))
        return out

    loop = ResponseLoop(resolver=resolver)
    assert [kinds(c) for c in loop.on_alert(alert())] == [["firm"]]  # a receiver listed twice: once
    assert [r.id for c in loop.on_clock(T0 + 5 * MIN) for r in c.receivers] == ["F001", "GZ-TH-1"]


# ---------------------------------------------------------------------------- the incident's JSON


def test_incident_json_round_trip_and_version() -> None:
    loop = ResponseLoop()
    loop.on_alert(alert())
    loop.on_dispatch(act("ack", T0 + MIN))
    loop.on_clock(T0 + 30 * MIN)
    incident = loop.get(TRAPPED)
    assert incident is not None
    again = Incident.from_json(incident.to_json())
    assert again == incident and again.version == 1
    newer = incident.model_copy(update={"version": 99})
    with pytest.raises(ValueError, match="newer"):
        Incident.from_json(newer.to_json())
    clocks = incident.clocks(T0 + 31 * MIN)
    assert clocks == {"age_s": 31 * 60, "accept_in_s": None, "on_site_in_s": None, "accident_in_s": 89 * 60}


# ---------------------------------------------------------------------------- the durable store


def reopen(store: IncidentStore) -> IncidentStore:
    store.close()
    return IncidentStore(store.path)


def test_store_restart_gives_back_the_same_incidents_and_the_clock_carries_on(tmp_path: Path) -> None:
    store = IncidentStore.in_data_dir(tmp_path)
    loop = ResponseLoop(lookup=store.get)
    clock = EventClock(guard=False)
    changes = loop.on_alert(alert()) + loop.on_alert(alert("elevator.door_fault", level="P2", device="E2"))
    changes += loop.on_dispatch(act("ack", T0 + MIN)).changes
    clock.observe(T0 + 6 * MIN)
    changes += loop.on_clock(clock.now())
    closing = alert("elevator.door_fault", level="P2", device="E3")
    changes += loop.on_alert(closing)
    changes += loop.on_dispatch(act("closed", T0 + 2 * MIN, alert_id=closing.alert_id)).changes
    store.commit(loop, changes, clock.state())
    before = {i.alert_id: i for i in [*loop.open.values()]}

    store = reopen(store)  # the stage restarts
    assert {i.alert_id: i for i in store.load_open()} == before
    assert [i.alert_id for i in store.list_open()] == [TRAPPED, f"E2.elevator.door_fault.{T0}"]
    assert store.count() == 3 and store.count(open_only=True) == 2
    closed = store.get(closing.alert_id)
    assert closed is not None and closed.state == "closed"  # kept: the record
    assert [c.change_id for c in store.pending_changes()] == [c.change_id for c in changes]

    loop2 = ResponseLoop(
        incidents=store.load_open(), reported_accidents=store.accident_keys(), lookup=store.get
    )
    clock2 = EventClock(guard=False)
    clock2.restore(store.clock_state())
    assert clock2.now() == T0 + 6 * MIN
    assert loop2.on_clock(clock2.now()) == []  # level 2 already happened: not again
    assert loop2.on_dispatch(act("ack", T0 + MIN)).status == "duplicate"  # applied keys survived
    assert loop2.on_dispatch(act("on_site", T0 + 3 * MIN, alert_id=closing.alert_id)).reason == "after_close"
    assert [c.what for c in loop2.on_clock(T0 + 30 * MIN)] == ["sla_breach"]


def test_store_outbox_and_accident_keys(tmp_path: Path) -> None:
    store = IncidentStore.in_data_dir(tmp_path)
    loop = ResponseLoop(lookup=store.get)
    changes = loop.on_alert(alert()) + loop.on_clock(T0 + 2 * H)
    store.commit(loop, changes, None)
    store.commit(loop, changes[:1], None)  # a change re-made after a crash: stored once
    assert len(store.pending_changes()) == 4
    store.mark_delivered([c.change_id for c in changes[:3]])
    assert [c.what for c in store.pending_changes()] == ["accident"]
    assert store.pending_changes()[0] == changes[3]
    store = reopen(store)
    assert store.accident_keys() == {accident_key("E1", T0): TRAPPED}
    loop2 = ResponseLoop(
        incidents=store.load_open(), reported_accidents=store.accident_keys(), lookup=store.get
    )
    (follow,) = loop2.on_alert(trapped_2h())  # after the restart: still no second regulator page
    assert follow.regulator_suppressed and "regulator" not in kinds(follow)


def test_a_reader_beside_the_running_stage(tmp_path: Path) -> None:
    store = IncidentStore.in_data_dir(tmp_path)
    loop = ResponseLoop()
    store.commit(loop, loop.on_alert(alert()), None)
    reader = IncidentStore.in_data_dir(tmp_path, readonly=True)
    assert [i.alert_id for i in reader.list_open()] == [TRAPPED]
    with pytest.raises(sqlite3.OperationalError):
        reader.save(reader.list_open(), [])
    store.commit(loop, loop.on_dispatch(act("closed", T0 + MIN)).changes, None)
    assert reader.list_open() == []
    reader.close()
    store.close()
