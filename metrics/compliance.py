"""Overdue inspections (超期未检), maintenance on time (维保及时率) and terminal online rate.

All are shares of units *in use* in the scope, returned with numerator and denominator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, tzinfo
from itertools import pairwise
from typing import Any

from metrics.inputs import MAINTENANCE_VISITS, Inspection, Visit
from metrics.safety import ratio
from metrics.scope import CITY, Scope, in_use, kind_of
from metrics.windows import DAY_MS, GUANGZHOU, Window
from sesmon.contract.time import local_date, start_of_day_ms

MAX_MAINTENANCE_GAP_DAYS = 15.0


@dataclass(frozen=True, slots=True)
class OverdueInspections:
    overdue: int  # in use and past the due date without a pass
    units_in_use: int
    unknown_due: int = 0  # in use with no due date on record: not counted as overdue

    @property
    def rate(self) -> float | None:
        return ratio(self.overdue, self.units_in_use)


def due_dates(
    units: Any, inspections: Iterable[Inspection] = (), as_of_ms: int | None = None
) -> dict[str, date]:
    """Each unit's next inspection due date: the registry's, moved by the latest *passed*
    inspection reported before ``as_of_ms`` (a failed one moves nothing: 超期未检 is past due
    without a pass)."""
    due: dict[str, date] = {}
    for unit in in_use(units):
        when = getattr(unit, "next_inspection_due", None)
        if when is not None:
            due[unit.device_id] = when
    latest: dict[str, Inspection] = {}
    for insp in inspections:
        if not insp.passed or (as_of_ms is not None and insp.ts_ms >= as_of_ms):
            continue
        prev = latest.get(insp.device_id)
        if prev is None or insp.ts_ms >= prev.ts_ms:
            latest[insp.device_id] = insp
    for device_id, insp in latest.items():
        due[device_id] = insp.next_due
    return due


def overdue_inspections(
    units: Any,
    as_of_ms: int,
    scope: Scope = CITY,
    inspections: Iterable[Inspection] = (),
    tz: tzinfo = GUANGZHOU,
) -> OverdueInspections:
    """Units in use whose due date is before today (local date of ``as_of_ms``): due today is not late."""
    today = local_date(as_of_ms, tz)
    due = due_dates(units, inspections, as_of_ms)
    overdue = total = unknown = 0
    for unit in in_use(units, scope):
        total += 1
        when = due.get(unit.device_id)
        if when is None:
            unknown += 1
        elif when < today:
            overdue += 1
    return OverdueInspections(overdue, total, unknown)


@dataclass(frozen=True, slots=True)
class MaintenanceOnTime:
    on_time: int  # elevators in use with no gap over the limit in the window
    elevators_in_use: int
    max_gap_days: float = MAX_MAINTENANCE_GAP_DAYS
    late_units: tuple[str, ...] = ()

    @property
    def rate(self) -> float | None:
        return ratio(self.on_time, self.elevators_in_use)


def maintenance_on_time(
    units: Any,
    visits: Iterable[Visit],
    window: Window,
    scope: Scope = CITY,
    max_gap_days: float = MAX_MAINTENANCE_GAP_DAYS,
    tz: tzinfo = GUANGZHOU,
) -> MaintenanceOnTime:
    """Elevators in use whose every gap between maintenance visits in ``window`` is ≤ ``max_gap_days``.

    The gaps run from the last visit before the window (or, with none on record, from the
    window's start or the unit's registration, whichever is later) through every visit in
    the window to the window's end, so a unit nobody has visited for 16 days is late now.
    Repairs are not maintenance visits.
    """
    limit = max_gap_days * DAY_MS
    by_unit: dict[str, list[int]] = defaultdict(list)
    for v in visits:
        if v.kind in MAINTENANCE_VISITS:
            by_unit[v.device_id].append(v.ts_ms)
    on_time = total = 0
    late: list[str] = []
    for unit in in_use(units, scope, "elevator"):
        if scope.kind == "boiler" or kind_of(unit.kind) != "elevator":
            continue
        registered = getattr(unit, "registered_on", None)
        anchor = window.start_ms
        if registered is not None:
            anchor = max(anchor, start_of_day_ms(registered, tz))
        if anchor >= window.end_ms:
            continue  # registered after the window
        times = sorted(by_unit.get(unit.device_id, ()))
        before = [t for t in times if t < window.start_ms]
        marks = [before[-1] if before else anchor]
        marks += [t for t in times if t in window and t >= marks[0]]
        marks.append(window.end_ms)
        total += 1
        if all(b - a <= limit for a, b in pairwise(marks)):
            on_time += 1
        else:
            late.append(unit.device_id)
    return MaintenanceOnTime(on_time, total, max_gap_days, tuple(late))


@dataclass(frozen=True, slots=True)
class OnlineRate:
    online: int
    units_in_use: int

    @property
    def rate(self) -> float | None:
        return ratio(self.online, self.units_in_use)


def online_units(
    last_seen_ms: Mapping[str, int], as_of_ms: int, within_ms: int, offline: Collection[str] = ()
) -> set[str]:
    """Units heard from within ``within_ms`` before ``as_of_ms`` and not since marked offline
    (a Last Will or a deadman tick); the worker's ``heartbeat_s × offline_after_heartbeats``."""
    return {d for d, t in last_seen_ms.items() if as_of_ms - within_ms <= t and d not in offline}


def terminal_online_rate(units: Any, online: Collection[str], scope: Scope = CITY) -> OnlineRate:
    """Units in use in ``scope`` whose terminal is online ÷ units in use in ``scope``."""
    total = up = 0
    for unit in in_use(units, scope):
        total += 1
        up += unit.device_id in online
    return OnlineRate(up, total)
