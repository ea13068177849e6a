"""Rescue times, hidden dangers, inspections, maintenance, online rate and boiler efficiency:
pure definitions against hand-computed figures (every expected number worked out in a comment)."""

from __future__ import annotations

import statistics
from datetime import date, datetime, timedelta, timezone

import pytest

from metrics import (
    CITY,
    Inspection,
    Scope,
    Visit,
    Window,
    daily_efficiency,
    flue_gas_loss_pct,
    fold_timelines,
    indirect_efficiency_pct,
    latest_hazards,
    maintenance_on_time,
    online_units,
    open_hazards,
    overdue_inspections,
    percentile,
    rectification,
    rescue_times,
    terminal_online_rate,
)
from metrics.inputs import parse_alert_id
from rules.hazards import new_hazard, transition
from sesmon.contract.registry import Unit

GZ = timezone(timedelta(hours=8))
MIN = 60_000
DAY = 86_400_000


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=GZ).timestamp() * 1000)  # type: ignore[misc]


def units() -> dict[str, Unit]:
    out = [
        Unit(device_id=f"E{i}", kind="elevator", district="天河" if i <= 4 else "越秀", firm_id="F1")
        for i in range(1, 9)
    ]
    out += [Unit(device_id="B1", kind="boiler", district="天河", firm_id="F3")]
    return {u.device_id: u for u in out}


# --------------------------------------------------------------------------- rescue


def test_percentile_matches_statistics_inclusive() -> None:
    data = [12.0, 25.0, 31.0, 45.0, 7.5, 60.0]
    deciles = statistics.quantiles(data, n=10, method="inclusive")
    assert percentile(data, 0.9) == pytest.approx(deciles[8])
    assert percentile(data, 0.5) == pytest.approx(statistics.median(data))
    assert percentile([4.0], 0.9) == 4.0 and percentile([], 0.5) is None


def test_rescue_arrival_and_freeing_hand_computed() -> None:
    t0 = ms(2025, 5, 1, 10)
    as_of = t0 + 60 * MIN
    window = Window(ms(2025, 1, 1), as_of, "ytd")

    def opened(device: str, at: int) -> dict:
        return {
            "alert_id": f"{device}.elevator.trapped.{at}",
            "device_id": device,
            "opened_at": at,
            "rule": "elevator.trapped",
            "state": "firing",
        }

    alerts = [
        opened("E1", t0),
        opened("E2", t0),
        opened("E3", t0),
        opened("E4", t0),
        opened("E5", t0),
        opened("E6", t0 + 20 * MIN),
        opened("E7", t0 + 50 * MIN),
    ]
    aid = [a["alert_id"] for a in alerts]

    def act(i: int, action: str, minutes: float) -> dict:
        return {
            "alert_id": aid[i],
            "action": action,
            "by": "firm-F1",
            "ts": alerts[i]["opened_at"] + int(minutes * MIN),
        }

    actions = [
        act(0, "ack", 1),
        act(0, "on_site", 12),
        act(0, "freed", 20),  # arrival 12, freeing 8
        act(1, "on_site", 25),
        act(1, "freed", 40),
        act(1, "on_site", 25),  # 25, 15 (repeat ignored)
        act(2, "on_site", 31),  # 31, never freed (yet)
        act(3, "on_site", 45),
        act(3, "freed", 50),  # 45, 5
        act(4, "false_alarm", 3),  # left out
        act(5, "ack", 2),  # nobody there 40 min after the alarm: already late
        act(6, "ack", 2),  # 10 min after the alarm: not late yet
        {"alert_id": "E8.elevator.trapped.1", "action": "on_site", "by": "x", "ts": 2},  # before the window
    ]
    timelines = fold_timelines(alerts, actions)
    assert len(timelines) == 8
    r = rescue_times(timelines, units(), window)
    assert (r.alarms, r.false_alarms, r.arrived, r.within_limit, r.late_without_arrival) == (6, 1, 4, 2, 1)
    # arrivals 12, 25, 31, 45: mean 28.25, median 28, P90 = 31 + 0.7 × 14 = 40.8
    assert r.arrival.mean_min == pytest.approx(28.25)
    assert r.arrival.median_min == pytest.approx(28.0)
    assert r.arrival.p90_min == pytest.approx(40.8)
    assert r.arrival.max_min == 45
    # within 30 min: 2 of (4 arrived + 1 already late)
    assert r.share_within_limit == pytest.approx(0.4)
    # freeing 8, 15, 5: mean 9.33, median 8, P90 = 8 + 0.8 × 7 = 13.6
    assert r.freeing.n == 3
    assert r.freeing.mean_min == pytest.approx(28 / 3)
    assert r.freeing.p90_min == pytest.approx(13.6)
    # 天河 only (E1-E4): arrivals 12, 25, 31, 45 again; the late and the early ones are in 越秀
    assert rescue_times(timelines, units(), window, Scope.district("天河")).late_without_arrival == 0


