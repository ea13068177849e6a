"""Accidents and deaths per 10,000 units in use, and trapped incidents per 10,000 elevators.

As the SAMR bulletins compute them (domain.md §3.1): the numerator counts accidents by the
date they happened, the denominator is the registered units *in use* in the scope. Both are
returned (DESIGN.md §6: store numerators and denominators, not only ratios); a ratio over no
units is ``None``, never 0 or infinity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from metrics.inputs import Accident, Incident
from metrics.scope import CITY, Scope, count_in_use, units_of
from metrics.windows import Window

PER_10K = 10_000


def per_10k(count: float, units: float) -> float | None:
    """``count`` per 10,000 units (None when there are no units)."""
    return count * PER_10K / units if units else None


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True, slots=True)
class AccidentRates:
    """万台事故起数 and 万台死亡人数 with their raw counts."""

    accidents: int
    deaths: int
    units_in_use: int
    serious_injuries: int = 0
    #: accidents on units the registry does not know (counted in no scope: no kind, district or firm)
    unattributed: int = 0

    @property
    def accidents_per_10k(self) -> float | None:
        return per_10k(self.accidents, self.units_in_use)

    @property
    def deaths_per_10k(self) -> float | None:
        return per_10k(self.deaths, self.units_in_use)

    @classmethod
    def from_counts(cls, accidents: int, deaths: int, units_in_use: int) -> AccidentRates:
        """Rates from published raw counts (a bulletin's figures)."""
        return cls(accidents, deaths, units_in_use)


def accident_rates(
    accidents: Iterable[Accident], units: Any, window: Window, scope: Scope = CITY
) -> AccidentRates:
    """Accidents that happened in ``window`` on units in ``scope`` ÷ units in use in ``scope``.

    A unit is placed by its registry entry (kind, district, firm) whatever its status now: an
    accident on a unit scrapped since still counts. A report sent again (same ``report_id``)
    counts once, its latest version winning.
    """
    index = units_of(units)
    latest: dict[str, Accident] = {a.report_id: a for a in accidents}
    n = deaths = injuries = unattributed = 0
    for acc in latest.values():
        if acc.occurred_ms not in window:
            continue
        unit = index.get(acc.device_id)
        if unit is None:
            unattributed += 1
            continue
        if not scope.holds(unit):
            continue
        n += 1
        deaths += acc.deaths
        injuries += acc.serious_injuries
    return AccidentRates(n, deaths, count_in_use(index, scope), injuries, unattributed)


@dataclass(frozen=True, slots=True)
class TrappedRate:
    """困人率: confirmed trapped incidents per 10,000 elevators in use, in the window and per year."""

    trapped: int
    elevators_in_use: int
    window_days: float
    false_alarms: int = 0

    @property
    def per_10k(self) -> float | None:
        """Per 10k elevators over the window as it is."""
        return per_10k(self.trapped, self.elevators_in_use)

    @property
    def per_10k_year(self) -> float | None:
        """Annualised: scaled from the window's length to 365 days (None for an empty window)."""
        rate = self.per_10k
        return rate * 365 / self.window_days if rate is not None and self.window_days > 0 else None


def episodes(incidents: Iterable[Incident]) -> list[Incident]:
    """One incident per unit per episode: alarms on a unit that overlap (the trapped and
    power-loss rules, a terminal event and the telemetry rule, a re-raised alarm before the
    first cleared) merge into the first; an open alarm lasts until it clears."""
    by_unit: dict[str, list[Incident]] = defaultdict(list)
    for inc in {i.alert_id or f"{i.device_id}@{i.alarm_ms}": i for i in incidents}.values():
        by_unit[inc.device_id].append(inc)
    out: list[Incident] = []
    for unit_incidents in by_unit.values():
        unit_incidents.sort(key=lambda i: i.alarm_ms)
        current: Incident | None = None
        for inc in unit_incidents:
            if current is not None and (current.cleared_ms is None or inc.alarm_ms <= current.cleared_ms):
                if current.cleared_ms is not None and (
                    inc.cleared_ms is None or inc.cleared_ms > current.cleared_ms
                ):
                    current = Incident(current.device_id, current.alarm_ms, inc.cleared_ms, current.alert_id)
                continue
            if current is not None:
                out.append(current)
            current = inc
        if current is not None:
            out.append(current)
    return out


def trapped_rate(
    incidents: Iterable[Incident], units: Any, window: Window, scope: Scope = CITY
) -> TrappedRate:
    """Confirmed trapped incidents that began in ``window`` on elevators in ``scope``.

    False alarms (a ``false_alarm`` dispatch action: nobody was inside) are dropped before
    episodes are merged, and counted apart. The denominator is elevators in use, whatever
    the scope's kind (a boiler scope has none, so its rate is None).
    """
    index = units_of(units)
    real: list[Incident] = []
    false_alarms = 0
    for inc in incidents:
        unit = index.get(inc.device_id)
        if unit is None or unit.kind != "elevator" or not scope.holds(unit):
            continue
        if inc.false_alarm:
            false_alarms += inc.alarm_ms in window
            continue
        real.append(inc)
    trapped = sum(1 for e in episodes(real) if e.alarm_ms in window)
    elevators = 0 if scope.kind == "boiler" else count_in_use(index, scope, "elevator")
    return TrappedRate(trapped, elevators, window.days, false_alarms)
