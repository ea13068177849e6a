"""The ``safety_kpi`` record (DESIGN.md §7): one row per scope × kind × window, numerators with ratios.

:func:`safety_kpis` computes every scope of a registry in one go: each input is first put
into the (at most six) scopes it counts in, so the cost grows with the inputs, not with
inputs × scopes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, TypeVar

from metrics.compliance import OverdueInspections, overdue_inspections
from metrics.hazards import OpenHazards, RectificationCohort, get_dict, open_hazards, rectification
from metrics.inputs import Accident, Incident, Inspection
from metrics.safety import AccidentRates, TrappedRate, accident_rates, trapped_rate
from metrics.scope import Scope, all_scopes, scopes_of, units_of
from metrics.windows import GUANGZHOU, Window, kpi_windows

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SafetyKpi:
    scope: Scope
    window: Window
    accidents: AccidentRates
    trapped: TrappedRate
    hazards: OpenHazards
    rectification: RectificationCohort
    inspections: OverdueInspections

    def tags(self) -> dict[str, str]:
        """``scope``, ``scope_id``, ``kind``, ``window``: the series of this row."""
        return {**self.scope.tags, "window": self.window.label}

    def fields(self) -> dict[str, int | float]:
        """Field values of the ``safety_kpi`` measurement; a ratio without denominator is left out."""
        values: dict[str, int | float | None] = {
            "accidents": self.accidents.accidents,
            "deaths": self.accidents.deaths,
            "units_in_use": self.accidents.units_in_use,
            "accidents_per_10k": self.accidents.accidents_per_10k,
            "deaths_per_10k": self.accidents.deaths_per_10k,
            "trapped": self.trapped.trapped,
            "elevators_in_use": self.trapped.elevators_in_use,
            "trapped_per_10k": self.trapped.per_10k_year,
            "hazards_open": self.hazards.total,
            "hazards_open_major": self.hazards.major,
            "hazards_overdue": self.hazards.overdue,
            "major_identified": self.rectification.identified,
            "major_closed": self.rectification.closed,
            "major_closed_on_time": self.rectification.closed_on_time,
            "major_rectification_rate": self.rectification.rate,
            "major_on_time_rate": self.rectification.on_time_rate,
            "overdue_inspections": self.inspections.overdue,
            "overdue_rate": self.inspections.rate,
        }
        return {k: v for k, v in values.items() if v is not None}


def safety_kpi(
    scope: Scope,
    window: Window,
    units: Any,
    *,
    accidents: Iterable[Accident] = (),
    incidents: Iterable[Incident] = (),
    hazards: Iterable[Any] = (),
    inspections: Iterable[Inspection] = (),
    tz: tzinfo = GUANGZHOU,
) -> SafetyKpi:
    """One row; the window's end is the "as of" instant (inspections due, hazards open)."""
    hazards = list(hazards)
    return SafetyKpi(
        scope=scope,
        window=window,
        accidents=accident_rates(accidents, units, window, scope),
        trapped=trapped_rate(incidents, units, window, scope),
        hazards=open_hazards(hazards, scope, units, window.end_ms),
        rectification=rectification(hazards, window, window.end_ms, scope, units),
        inspections=overdue_inspections(units, window.end_ms, scope, inspections, tz),
    )


def _bucket(items: Iterable[T], scopes_for: Callable[[T], Sequence[Scope]]) -> dict[Scope, list[T]]:
    out: dict[Scope, list[T]] = defaultdict(list)
    for item in items:
        for scope in scopes_for(item):
            out[scope].append(item)
    return out


def safety_kpis(
    units: Any,
    as_of_ms: int,
    *,
    accidents: Iterable[Accident] = (),
    incidents: Iterable[Incident] = (),
    hazards: Iterable[Any] = (),
    inspections: Iterable[Inspection] = (),
    scopes: Iterable[Scope] | None = None,
    windows: Iterable[Window] | None = None,
    tz: tzinfo = GUANGZHOU,
) -> list[SafetyKpi]:
    """Every scope (default: city, each district and firm × elevator, boiler, all) × window
    (default: trailing 365 d and year to date up to ``as_of_ms``)."""
    index = units_of(units)

    def of_device(device_id: str) -> list[Scope]:
        unit = index.get(device_id)
        return scopes_of(unit.kind, unit.district, unit.firm_id) if unit is not None else []

    def of_hazard(h: Any) -> list[Scope]:
        d = get_dict(h)
        unit = index.get(str(d.get("device_id", "")))
        kind = d.get("kind") or (unit.kind if unit else "")
        return scopes_of(
            kind,
            d.get("district") or (unit.district if unit else ""),
            d.get("firm_id") or (unit.firm_id if unit else ""),
        )

    unit_b = _bucket(index.values(), lambda u: scopes_of(u.kind, u.district, u.firm_id))
    acc_b = _bucket(accidents, lambda a: of_device(a.device_id))
    inc_b = _bucket(incidents, lambda i: of_device(i.device_id))
    haz_b = _bucket(hazards, of_hazard)
    insp_b = _bucket(inspections, lambda i: of_device(i.device_id))
    wins = list(windows) if windows is not None else list(kpi_windows(as_of_ms, tz))
    out = []
    for scope in scopes if scopes is not None else all_scopes(index):
        sub = {u.device_id: u for u in unit_b.get(scope, ())}
        for window in wins:
            out.append(
                safety_kpi(
                    scope,
                    window,
                    sub,
                    accidents=acc_b.get(scope, ()),
                    incidents=inc_b.get(scope, ()),
                    hazards=haz_b.get(scope, ()),
                    inspections=insp_b.get(scope, ()),
                    tz=tz,
                )
            )
    return out