def test_timeline_without_alert_record_takes_alarm_time_from_alert_id() -> None:
    assert parse_alert_id("E7.elevator.trapped.1750000000000") == ("E7", "elevator.trapped", 1750000000000)
    assert parse_alert_id("nonsense") is None
    (tl,) = fold_timelines(
        [], [{"alert_id": "E7.elevator.trapped.1000", "action": "on_site", "ts": 1000 + 9 * MIN}]
    )
    assert (tl.device_id, tl.alarm_ms, tl.arrival_ms) == ("E7", 1000, 9 * MIN)


# --------------------------------------------------------------------------- hidden dangers


def hazard_records() -> tuple[list[dict], Window]:
    """Records made by rules/hazards.py itself (the shape on the ``hazards`` topic)."""
    start = ms(2025, 1, 1)
    window = Window(start, ms(2025, 7, 1), "ytd")
    unit = units()

    def hz(device: str, grade: str, day: int, deadline_days: int = 30) -> dict:
        return new_hazard(
            device_id=device,
            source="rule",
            grade=grade,
            opened_ms=start + day * DAY,
            deadline_days=deadline_days,
            unit=unit[device],
        )

    def apply(h: dict, action: str, day: int, by: str = "inspector-1", **extra: object) -> dict:
        t = transition(h, {"action": action, "ts": start + day * DAY, "by": by, **extra})
        assert t.changed, t.refusal
        return t.hazard

    h1 = apply(apply(hz("E1", "major", 10), "rectified", 20, "firm-F1"), "verified", 25)  # on time
    h2 = apply(apply(hz("E2", "major", 10), "rectified", 50, "firm-F1"), "verified", 55)  # late
    h3 = apply(hz("E3", "major", 10), "withdrawn", 12)  # a false positive
    h4 = hz("E4", "major", 100)  # unrectified, deadline day 130 < cut-off (day 181)
    h5 = apply(apply(hz("E5", "major", 150), "rectified", 160, "firm-F1"), "verified", 200)  # after cut-off
    h6 = hz("E6", "general", 30)
    h7 = apply(hz("E7", "major", -30), "supervise", 5)  # before the window; listed at city level
    h8 = hz("B1", "suspected_major", 40)
    return [h1, h2, h3, h4, h5, h6, h7, h8], window


def test_major_rectification_cohort_hand_computed() -> None:
    hazards, window = hazard_records()
    r = rectification(hazards, window)  # cut-off = end of the window (day 181)
    # identified: h1, h2, h4, h5 (h3 withdrawn, h6 general, h7 before, h8 suspected)
    assert (r.identified, r.withdrawn, r.closed, r.closed_on_time, r.still_open, r.overdue_open) == (
        4,
        1,
        2,
        1,
        2,
        1,
    )
    assert r.rate == 0.5 and r.on_time_rate == 0.25
    # judged later (day 201), h5 is closed too
    later = rectification(hazards, window, cutoff_ms=window.start_ms + 201 * DAY)
    assert (later.closed, later.closed_on_time, later.rate) == (3, 2, 0.75)
    # counting suspected ones as major adds h8 (open)
    assert rectification(hazards, window, grades=("major", "suspected_major")).identified == 5
    # nothing identified: None, not 100 %
    empty = rectification(hazards, window, scope=Scope.city("boiler"))
    assert (empty.identified, empty.rate, empty.on_time_rate) == (0, None, None)


