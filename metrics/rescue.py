"""Rescue arrival (on site − alarm) and freeing (freed − on site) times, from dispatch timelines.

Guangzhou 96333: rescuers on site within 30 minutes (domain.md §1.6). Percentiles interpolate
linearly between order statistics (numpy's default, ``statistics.quantiles(method="inclusive")``),
so a P90 over few incidents is not pinned to one of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from metrics.inputs import DispatchTimeline
from metrics.safety import ratio
from metrics.scope import CITY, Scope, units_of
from metrics.windows import MINUTE_MS, Window

ARRIVAL_LIMIT_MIN = 30.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 1:
        raise ValueError("q is a fraction between 0 and 1")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class DurationStats:
    """Summary of durations in minutes (None when there are none)."""

    n: int
    mean_min: float | None
    median_min: float | None
    p90_min: float | None
    max_min: float | None

    @classmethod
    def of(cls, minutes: Sequence[float]) -> DurationStats:
        if not minutes:
            return cls(0, None, None, None, None)
        return cls(
            len(minutes),
            sum(minutes) / len(minutes),
            percentile(minutes, 0.5),
            percentile(minutes, 0.9),
            max(minutes),
        )


@dataclass(frozen=True, slots=True)
class RescueTimes:
    """Arrival and freeing times of confirmed alarms raised in a window."""

    alarms: int  # confirmed (not false) alarms with a dispatch timeline
    false_alarms: int
    arrived: int
    within_limit: int  # arrived within ``limit_min``
    #: no arrival yet although the limit has passed (already late: counted against the share)
    late_without_arrival: int
    arrival: DurationStats
    freeing: DurationStats
    limit_min: float = ARRIVAL_LIMIT_MIN
    invalid: int = 0  # on site before the alarm (a clock is wrong): left out

    @property
    def share_within_limit(self) -> float | None:
        """Arrivals within the limit ÷ (arrivals + alarms already past the limit with nobody there)."""
        return ratio(self.within_limit, self.arrived + self.late_without_arrival)


def rescue_times(
    timelines: Iterable[DispatchTimeline],
    units: Any,
    window: Window,
    scope: Scope = CITY,
    as_of_ms: int | None = None,
    limit_min: float = ARRIVAL_LIMIT_MIN,
) -> RescueTimes:
    """Timelines whose alarm was raised in ``window`` on units in ``scope``; ``as_of_ms``
    (default: the window's end) decides which alarms without arrival are already late."""
    index = units_of(units)
    as_of = window.end_ms if as_of_ms is None else as_of_ms
    limit_ms = limit_min * MINUTE_MS
    alarms = false_alarms = within = late = invalid = 0
    arrivals: list[float] = []
    freeings: list[float] = []
    for tl in {t.alert_id: t for t in timelines}.values():
        unit = index.get(tl.device_id)
        if unit is None or not scope.holds(unit) or tl.alarm_ms not in window:
            continue
        if tl.false_alarm:
            false_alarms += 1
            continue
        alarms += 1
        arrival = tl.arrival_ms
        if arrival is None:
            late += as_of - tl.alarm_ms > limit_ms
            continue
        if arrival < 0:
            invalid += 1
            continue
        arrivals.append(arrival / MINUTE_MS)
        within += arrival <= limit_ms
        freeing = tl.freeing_ms
        if freeing is not None and freeing >= 0:
            freeings.append(freeing / MINUTE_MS)
    return RescueTimes(
        alarms=alarms,
        false_alarms=false_alarms,
        arrived=len(arrivals),
        within_limit=within,
        late_without_arrival=late,
        arrival=DurationStats.of(arrivals),
        freeing=DurationStats.of(freeings),
        limit_min=limit_min,
        invalid=invalid,
    )
