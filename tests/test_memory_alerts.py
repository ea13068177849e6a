"""The alerts stage keeps in memory only the incidents whose clocks run; the store has the rest.

Why: nothing closes most incidents (a P3, a P1 the rules resolved and no responder closed), and the
stage held every incident it ever opened, ≈3 KB of pydantic models each: 13,000 incidents, +44 MB in
7 minutes of bench/e2e.py (``SESMON_TRACEMALLOC=1``). Pure logic on device time with the stage's
SQLite store in a temporary directory.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from alerts.incident_store import IncidentStore
from alerts.incidents import DUE_SLACK, IncidentChange, ResponseLoop
from sesmon.contract.schemas import Alert, DispatchAction

T0 = 1_795_300_000_000  # a fixed device time
S = 1_000
DOOR = "elevator.door_open_while_running"  # P1: runs the clock until the rules resolve it


def alert(rule: str, device: str, *, level: str = "P1", state: str = "firing", changed: int = 0) -> Alert:
    return Alert(
        alert_id=f"{device}.{rule}.{T0}",
        rule=rule,
        level=level,  # type: ignore[arg-type]
        device_id=device,
        kind="elevator",
        district="天河",
        firm_id="F001",
        user_unit_id="U01",
        opened_at=T0,
        changed_at=changed or T0,
        state=state,  # type: ignore[arg-type]
    )


def fired_and_resolved(loop: ResponseLoop, devices: range, prefix: str = "E") -> list[IncidentChange]:
    changes: list[IncidentChange] = []
    for n in devices:
        changes += loop.on_alert(alert(DOOR, f"{prefix}{n}"))
        changes += loop.on_alert(alert(DOOR, f"{prefix}{n}", state="resolved", changed=T0 + S))
    return changes


def test_idle_incidents_leave_memory_and_come_back_from_the_store(tmp_path: Path) -> None:
    store = IncidentStore.in_data_dir(tmp_path)
    loop = ResponseLoop(lookup=store.get, keep_idle=False)
    changes = fired_and_resolved(loop, range(500))  # resolved by the rules: clocks stopped
    for n in range(100):  # never clocked
        changes += loop.on_alert(alert("elevator.door_fault", f"D{n}", level="P3"))
    running = [alert(DOOR, f"R{n}") for n in range(3)]  # still firing: clocks run
    for a in running:
        changes += loop.on_alert(a)
    assert len(changes) == 1103
    store.commit(loop, changes, None)

    assert set(loop.open) == {a.alert_id for a in running}
    assert len(loop.idle) == 600
    census = loop.census()
    assert census == {"open": 603, "by_escalation": {"level_1": 503, "level_0": 100}, "sla_breaches": 0}
    assert store.count(open_only=True) == 603
    assert len(loop._due) <= 4 * len(loop.open) + DUE_SLACK  # the stopped clocks' deadlines are gone

    # the clock only pages the incidents whose clocks run
    assert sorted(c.alert_id for c in loop.on_clock(T0 + 300 * S)) == sorted(a.alert_id for a in running)

    # a responder closes an idle one: it comes back from the store and leaves the census
    first = f"E0.{DOOR}.{T0}"
    result = loop.on_dispatch(DispatchAction(alert_id=first, action="closed", by="firm-F001", ts=T0 + 9 * S))
    assert result.status == "applied" and [c.what for c in result.changes] == ["dispatch:closed"]
    store.commit(loop, result.changes, None)
    assert first not in loop.idle and loop.census()["open"] == 602
    stored = store.get(first)
    assert stored is not None and stored.state == "closed"
    # a re-read alert record of an idle incident is a repeat: nothing to page
    assert loop.on_alert(alert(DOOR, "E1", state="resolved", changed=T0 + S)) == []

    # a restart takes back only the running ones into memory, the others as census entries
    again = ResponseLoop(incidents=store.load_open(), lookup=store.get, keep_idle=False)
    assert set(again.open) == set(loop.open) and again.idle == loop.idle


def test_an_idle_incident_costs_a_census_entry_not_its_model(tmp_path: Path) -> None:
    store = IncidentStore.in_data_dir(tmp_path)
    loop = ResponseLoop(lookup=store.get, keep_idle=False)
    store.commit(loop, fired_and_resolved(loop, range(50), prefix="W"), None)  # warm: imports, caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        changes = fired_and_resolved(loop, range(1000))
        store.commit(loop, changes, None)
        del changes
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(loop.idle) == 1050 and not loop.open
    assert held < 1000 * 400, f"{held / 1000:,.0f} bytes held per resolved incident (its model: ≈3,000)"