def test_open_hazards_by_grade_and_supervision() -> None:
    hazards, window = hazard_records()
    r = open_hazards(hazards, CITY, units(), as_of_ms=window.end_ms)
    # open now (latest records): h4, h7 major; h6 general; h8 suspected (h5 closed, h3 withdrawn)
    assert dict(r.by_grade) == {"major": 2, "general": 1, "suspected_major": 1}
    assert dict(r.by_grade_supervision) == {
        ("major", "district"): 1,
        ("major", "city"): 1,
        ("general", "none"): 1,
        ("suspected_major", "none"): 1,
    }
    # overdue (unrectified, deadline passed by day 181): h4 (day 130), h7 (day 0), h6 (day 60), h8 (day 70)
    assert r.overdue == 4 and r.total == 4 and r.major == 2
    assert open_hazards(hazards, Scope.city("boiler"), units()).by_grade == {"suspected_major": 1}
    assert open_hazards(hazards, Scope.district("越秀"), units()).by_grade == {"general": 1, "major": 1}


def test_latest_hazard_record_wins() -> None:
    hazards, _ = hazard_records()
    first = new_hazard(
        device_id="E1", source="rule", grade="major", opened_ms=hazards[0]["opened_at"], deadline_days=30
    )
    assert first["hazard_id"] == hazards[0]["hazard_id"]
    latest = latest_hazards([hazards[0], first])  # the stale one arrives last: ignored
    assert [h["status"] for h in latest] == ["closed"]


# --------------------------------------------------------------------------- inspections, maintenance, online


def test_overdue_inspections() -> None:
    as_of = ms(2025, 7, 1, 9)  # local date 2025-07-01
    reg = units()
    due = {
        "E1": date(2025, 6, 30),
        "E2": date(2025, 7, 1),
        "E3": date(2025, 3, 1),
        "E4": date(2026, 1, 1),
        "E5": date(2025, 5, 1),
        "B1": date(2024, 12, 1),
    }
    for device, when in due.items():
        reg[device] = reg[device].model_copy(update={"next_inspection_due": when})
    reg["E8"] = reg["E8"].model_copy(update={"status": "suspended", "next_inspection_due": date(2020, 1, 1)})
    inspections = [
        Inspection("E3", ms(2025, 6, 1), True, date(2026, 6, 1)),  # passed: due moves to 2026
        Inspection("E5", ms(2025, 6, 1), False, date(2025, 7, 1)),  # failed: still overdue
        Inspection("B1", ms(2025, 7, 2), True, date(2026, 7, 2)),  # after the as-of instant: not yet
    ]
    r = overdue_inspections(reg, as_of, inspections=inspections)
    # overdue: E1 (yesterday), E5, B1; due today (E2) is not late; E6, E7 unknown; E8 not in use
    assert (r.overdue, r.units_in_use, r.unknown_due) == (3, 8, 2)
    assert r.rate == pytest.approx(3 / 8)
    assert overdue_inspections(reg, as_of, Scope.city("elevator"), inspections).overdue == 2


def test_maintenance_on_time_every_gap_at_most_15_days() -> None:
    window = Window(ms(2025, 6, 1), ms(2025, 7, 1), "30d")
    reg = units()
    reg["E7"] = reg["E7"].model_copy(update={"registered_on": date(2025, 6, 20)})
    d = lambda day: ms(2025, 6, day)  # noqa: E731
    visits = [
        Visit("E1", ms(2025, 5, 20)),
        Visit("E1", d(4)),
        Visit("E1", d(19)),  # gaps 12, 15, 12: on time
        Visit("E2", d(10)),
        Visit("E2", d(25)),  # 9 from the window start, 15, 6: on time
        Visit("E3", d(1)),
        Visit("E3", d(17), "repair"),
        Visit("E3", d(20)),  # gap 19 (a repair is no visit)
        Visit("E4", d(5)),
        Visit("E4", d(14)),  # 16 days to the end of the window: late now
        Visit("E5", ms(2025, 5, 10)),
        Visit("E5", d(3)),  # 24 days since the visit before: late
        # E6 never visited in 30 days: late; E7 registered 20 June, 11 days ago: on time; E8 visited
        Visit("E8", d(2)),
        Visit("E8", d(16)),
        Visit("E8", d(30)),
    ]
    r = maintenance_on_time(reg, visits, window)
    assert (r.on_time, r.elevators_in_use) == (4, 8)
    assert sorted(r.late_units) == ["E3", "E4", "E5", "E6"]
    assert r.rate == 0.5
    assert maintenance_on_time(reg, visits, window, Scope.city("boiler")).rate is None


