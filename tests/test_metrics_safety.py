"""KPI definitions against published figures and a registry of the test's own (hand-computed).

Figures: SAMR bulletins and Shanghai 2024 (domain.md §3.4). The registry below has 18 units in
use; every expected number is worked out by hand in the comments.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from metrics import (
    CITY,
    Accident,
    AccidentRates,
    Scope,
    accident_rates,
    calendar_year,
    fold_incidents,
    per_10k,
    safety_kpis,
    trailing_365d,
    trapped_rate,
    year_to_date,
)
from metrics.safety import episodes
from metrics.scope import all_scopes, count_in_use
from metrics.windows import DAY_MS, kpi_windows
from sesmon.contract.registry import Unit

GZ = timezone(timedelta(hours=8))


def ms(*args: int, tz: timezone = GZ) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)  # type: ignore[misc]


# as of Guangzhou midnight starting 2025-07-01 (= 2025-06-30 16:00 UTC)
AS_OF = ms(2025, 7, 1)


def unit(device_id: str, kind: str, district: str, firm: str, status: str = "in_use", **kw: object) -> Unit:
    return Unit(device_id=device_id, kind=kind, district=district, firm_id=firm, status=status, **kw)


def registry() -> dict[str, Unit]:
    """12 elevators (E12 scrapped: 11 in use), 8 boilers (B08 suspended: 7 in use) = 18 in use.

    天河: E01-E08 (E01-05 firm F1, E06-08 F2), B01-B04 (F3) → 12 in use
    越秀: E09-E12 (F2, E12 scrapped), B05-B08 (F3, B08 suspended) → 6 in use
    """
    units = [unit(f"E{i:02d}", "elevator", "天河", "F1" if i <= 5 else "F2") for i in range(1, 9)]
    units += [unit(f"E{i:02d}", "elevator", "越秀", "F2") for i in range(9, 12)]
    units += [unit("E12", "elevator", "越秀", "F2", status="scrapped")]
    units += [unit(f"B{i:02d}", "boiler", "天河", "F3") for i in range(1, 5)]
    units += [unit(f"B{i:02d}", "boiler", "越秀", "F3") for i in range(5, 8)]
    units += [unit("B08", "boiler", "越秀", "F3", status="suspended")]
    return {u.device_id: u for u in units}


def accidents() -> list[Accident]:
    return [
        Accident("A1", "E01", ms(2025, 3, 10, 9), deaths=0),  # corrected below: same report id
        Accident("A2", "B05", ms(2024, 12, 31, 16, 30, tz=UTC)),  # 2025-01-01 00:30 local
        Accident("A3", "E09", ms(2024, 12, 31, 15, 30, tz=UTC), deaths=2),  # 2024-12-31 23:30 local
        Accident("A4", "E12", ms(2025, 2, 1), serious_injuries=1),  # unit scrapped since: still counts
        Accident("A5", "E02", ms(2024, 5, 1)),  # before the 365 days
        Accident("A6", "X99", ms(2025, 4, 1)),  # not in the registry
        Accident("A1", "E01", ms(2025, 3, 10, 9), deaths=1),  # the corrected report: 1 death
    ]


# --------------------------------------------------------------------------- published figures


@pytest.mark.parametrize(
    ("what", "units", "acc", "deaths", "acc_10k", "deaths_10k", "digits"),
    [
        # SAMR 2024: 2294.18万 units, 132 accidents, 114 deaths
        ("SAMR 2024", 22_941_800, 132, 114, 0.0575, 0.0497, 4),
        # Shanghai 2024: 70.49万 in use, 15 accidents, 5 deaths (reported 0.21 / 0.07)
        ("Shanghai 2024", 704_900, 15, 5, 0.213, 0.071, 3),
        # SAMR 2021: 1816.23万, 110 / 99 (the press said 0.08: keep raw counts)
        ("SAMR 2021", 18_162_300, 110, 99, 0.061, 0.055, 3),
        # SAMR 2023: 2128.91万, 71 / 69
        ("SAMR 2023", 21_289_100, 71, 69, 0.033, 0.032, 3),
    ],
)
def test_published_figures_from_raw_counts(
    what: str, units: int, acc: int, deaths: int, acc_10k: float, deaths_10k: float, digits: int
) -> None:
    rates = AccidentRates.from_counts(acc, deaths, units)
    assert round(rates.accidents_per_10k, digits) == acc_10k, what
    assert round(rates.deaths_per_10k, digits) == deaths_10k, what
    assert (rates.accidents, rates.deaths, rates.units_in_use) == (acc, deaths, units)


def test_ratio_without_units_is_none_not_zero() -> None:
    assert per_10k(3, 0) is None
    assert AccidentRates.from_counts(0, 0, 0).accidents_per_10k is None
    assert AccidentRates.from_counts(0, 0, 5).accidents_per_10k == 0.0


# --------------------------------------------------------------------------- windows


def test_windows_in_event_time_and_guangzhou_calendar() -> None:
    ytd = year_to_date(AS_OF)
    assert ytd.start_ms == ms(2025, 1, 1) == ms(2024, 12, 31, 16, tz=UTC)
    assert ytd.end_ms == AS_OF and ytd.label == "ytd"
    assert ytd.days == 181  # Jan 31 + Feb 28 + Mar 31 + Apr 30 + May 31 + Jun 30
    rolling = trailing_365d(AS_OF)
    assert rolling.end_ms - rolling.start_ms == 365 * DAY_MS and rolling.label == "365d"
    year = calendar_year(2024)
    assert (year.start_ms, year.end_ms, year.days) == (ms(2024, 1, 1), ms(2025, 1, 1), 366)
    # half-open: the as-of instant itself is not in the window, the start is
    assert AS_OF not in ytd and ytd.start_ms in ytd and ytd.start_ms - 1 not in ytd
    # at 00:30 local on 1 January the year-to-date window is half an hour long
    assert year_to_date(ms(2025, 1, 1, 0, 30)).start_ms == ms(2025, 1, 1)
    assert [w.label for w in kpi_windows(AS_OF)] == ["365d", "ytd"]


# --------------------------------------------------------------------------- accidents


def test_units_in_use_per_scope() -> None:
    reg = registry()
    assert count_in_use(reg) == 18
    assert count_in_use(reg, Scope.city("elevator")) == 11
    assert count_in_use(reg, Scope.city("boiler")) == 7
    assert count_in_use(reg, Scope.district("天河")) == 12
    assert count_in_use(reg, Scope.district("越秀")) == 6
    assert count_in_use(reg, Scope.firm("F2", "elevator")) == 6  # E06-E11


def test_accident_rates_hand_computed() -> None:
    reg, acc = registry(), accidents()
    rolling, ytd = trailing_365d(AS_OF), year_to_date(AS_OF)

    # city, all kinds, 365 d: A1 (1 death), A2, A3 (2 deaths), A4 = 4 accidents, 3 deaths over 18 units
    r = accident_rates(acc, reg, rolling)
    assert (r.accidents, r.deaths, r.serious_injuries, r.units_in_use, r.unattributed) == (4, 3, 1, 18, 1)
    assert r.accidents_per_10k == pytest.approx(4 * 10_000 / 18)  # 2222.2
    assert r.deaths_per_10k == pytest.approx(3 * 10_000 / 18)  # 1666.7

    # year to date: A3 happened at 23:30 local on 31 December 2024 -> out; A2 at 00:30 on 1 January -> in
    r = accident_rates(acc, reg, ytd)
    assert (r.accidents, r.deaths, r.units_in_use) == (3, 1, 18)

    # elevators, 365 d: A1, A3, A4 over 11 elevators in use
    r = accident_rates(acc, reg, rolling, Scope.city("elevator"))
    assert (r.accidents, r.deaths, r.units_in_use) == (3, 3, 11)
    # 天河, 365 d: A1 only, 12 units in use
    r = accident_rates(acc, reg, rolling, Scope.district("天河"))
    assert (r.accidents, r.deaths, r.units_in_use) == (1, 1, 12)
    # 越秀, year to date: A2 (B05) and A4 (E12, scrapped but registered) over 6 in use
    r = accident_rates(acc, reg, ytd, Scope.district("越秀"))
    assert (r.accidents, r.deaths, r.units_in_use) == (2, 0, 6)
    assert r.accidents_per_10k == pytest.approx(2 * 10_000 / 6)
    # firm F2 elevators, 365 d: A3 (E09), A4 (E12) over E06-E11
    r = accident_rates(acc, reg, rolling, Scope.firm("F2", "elevator"))
    assert (r.accidents, r.deaths, r.units_in_use) == (2, 2, 6)
    # a whole calendar year: 2024 has A5 (May) and A3 (31 Dec local)
    r = accident_rates(acc, reg, calendar_year(2024))
    assert (r.accidents, r.deaths) == (2, 2)


def test_accident_from_report_body() -> None:
    body = {
        "report_id": "R1",
        "device_id": "E01",
        "ts": 1_750_000_000_000,
        "grade": "general",
        "deaths": 1,
        "serious_injuries": 0,
        "description": "x",
    }
    assert Accident.from_report(body) == Accident("R1", "E01", 1_750_000_000_000, 1, 0, "general")
    from sesmon.contract.schemas import AccidentReport

    assert Accident.from_report(AccidentReport.model_validate(body)) == Accident.from_report(body)


# --------------------------------------------------------------------------- trapped


def alert(device: str, rule: str, opened: int, state: str = "firing", changed: int | None = None) -> dict:
    return {
        "alert_id": f"{device}.{rule}.{opened}",
        "rule": rule,
        "device_id": device,
        "opened_at": opened,
        "changed_at": changed if changed is not None else opened,
        "state": state,
        "level": "P1",
        "kind": "elevator",
    }


def trapped_records() -> tuple[list[dict], list[dict]]:
    t1 = ms(2025, 5, 1, 10)
    minute = 60_000
    alerts = [
        # E01: trapped 10:00-10:20 and power loss with people inside 10:05-10:25: one episode
        alert("E01", "elevator.trapped", t1),
        alert("E01", "elevator.power_loss_occupied", t1 + 5 * minute),
        alert("E01", "elevator.trapped", t1, "resolved", t1 + 20 * minute),
        alert("E01", "elevator.power_loss_occupied", t1 + 5 * minute, "resolved", t1 + 25 * minute),
        alert("E01", "elevator.trapped", t1),  # redelivered: still one
        # E02: a false alarm (nobody inside)
        alert("E02", "elevator.trapped", ms(2025, 5, 2, 8)),
        # E03: open since 1 June; a second alarm on 2 June while it is still open: one episode
        alert("E03", "elevator.trapped", ms(2025, 6, 1, 8)),
        alert("E03", "elevator.trapped", ms(2025, 6, 2, 8)),
        # E09: one in January
        alert("E09", "elevator.trapped", ms(2025, 1, 10, 12)),
        # E05: 23:59 local on 31 December 2024: in the 365 days, not in the year to date
        alert("E05", "elevator.trapped", ms(2024, 12, 31, 23, 59)),
        # E04: a later, separate episode after the first cleared: two incidents
        alert("E04", "elevator.trapped", ms(2025, 3, 1, 8)),
        alert("E04", "elevator.trapped", ms(2025, 3, 1, 8), "resolved", ms(2025, 3, 1, 8, 30)),
        alert("E04", "elevator.trapped", ms(2025, 3, 1, 9)),
        # not a trapped rule, and a boiler
        alert("E06", "elevator.door_open_while_running", ms(2025, 5, 1)),
        {**alert("B01", "elevator.trapped", ms(2025, 5, 1)), "kind": "boiler"},
    ]
    actions = [
        {
            "alert_id": alerts[5]["alert_id"],
            "action": "false_alarm",
            "by": "operator",
            "ts": ms(2025, 5, 2, 9),
        }
    ]
    return alerts, actions


def test_trapped_rate_one_per_unit_per_episode_false_alarms_out_annualised() -> None:
    alerts, actions = trapped_records()
    incidents = fold_incidents(alerts, actions)
    assert len(incidents) == 10  # by alert id (the door rule is not a trapped rule)
    assert [
        i.device_id for i in episodes(i for i in incidents if not i.false_alarm and i.device_id == "E01")
    ] == ["E01"]
    reg = registry()
    # 365 d: E01, E03, E09, E05, E04 ×2 = 6 over 11 elevators in use; the false alarm apart
    r = trapped_rate(incidents, reg, trailing_365d(AS_OF))
    assert (r.trapped, r.elevators_in_use, r.false_alarms) == (6, 11, 1)
    assert r.per_10k == pytest.approx(6 * 10_000 / 11)
    assert r.per_10k_year == pytest.approx(6 * 10_000 / 11)  # 365 days: nothing to scale
    # year to date (181 days): E05 drops out -> 5, annualised × 365/181
    r = trapped_rate(incidents, reg, year_to_date(AS_OF))
    assert (r.trapped, r.elevators_in_use, r.window_days) == (5, 11, 181)
    assert r.per_10k_year == pytest.approx(5 * 10_000 / 11 * 365 / 181)  # 9166.8
    # 越秀: only E09 (E12 is scrapped: not in the denominator)
    r = trapped_rate(incidents, reg, trailing_365d(AS_OF), Scope.district("越秀"))
    assert (r.trapped, r.elevators_in_use) == (1, 3)
    # boilers have no trapped rate
    r = trapped_rate(incidents, reg, trailing_365d(AS_OF), Scope.city("boiler"))
    assert (r.trapped, r.elevators_in_use, r.per_10k, r.per_10k_year) == (0, 0, None, None)


# --------------------------------------------------------------------------- safety_kpi rows


def test_safety_kpi_rows_for_every_scope_match_the_single_definitions() -> None:
    from metrics import Inspection, open_hazards

    reg = registry()
    alerts, actions = trapped_records()
    incidents = fold_incidents(alerts, actions)
    hazards = [
        {
            "hazard_id": "HZ.E01.x.1",
            "device_id": "E01",
            "kind": "elevator",
            "district": "天河",
            "firm_id": "F1",
            "grade": "major",
            "status": "reported",
            "supervision": "district",
            "opened_at": ms(2025, 6, 1),
            "updated_at": ms(2025, 6, 1),
            "deadline": ms(2025, 6, 8),
            "overdue": False,
        },
    ]
    reg["E02"] = reg["E02"].model_copy(update={"next_inspection_due": date(2025, 6, 1)})
    inspections = [Inspection("E02", ms(2025, 5, 30), True, date(2026, 5, 30))]  # passed: not overdue
    reg["E03"] = reg["E03"].model_copy(update={"next_inspection_due": date(2025, 6, 29)})  # overdue

    rows = safety_kpis(
        reg, AS_OF, accidents=accidents(), incidents=incidents, hazards=hazards, inspections=inspections
    )
    assert len(rows) == len(all_scopes(reg)) * 2  # city + 2 districts + 3 firms, × 3 kinds, × 2 windows
    by_key = {(r.scope, r.window.label): r for r in rows}

    city = by_key[(CITY, "365d")]
    assert city.tags() == {"scope": "city", "scope_id": "city", "kind": "all", "window": "365d"}
    f = city.fields()
    assert f["accidents"] == 4 and f["deaths"] == 3 and f["units_in_use"] == 18
    assert f["accidents_per_10k"] == pytest.approx(2222.2222)
    assert f["trapped"] == 6 and f["elevators_in_use"] == 11
    assert f["hazards_open_major"] == 1 and f["hazards_overdue"] == 1  # deadline 8 June < 1 July
    assert f["major_identified"] == 1 and f["major_closed"] == 0 and f["major_rectification_rate"] == 0.0
    assert f["overdue_inspections"] == 1 and f["overdue_rate"] == pytest.approx(1 / 18)
    assert open_hazards(hazards, CITY, reg, AS_OF).major == 1

    # no major hazard identified by boilers: the rate is absent (None), not 0 % or 100 %
    boilers = by_key[(Scope.city("boiler"), "ytd")].fields()
    assert "major_rectification_rate" not in boilers and boilers["major_identified"] == 0
    assert "trapped_per_10k" not in boilers and boilers["trapped"] == 0

    # every row equals the single-scope definition over the full inputs
    for (scope, label), row in by_key.items():
        window = trailing_365d(AS_OF) if label == "365d" else year_to_date(AS_OF)
        single = accident_rates(accidents(), reg, window, scope)
        assert (row.accidents.accidents, row.accidents.deaths, row.accidents.units_in_use) == (
            single.accidents,
            single.deaths,
            single.units_in_use,
        ), (scope, label)
        assert row.trapped.trapped == trapped_rate(incidents, reg, window, scope).trapped, (scope, label)

    # districts add up to the city (every unit has a district)
    for label in ("365d", "ytd"):
        districts = [
            r for (s, lab), r in by_key.items() if s.level == "district" and s.kind == "all" and lab == label
        ]
        assert sum(r.accidents.accidents for r in districts) == by_key[(CITY, label)].accidents.accidents
        assert sum(r.accidents.units_in_use for r in districts) == 18
