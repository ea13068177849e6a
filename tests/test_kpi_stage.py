"""The ``kpi`` stage: live safety KPIs from a registry and records of the test's own.

Pure (no Kafka): every figure of the city and district rows against hand-computed values,
the cell sums against ``metrics.safety_kpis`` (the reference definitions) for every scope,
records folded twice counting once, a restart reading the SQLite state back, a late report
for last year re-emitting last year's ``ytd`` row, bad records counted and skipped.

With real Tansu (``kafka_server``): records delivered twice through Kafka count once, a
stage restart neither recounts nor loses, a late report for last year reaches the ``kpi``
stream as that year's closing row, and the store stage's point maker turns a ``kpi`` record
into a ``safety_kpi`` line.

"Now" is event time (the worker's watermark on ``pipeline``: 2025-07-01 00:00 Guangzhou);
nothing here depends on the wall clock's date.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from kpi.inputs import BadRecord, KpiState, parse_record
from kpi.rows import EXTRA_FIELDS, KpiRow, compute_rows
from kpi.stage import KpiStage
from metrics import Accident, Incident, Inspection, Scope, safety_kpis
from metrics.targets import TARGETS
from metrics.windows import kpi_windows
from sesmon.app.board import BoardState, render
from sesmon.contract.groups import encode_group
from sesmon.contract.registry import Registry, Unit
from sesmon.runtime.kafka import make_producer, make_reader
from sesmon.runtime.settings import Settings
from store.points import PointMaker
from tests.pipeline_support import wait_until

GZ = timezone(timedelta(hours=8))
MIN = 60_000
DAY = 86_400_000


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=GZ).timestamp() * 1000)  # type: ignore[misc]


NOW = ms(2025, 7, 1)  # the worker's watermark: Guangzhou midnight starting 1 July 2025


def registry() -> Registry:
    """150 elevators in use (E000-E099 天河, E100-E149 越秀; even F1, odd F2), one scrapped (E150),
    two boilers in use (B1, B2: 天河, F3) → 152 units in use. E000-E009 were due an inspection
    on 2025-06-01 (overdue as of now), every other unit on 2026-01-01."""
    units = [
        Unit(
            device_id=f"E{i:03d}",
            kind="elevator",
            district="天河" if i < 100 else "越秀",
            firm_id="F1" if i % 2 == 0 else "F2",
            next_inspection_due=date(2025, 6, 1) if i < 10 else date(2026, 1, 1),
        )
        for i in range(150)
    ]
    units.append(Unit(device_id="E150", kind="elevator", district="天河", firm_id="F1", status="scrapped"))
    units += [
        Unit(
            device_id=f"B{i}",
            kind="boiler",
            district="天河",
            firm_id="F3",
            next_inspection_due=date(2026, 1, 1),
        )
        for i in (1, 2)
    ]
    return Registry({u.device_id: u for u in units})


# --------------------------------------------------------------------------- records as the pipeline has them


def report(kind: str, body: dict[str, Any]) -> tuple[str, bytes]:
    """One report envelope in a grouped record (ingest's fast path packs reports in arrays)."""
    env = {
        "type": "report",
        "report": kind,
        "device_id": body.get("device_id"),
        "mqtt_topic": f"sesmon/v1/reports/{kind}",
        "received_ms": body["ts"],
        "ts": body["ts"],
        "body": body,
    }
    return "reports", encode_group([orjson.dumps(env)])


def accident(report_id: str, device_id: str, ts: int, deaths: int = 0) -> tuple[str, bytes]:
    body = {"report_id": report_id, "device_id": device_id, "ts": ts, "grade": "general"}
    return report("accident", body | {"deaths": deaths, "serious_injuries": 0})


def alert(device_id: str, opened: int, changed: int, state: str = "firing") -> tuple[str, bytes]:
    rule = "elevator.trapped"
    record = {
        "alert_id": f"{device_id}.{rule}.{opened}",
        "rule": rule,
        "level": "P1",
        "device_id": device_id,
        "kind": "elevator",
        "opened_at": opened,
        "changed_at": changed,
        "state": state,
    }
    return "alerts", orjson.dumps(record)


def dispatch(device_id: str, opened: int, action: str, ts: int) -> tuple[str, bytes]:
    alert_id = f"{device_id}.elevator.trapped.{opened}"
    body = {"alert_id": alert_id, "action": action, "by": "firm-F1", "ts": ts}
    env = {
        "type": "dispatch",
        "alert_id": alert_id,
        "mqtt_topic": "x",
        "received_ms": ts,
        "ts": ts,
        "body": body,
    }
    return "dispatch", orjson.dumps(env)


def hazard(hid: str, device_id: str, grade: str, opened: int, status: str, **extra: Any) -> tuple[str, bytes]:
    record = {
        "hazard_id": hid,
        "device_id": device_id,
        "kind": "elevator",
        "district": "天河",
        "firm_id": "F1" if int(device_id[1:]) % 2 == 0 else "F2",
        "source": "rule",
        "grade": grade,
        "status": status,
        "opened_at": opened,
        "updated_at": extra.pop("updated_at", opened),
        "deadline": opened + 30 * DAY,
        "supervision": "none",
        "history": [{"action": "opened"}],
        **extra,
    }
    return "hazards", orjson.dumps(record)


def status(device_id: str, online: bool, ts: int) -> tuple[str, bytes]:
    body = {"device_id": device_id, "ts": ts, "seq": 1, "status": "online" if online else "offline"}
    env = {"type": "status", "kind": "elevator", "device_id": device_id, "mqtt_topic": "x"}
    env |= {"received_ms": ts, "ts": ts, "body": body}
    return "status", encode_group([orjson.dumps(env)])


def watermark(event_ms: int) -> tuple[str, bytes]:
    return "pipeline", orjson.dumps({"stage": "streams", "at": 0, "event_time_ms": event_ms})


def scenario() -> list[tuple[str, bytes]]:
    """Hand-computed below (city, as of 2025-07-01 00:00, elevators 150 in use, all units 152)."""
    out = [
        # accidents: 3 on elevators this year (deaths 1 + 0 + 2), 1 on a boiler last December
        accident("R1", "E001", ms(2025, 3, 1), deaths=1),
        accident("R2", "E002", ms(2025, 5, 1)),
        accident("R3", "E101", ms(2025, 6, 15), deaths=2),
        accident("R4", "B1", ms(2024, 12, 1)),
        # trapped: E003 on site at 20 min, freed at 35; E004 a false alarm; E005 on site at 50 min
        alert("E003", ms(2025, 6, 1, 10), ms(2025, 6, 1, 10)),
        dispatch("E003", ms(2025, 6, 1, 10), "on_site", ms(2025, 6, 1, 10, 20)),
        dispatch("E003", ms(2025, 6, 1, 10), "freed", ms(2025, 6, 1, 10, 35)),
        alert("E003", ms(2025, 6, 1, 10), ms(2025, 6, 1, 10, 40), "resolved"),
        alert("E004", ms(2025, 6, 2, 10), ms(2025, 6, 2, 10)),
        dispatch("E004", ms(2025, 6, 2, 10), "false_alarm", ms(2025, 6, 2, 10, 5)),
        alert("E005", ms(2025, 6, 3, 10), ms(2025, 6, 3, 10)),
        dispatch("E005", ms(2025, 6, 3, 10), "on_site", ms(2025, 6, 3, 10, 50)),
        dispatch("E005", ms(2025, 6, 3, 10), "freed", ms(2025, 6, 3, 11)),
        # hazards: two major (one verified closed on time, one open), one general open
        hazard("HZ.E006.rule.1", "E006", "major", ms(2025, 2, 1), "reported"),
        hazard(
            "HZ.E006.rule.1",
            "E006",
            "major",
            ms(2025, 2, 1),
            "closed",
            updated_at=ms(2025, 3, 1),
            verified_at=ms(2025, 3, 1),
            closed_at=ms(2025, 3, 1),
            closed_on_time=True,
        ),
        hazard("HZ.E007.rule.2", "E007", "major", ms(2025, 4, 1), "reported"),
        hazard("HZ.E008.rule.3", "E008", "general", ms(2025, 6, 20), "reported"),
        # inspections: E000 passed on 20 June (due again 2026): 9 of E000-E009 remain overdue
        report(
            "inspection",
            {"device_id": "E000", "ts": ms(2025, 6, 20), "result": "pass", "next_due": "2026-06-20"},
        ),
        # terminals: E000-E029 came online, E000 later went offline → 29 online
        *(status(f"E{i:03d}", True, ms(2025, 6, 30, 8)) for i in range(30)),
        status("E000", False, ms(2025, 6, 30, 9)),
        watermark(NOW),
    ]
    # maintenance: E010 visited every 10 days from 2024-06-25 to 2025-06-30: on time all year
    day = date(2024, 6, 25)
    while day <= date(2025, 6, 30):
        ts = ms(day.year, day.month, day.day, 9)
        out.append(
            report("maintenance", {"device_id": "E010", "ts": ts, "firm_id": "F1", "kind": "routine_15d"})
        )
        day += timedelta(days=10)
    return out


def facts_of(records: list[tuple[str, bytes]]) -> list[Any]:
    return [fact for stream, value in records for fact in parse_record(stream, value)]


def by_series(rows: list[KpiRow]) -> dict[tuple[str, str, str, str], KpiRow]:
    """The latest rows by series (closing rows of a past year share the ``ytd`` series, timed earlier)."""
    latest = max((r.time_ms for r in rows), default=0)
    return {tuple(r.tags().values()): r for r in rows if r.time_ms == latest}  # type: ignore[misc]


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[KpiStage]:
    s = KpiStage(Settings(data_dir=tmp_path / "state"), registry(), consume=False)
    yield s
    s.state.close()


# --------------------------------------------------------------------------- pure


def test_rows_match_hand_computed_figures(stage: KpiStage) -> None:
    stage.fold(facts_of(scenario()))
    rows = by_series(stage.emit())
    city = rows[("city", "city", "elevator", "365d")].fields
    assert city["units_in_use"] == 150 and city["accidents"] == 3 and city["deaths"] == 3
    assert city["accidents_per_10k"] == 200.0  # 3 / 150 × 10,000
    assert city["deaths_per_10k"] == 200.0
    # trapped: E003 and E005 (E004 was a false alarm), annualised over 365 days: 2 / 150 × 10k
    assert city["trapped"] == 2 and city["trapped_false_alarms"] == 1
    assert city["trapped_per_10k"] == pytest.approx(133.3333, abs=1e-3)
    # rescue: arrivals 20 and 50 min → mean/median 35, P90 = 20 + 0.9 × 30 = 47, share ≤ 30 min 1/2
    assert city["rescue_alarms"] == 2 and city["rescue_false_alarms"] == 1 and city["rescue_arrived"] == 2
    assert city["arrival_median_min"] == 35.0 and city["arrival_p90_min"] == pytest.approx(47.0)
    assert city["arrival_within_30min"] == 1 and city["arrival_share_within_30min"] == 0.5
    assert city["freeing_median_min"] == 12.5  # freed 15 (E003) and 10 (E005) min after arrival
    # hazards: 2 major identified this year, 1 verified closed → 50 %; open: H2 (major) and H3
    assert city["major_identified"] == 2 and city["major_closed"] == 1 and city["major_closed_on_time"] == 1
    assert city["major_rectification_rate"] == 0.5
    assert city["hazards_open"] == 2 and city["hazards_open_major"] == 1
    # inspections: E001-E009 still past their 2025-06-01 due date
    assert city["overdue_inspections"] == 9 and city["overdue_rate"] == pytest.approx(9 / 150)
    assert city["maintenance_on_time"] == 1 and city["maintenance_elevators"] == 150
    assert city["units_online"] == 29 and city["online_rate"] == pytest.approx(29 / 150)
    # every unit kind: R4 on a boiler last December is in the trailing year, not in this year
    everything = rows[("city", "city", "all", "365d")].fields
    assert everything["accidents"] == 4 and everything["units_in_use"] == 152
    assert everything["accidents_per_10k"] == pytest.approx(4 / 152 * 10_000)
    assert rows[("city", "city", "all", "ytd")].fields["accidents"] == 3
    boilers = rows[("city", "city", "boiler", "365d")].fields
    assert boilers["accidents_per_10k"] == 5000.0 and "trapped_per_10k" not in boilers  # no elevators
    # districts: 天河 R1, R2 over 100 elevators; 越秀 R3 (2 deaths) over 50
    tianhe = rows[("district", "天河", "elevator", "365d")].fields
    assert tianhe["accidents"] == 2 and tianhe["accidents_per_10k"] == 200.0
    yuexiu = rows[("district", "越秀", "elevator", "ytd")].fields
    assert yuexiu["accidents_per_10k"] == 200.0 and yuexiu["deaths_per_10k"] == 400.0
    assert rows[("firm", "F2", "elevator", "365d")].fields["accidents"] == 2  # E001, E101
    assert all(r.time_ms == NOW for r in rows.values())
    # every field is an int count or a float, never None (InfluxDB keeps a field's type)
    for row in rows.values():
        assert all(
            type(v) in (int, float) and not (type(v) is float and math.isnan(v)) for v in row.fields.values()
        )
        assert not isinstance(row.fields.get("accidents_per_10k", 0.0), int)
    assert set(EXTRA_FIELDS) <= set(city)


def test_cell_sums_equal_the_reference_definitions_for_every_scope(stage: KpiStage) -> None:
    """The stage adds cells up; ``metrics.safety_kpis`` computes each scope from scratch: same rows."""
    stage.fold(facts_of(scenario()))
    rows = by_series(stage.emit())
    state = stage.state
    false_alarms = state.false_alarms()
    incidents = [
        Incident(i.device_id, i.alarm_ms, i.cleared_ms, i.alert_id, i.alert_id in false_alarms)
        for i in state.incidents.values()
    ]
    inspections: list[Inspection] = [i for by_ts in state.inspections.values() for i in by_ts.values()]
    reference = safety_kpis(
        registry(),
        NOW + 1,
        accidents=list(state.accidents.values()),
        incidents=incidents,
        hazards=list(state.hazards.values()),
        inspections=inspections,
    )
    assert len(reference) == len(rows) > 20
    for kpi in reference:
        row = rows[tuple(kpi.tags().values())]  # type: ignore[index]
        assert {k: row.fields.get(k) for k in kpi.fields()} == pytest.approx(kpi.fields()), kpi.tags()


def visits(device_id: str, first: date, last: date, every_days: int) -> list[tuple[str, bytes]]:
    out, day = [], first
    while day <= last:
        ts = ms(day.year, day.month, day.day, 9)
        out.append(
            report("maintenance", {"device_id": device_id, "ts": ts, "firm_id": "F1", "kind": "routine_15d"})
        )
        day += timedelta(days=every_days)
    return out


def day_of(ts: int) -> date:
    return datetime.fromtimestamp(ts / 1000, GZ).date()


def visit_at(device_id: str, ts: int) -> tuple[str, bytes]:
    return report("maintenance", {"device_id": device_id, "ts": ts, "firm_id": "F1", "kind": "routine_15d"})


def test_cached_rows_equal_rows_from_scratch_as_event_time_moves(stage: KpiStage) -> None:
    """The stage reuses a cell's figures until an input crosses a window edge; stepping now
    through eight months (small and large steps, new records on the way) must give, every
    time, exactly the rows a computation from scratch gives."""
    history = scenario()
    history += visits("E011", date(2024, 7, 1), date(2025, 5, 1), 14)  # stops: late 15 days on
    history += visits("E012", date(2024, 8, 1), date(2025, 6, 30), 10)  # on time once the start passes
    stage.fold(facts_of(history))
    rng = random.Random(7)
    now = NOW
    news = [
        lambda t: status(f"E{rng.randrange(30):03d}", rng.random() < 0.5, t),
        lambda t: accident(f"N{t}", f"E{rng.randrange(150):03d}", t - rng.randrange(30) * DAY),
        lambda t: hazard(
            "HZ.E007.rule.2", "E007", "major", ms(2025, 4, 1), "closed", updated_at=t, closed_at=t
        ),
        lambda t: alert(f"E{rng.randrange(150):03d}", t - 3_600_000, t - 3_600_000),
        lambda t: dispatch("E003", ms(2025, 6, 1, 10), "on_site", t),  # a later arrival changes nothing
        lambda t: alert("E020", t - 20 * MIN, t - 20 * MIN),  # no one on site: late once 30 min pass
        lambda t: dispatch("E020", t - 5 * DAY, "on_site", t),
        lambda t: report(  # falls due in two days: overdue from the third
            "inspection",
            {
                "device_id": f"E{rng.randrange(150):03d}",
                "ts": t,
                "result": "pass",
                "next_due": str(day_of(t + 2 * DAY)),
            },
        ),
    ]
    for step in range(60):
        now += rng.choice((1, 59_999, 3_600_000, DAY, 5 * DAY + 7, 11 * DAY))
        records = [
            watermark(now),
            visit_at("E012", now),
        ]
        if step % 4 == 0:  # gaps of up to 44 days: E013 crosses the 15-day edge both ways
            records.append(visit_at("E013", now))
        if step % 3 == 0:
            records.append(rng.choice(news)(now))
        stage.fold(facts_of(records))
        stage._full = True
        cached = {k: r.fields for k, r in by_series(stage.emit()).items()}
        assert stage.state.event_time_ms == now
        fresh = compute_rows(stage.fleet, stage.state, stage.fleet.scopes, kpi_windows(now + 1), time_ms=now)
        assert cached == {k: r.fields for k, r in by_series(fresh).items()}, (step, now)
    # a tick with nothing new and no edge crossed recomputes no cell at all
    computed = stage.computer.computed
    stage.fold(facts_of([watermark(now + 1)]))
    stage._full = True
    assert len(stage.emit()) == len(stage.fleet.scopes) * 2 and stage.computer.computed == computed


def test_records_folded_twice_count_once(stage: KpiStage) -> None:
    facts = facts_of(scenario())
    stage.fold(facts)
    once = {k: r.fields for k, r in by_series(stage.emit()).items()}
    folded = stage.counters["folded"]
    stage.fold(facts)
    assert stage.counters["folded"] == folded  # nothing new
    assert stage.counters["repeats"] >= folded
    stage._full = True
    assert {k: r.fields for k, r in by_series(stage.emit()).items()} == once


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = KpiStage(Settings(data_dir=tmp_path), registry(), consume=False)
    first.fold(facts_of(scenario()))
    before = {k: r.fields for k, r in by_series(first.emit()).items()}
    first.fold(facts_of([accident("R9", "E120", ms(2025, 6, 30))]))  # folded, its rows not yet emitted
    first.state.close()
    second = KpiStage(Settings(data_dir=tmp_path), registry(), consume=False)
    assert second.state.event_time_ms == NOW
    assert ("city", "city", "elevator", 0) in second.state.pending  # still owed after the "crash"
    after = by_series(second.emit())
    assert after[("city", "city", "elevator", "365d")].fields["accidents"] == 4
    second.fold(facts_of(scenario()))  # the whole history again (offsets lost): nothing moves
    assert second.counters["folded"] == 0
    assert before[("city", "city", "all", "ytd")]["accidents"] == 3
    second.state.close()


def test_a_late_report_for_last_year_re_emits_last_years_ytd_row(stage: KpiStage) -> None:
    stage.fold(facts_of(scenario()))
    stage.emit()
    stage.fold(facts_of([accident("R7", "E102", ms(2024, 3, 1), deaths=1)]))  # over a year ago
    rows = stage.emit()
    closing = [r for r in rows if r.window.start_ms == ms(2024, 1, 1)]
    assert {r.scope for r in closing} == {
        Scope.city("elevator"),
        Scope.city(),
        Scope.district("越秀", "elevator"),
        Scope.district("越秀"),
        Scope.firm("F1", "elevator"),
        Scope.firm("F1"),
    }
    city_2024 = next(r for r in closing if r.scope == Scope.city("elevator"))
    assert city_2024.tags()["window"] == "ytd" and city_2024.time_ms == ms(2025, 1, 1) - 1
    assert city_2024.fields["accidents"] == 1 and city_2024.fields["deaths"] == 1
    assert "online_rate" not in city_2024.fields  # a closed year has no "now"
    city_now = next(r for r in rows if r.scope == Scope.city("elevator") and r.window.label == "365d")
    assert city_now.fields["accidents"] == 3  # 2024-03-01 is outside the trailing year
    assert stage.emit() == []  # nothing owed any more


def test_crossing_into_a_new_year_emits_every_scopes_closing_row(stage: KpiStage) -> None:
    stage.fold(facts_of([watermark(ms(2024, 12, 31, 23)), accident("R1", "E001", ms(2024, 12, 31, 22))]))
    stage.emit()
    stage.fold(facts_of([watermark(ms(2025, 1, 1, 0, 30))]))
    rows = stage.emit()
    closing = [r for r in rows if r.time_ms == ms(2025, 1, 1) - 1]
    assert {r.scope for r in closing} == set(stage.fleet.scopes)
    assert by_series(closing)[("city", "city", "elevator", "ytd")].fields["accidents"] == 1
    assert by_series(rows)[("city", "city", "elevator", "365d")].time_ms == ms(2025, 1, 1, 0, 30)


def test_bad_records_are_counted_and_never_stop_the_stage(stage: KpiStage) -> None:
    for stream, value in [
        ("reports", b"not json"),
        ("reports", b"42"),
        ("alerts", b'{"alert_id": "x"}'),
        ("hazards", b'{"hazard_id": "HZ.1", "grade": "major"}'),
        (
            "dispatch",
            orjson.dumps({"type": "dispatch", "body": {"alert_id": "nodots", "action": "ack", "ts": 1}}),
        ),
        (
            "status",
            encode_group([b'{"type": "status", "device_id": "E1", "body": {"status": "maybe", "ts": 1}}']),
        ),
        ("reports", report("accident", {"report_id": "R", "device_id": "E001", "ts": "yesterday"})[1]),
    ]:
        with pytest.raises(BadRecord):
            parse_record(stream, value)
    # the worker's deadman ticks share the status stream: neither bad nor a status
    assert parse_record("status", encode_group([b'{"type": "tick", "device_id": "E1", "now_ms": 5}']))[
        0
    ].what == ("ignored")
    assert parse_record("pipeline", b'{"stage": "ingest", "at": 5}')[0].what == "ignored"
    stage.fold(facts_of(scenario()))
    assert stage.emit()


def test_a_clock_far_in_the_future_does_not_move_now(stage: KpiStage) -> None:
    stage.fold(facts_of([watermark(NOW), accident("R1", "E001", ms(2099, 1, 1))]))
    assert stage.state.event_time_ms == NOW and stage.counters["future_event_time"] == 1


def test_state_reloads_every_input_kind(tmp_path: Path) -> None:
    state = KpiState(tmp_path / "s.sqlite")
    facts = facts_of(scenario())
    with state.batch():
        for fact in facts:
            state.apply(fact)
    expected = (
        state.accidents,
        state.incidents,
        state.actions,
        state.visits,
        state.inspections,
        state.hazards,
    )
    expected_status = state.status
    state.close()
    again = KpiState(tmp_path / "s.sqlite")
    assert (
        again.accidents,
        again.incidents,
        again.actions,
        again.visits,
        again.inspections,
        again.hazards,
    ) == (expected)
    assert again.status == expected_status
    assert isinstance(next(iter(again.accidents.values())), Accident)
    again.close()


def test_targets_are_the_plans() -> None:
    lines = {t.field: t for t in TARGETS}
    assert lines["accidents_per_10k"].bound == 0.20 and lines["deaths_per_10k"].bound == 0.19
    assert lines["accidents_per_10k"].met(0.19) and not lines["accidents_per_10k"].met(0.20)
    assert lines["major_rectification_rate"].met(1.0) and not lines["major_rectification_rate"].met(0.99)
    assert lines["arrival_p90_min"].met(30.0) and lines["arrival_p90_min"].met(None) is None


def test_the_store_writes_a_kpi_record_as_a_safety_kpi_point(stage: KpiStage) -> None:
    stage.fold(facts_of(scenario()))
    row = by_series(stage.emit())[("district", "天河", "elevator", "365d")]
    (line,) = PointMaker().lines("kpi", orjson.dumps(row.record()))
    assert line.startswith("safety_kpi,kind=elevator,scope=district,scope_id=天河,window=365d ")
    # a float is written without the "i" of an integer (influxdb-client's Point writes 200.0 as 200)
    assert "accidents=2i," in line and "accidents_per_10k=200," in line and line.endswith(f" {NOW}")


def test_the_board_shows_the_city_against_the_targets(stage: KpiStage) -> None:
    stage.fold(facts_of(scenario()))
    board = BoardState()
    for row in stage.emit():
        board.on_kpi(row.record())
    board.on_kpi(
        {"tags": {"scope": "city", "kind": "all", "window": "365d"}, "fields": {}, "time": 1}
    )  # older
    lines = {row["field"]: row for row in board.city_kpis()}
    assert (
        lines["accidents_per_10k"]["value"] == pytest.approx(4 / 152 * 10_000)
        and not lines["accidents_per_10k"]["met"]
    )
    assert lines["major_rectification_rate"]["value"] == 0.5 and lines["trapped_per_10k"]["target"] is None
    console = Console(record=True, width=160)
    console.print(render(board))
    text = console.export_text()
    assert "city safety KPIs, trailing 365 days as of 2025-07-01 00:00" in text
    assert "accidents / 10k units" in text and "< 0.200 (Shanxi 0.38)" in text and "NOT MET" in text
    assert "rescue arrival P90 (min)" in text and "47.00" in text and "≥ 100.0 %" in text


# --------------------------------------------------------------------------- through Kafka (real Tansu)


class Running:
    """A kpi stage on its own thread, like ``sesmon kpi``."""

    def __init__(self, settings: Settings) -> None:
        self.stage = KpiStage(settings, registry())
        self.thread = threading.Thread(target=self.stage.run_forever, name="kpi-stage", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stage.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


def produce(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = make_producer(settings)
    for stream, value in records:
        producer.produce(settings.topic(stream), value=value, key=b"k")
    assert producer.flush(30) == 0


def wait_for_row(
    reader: Any,
    seen: dict[tuple[Any, ...], dict[str, Any]],
    match: Callable[[dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    """Read the ``kpi`` stream until a row satisfies ``match`` (every row read kept in ``seen``)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in reader.consume(1000, 0.2):
            if not record.error():
                row = orjson.loads(record.value())
                seen[(*row["tags"].values(), row["time"])] = row  # the latest version of each point
        found = [row for row in seen.values() if match(row)]
        if found:
            return found[0]
    raise AssertionError(f"no kpi row {what} within 60 s")


def city_elevator_365d(accidents: int) -> Callable[[dict[str, Any]], bool]:
    def match(row: dict[str, Any]) -> bool:
        tags = row["tags"]
        return (tags["scope"], tags["kind"], tags["window"]) == ("city", "elevator", "365d") and row[
            "fields"
        ]["accidents"] == accidents

    return match


def test_kafka_duplicates_restart_and_a_late_report(settings: Settings) -> None:
    settings = settings.model_copy(update={"kpi_every_s": 0.3})
    bad = [("reports", b"\xff not json"), ("alerts", b'{"no": "alert"}')]
    records = scenario()
    running = Running(settings)
    reader = None
    try:
        produce(settings, records + records + bad)  # every record delivered twice
        reader = make_reader(settings, ["kpi"])
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        row = wait_for_row(reader, seen, city_elevator_365d(3), "with the 3 accidents")
        assert row["time"] == NOW and row["fields"]["accidents_per_10k"] == 200.0
        assert row["fields"]["trapped"] == 2 and row["fields"]["units_online"] == 29
        stage = running.stage
        wait_until(lambda: stage.counters["records"] >= 2 * len(records) + 2, 30)
        assert stage.counters["bad_records"] == 2
        assert stage.counters["repeats"] >= stage.counters["folded"] > 0
        running.stop()

        # a new run on the same state: a new accident and a late one from March 2024
        produce(settings, [accident("R5", "E011", ms(2025, 6, 20)), accident("R6", "E012", ms(2024, 3, 1))])
        running = Running(settings)
        wait_for_row(reader, seen, city_elevator_365d(4), "with 4 accidents (3 before the restart + R5)")
        closing = wait_for_row(
            reader,
            seen,
            lambda r: (
                r["tags"]["scope"] == "city"
                and r["tags"]["kind"] == "elevator"
                and r["time"] == ms(2025, 1, 1) - 1
            ),
            "closing 2024 for the city's elevators",
        )
        assert closing["tags"]["window"] == "ytd" and closing["fields"]["accidents"] == 1
        again = running.stage
        # offsets were committed: the second run read only what came after the first
        assert again.counters["folded_accident"] == 2 and again.counters["repeats"] == 0
        city_elevators = [
            r for r in seen.values() if r["tags"]["scope"] == "city" and r["tags"]["kind"] == "elevator"
        ]
        assert max(r["fields"]["accidents"] for r in city_elevators) == 4  # nothing counted twice
    finally:
        running.stop()
        if reader is not None:
            reader.close()