def test_terminal_online_rate() -> None:
    reg = units()
    now = 1_000_000_000
    seen = {"E1": now - 10_000, "E2": now - 170_000, "E3": now - 200_000, "E4": now - 5_000, "B1": now}
    online = online_units(seen, now, 180_000, offline={"E4"})
    assert online == {"E1", "E2", "B1"}
    r = terminal_online_rate(reg, online)
    assert (r.online, r.units_in_use, r.rate) == (3, 9, 3 / 9)
    assert terminal_online_rate(reg, online, Scope.district("越秀")).rate == 0.0


# --------------------------------------------------------------------------- boiler efficiency


def test_efficiency_indirect_method_domain_example() -> None:
    # domain.md §2.5: 150 °C flue, 20 °C air, 3.5 % O2: q2 = 130 × (0.66/17.5 + 0.009) = 6.0729 %
    assert flue_gas_loss_pct(150, 3.5) == pytest.approx(6.0729, abs=1e-4)
    assert indirect_efficiency_pct(150, 3.5) == pytest.approx(100 - 6.0729 - 1.5, abs=1e-4)  # ≈ 92.4 %
    assert flue_gas_loss_pct(150, 20.9) is None  # air, not flue gas
    assert flue_gas_loss_pct(15, 3.5) == 0.0


def test_daily_efficiency_per_unit_per_local_day() -> None:
    day1 = ms(2025, 3, 1, 0, 10)  # 2025-02-28 16:10 UTC: already 1 March in Guangzhou
    readings = [
        {
            "device_id": "B1",
            "ts": day1,
            "flue_gas_temp_c": 150,
            "o2_pct": 3.5,
            "burner": "high_fire",
            "fuel_flow_nm3h": 300,
        },
        {
            "device_id": "B1",
            "ts": day1 + 3600_000,
            "flue_gas_temp_c": 200,
            "o2_pct": 6.0,
            "burner": "low_fire",
            "fuel_flow_nm3h": 100,
        },
        {"device_id": "B1", "ts": day1 + 7200_000, "flue_gas_temp_c": 60, "o2_pct": 20.9, "burner": "off"},
        {
            "device_id": "B1",
            "ts": ms(2025, 3, 2, 12),
            "flue_gas_temp_c": 150,
            "o2_pct": 3.5,
            "burner": "high_fire",
        },
        {
            "device_id": "B1",
            "ts": ms(2025, 3, 2, 13),
            "flue_gas_temp_c": 200,
            "o2_pct": 6.0,
            "burner": "high_fire",
        },
    ]
    d1, d2 = daily_efficiency(readings)
    q_a = 130 * (0.66 / 17.5 + 0.009)  # 6.0729
    q_b = 180 * (0.66 / 15.0 + 0.009)  # 9.54
    assert (d1.device_id, d1.day, d1.samples, d1.fuel_weighted) == ("B1", date(2025, 3, 1), 2, True)
    assert d1.flue_gas_loss_pct == pytest.approx((q_a * 300 + q_b * 100) / 400)  # 6.9397
    assert d1.efficiency_pct == pytest.approx(100 - (q_a * 300 + q_b * 100) / 400 - 1.5)
    assert (d2.day, d2.samples, d2.fuel_weighted) == (date(2025, 3, 2), 2, False)
    assert d2.efficiency_pct == pytest.approx(100 - (q_a + q_b) / 2 - 1.5)
