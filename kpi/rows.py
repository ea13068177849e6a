"""The ``safety_kpi`` rows from the folded inputs, by the definitions in ``metrics`` (pure: no I/O).

Why cells: a scope (city, district, firm × kind) is a union of *cells*: the units sharing
(kind, district, firm), by eights. Every figure but the rescue-time percentiles is a sum over units
(counts, numerators, denominators), so the ``metrics`` functions run once per cell and window
and the scopes add their cells up: the cost grows with units + inputs, not with units ×
scopes (a unit counts in six scopes). Rescue times (median, P90) are not sums; they are
computed per scope from the dispatch timelines, which are few.

A row's fields are :meth:`metrics.kpi.SafetyKpi.fields` plus rescue arrival and freeing
times, maintenance on time and the terminal online rate (:data:`EXTRA_FIELDS`). A ratio
with no denominator is left out (never 0 or infinity); counts are ints, everything else a
float, so a field's type never changes (InfluxDB refuses a point that changes one).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from kpi.inputs import KpiState
from metrics.compliance import (
    MAX_MAINTENANCE_GAP_DAYS,
    MaintenanceOnTime,
    OnlineRate,
    OverdueInspections,
    maintenance_on_time,
    overdue_inspections,
    terminal_online_rate,
)
from metrics.hazards import OpenHazards, RectificationCohort, open_hazards, rectification
from metrics.inputs import Accident, DispatchTimeline, Incident, Inspection, Visit, fold_timelines
from metrics.kpi import SafetyKpi
from metrics.rescue import RescueTimes, rescue_times
from metrics.safety import AccidentRates, TrappedRate, accident_rates, trapped_rate
from metrics.scope import CITY, Scope, all_scopes, kind_of, scopes_of
from metrics.windows import DAY_MS, MINUTE_MS, Window, calendar_year
from sesmon.contract.time import local_date, start_of_day_ms

MEASUREMENT = "safety_kpi"
#: fields a row has beyond ``SafetyKpi.fields()`` (the Grafana boards query these names)
EXTRA_FIELDS = (
    "trapped_false_alarms",
    "rescue_alarms",
    "rescue_false_alarms",
    "rescue_arrived",
    "rescue_late_without_arrival",
    "arrival_within_30min",
    "arrival_share_within_30min",
    "arrival_mean_min",
    "arrival_median_min",
    "arrival_p90_min",
    "freeing_median_min",
    "freeing_p90_min",
    "maintenance_on_time",
    "maintenance_elevators",
    "maintenance_on_time_rate",
    "units_online",
    "online_rate",
)

Cell = tuple[str, str, str, int]  # (kind, district, firm_id, chunk)
#: units per cell at most: what one changed record costs to recompute
CELL_UNITS = 8


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One ``safety_kpi`` point: the series (tags) and its figures, timed at ``time_ms``."""

    scope: Scope
    window: Window
    fields: dict[str, int | float]
    time_ms: int

    def tags(self) -> dict[str, str]:
        return {**self.scope.tags, "window": self.window.label}

    def record(self) -> dict[str, Any]:
        """The ``kpi`` stream's value: tags, fields and time (epoch ms) of the point."""
        return {"measurement": MEASUREMENT, "tags": self.tags(), "fields": self.fields, "time": self.time_ms}

    def key(self) -> str:
        """Kafka key: the series, so one series' rows stay in order on one partition."""
        return "|".join(self.tags().values())


class Fleet:
    """The registry as the rows need it: units by device_id, grouped in cells, each cell's scopes."""

    def __init__(self, units: Mapping[str, Any]) -> None:
        self.units = dict(units)
        self.cells: dict[Cell, dict[str, Any]] = defaultdict(dict)
        self.cell_of: dict[str, Cell] = {}
        seen: Counter[tuple[str, str, str]] = Counter()
        for device_id in sorted(self.units):
            unit = self.units[device_id]
            group = (kind_of(unit.kind), unit.district, unit.firm_id)
            cell = (*group, seen[group] // CELL_UNITS)  # units of one kind, district and firm, by eights
            seen[group] += 1
            self.cells[cell][device_id] = unit
            self.cell_of[device_id] = cell
        self.scopes = all_scopes(self.units)
        self._scopes_of: dict[Cell, list[Scope]] = {}

    def scopes_of_cell(self, cell: Cell) -> list[Scope]:
        found = self._scopes_of.get(cell)
        if found is None:
            found = self._scopes_of[cell] = scopes_of(*cell[:3])
        return found

    def scopes_of_device(self, device_id: str) -> list[Scope]:
        cell = self.cell_of.get(device_id)
        return self.scopes_of_cell(cell) if cell is not None else []

    def hazard_cell(self, hazard: Mapping[str, Any]) -> Cell:
        """Where a hazard counts: its own kind, district and firm (as graded), else its unit's."""
        unit = self.units.get(str(hazard.get("device_id", "")))
        kind = hazard.get("kind") or (kind_of(unit.kind) if unit is not None else "")
        district = hazard.get("district") or (unit.district if unit is not None else "")
        firm = hazard.get("firm_id") or (unit.firm_id if unit is not None else "")
        group = (kind_of(kind), district, firm)
        cell = self.cell_of.get(str(hazard.get("device_id", "")))
        return cell if cell is not None and cell[:3] == group else (*group, 0)


@dataclass
class Tally:
    """The additive figures of one scope in one window: the sum of its cells' results."""

    accidents: int = 0
    deaths: int = 0
    serious_injuries: int = 0
    units_in_use: int = 0
    trapped: int = 0
    elevators_in_use: int = 0
    trapped_false_alarms: int = 0
    hazard_grades: Counter[str] = field(default_factory=Counter)
    hazard_cells: Counter[tuple[str, str]] = field(default_factory=Counter)
    hazards_overdue: int = 0
    cohort: Counter[str] = field(default_factory=Counter)
    overdue: int = 0
    inspection_units: int = 0
    unknown_due: int = 0
    maintenance_on_time: int = 0
    maintenance_elevators: int = 0
    online: int = 0
    online_units: int = 0

    def add(self, part: CellResult, online: OnlineRate | None, sign: int = 1) -> None:
        """Add a cell's figures (``sign`` −1 takes back what an earlier version of them added)."""
        a, t, h, r, i, m = (
            part.accidents,
            part.trapped,
            part.hazards,
            part.cohort,
            part.inspections,
            part.maintenance,
        )
        self.accidents += sign * a.accidents
        self.deaths += sign * a.deaths
        self.serious_injuries += sign * a.serious_injuries
        self.units_in_use += sign * a.units_in_use
        self.trapped += sign * t.trapped
        self.elevators_in_use += sign * t.elevators_in_use
        self.trapped_false_alarms += sign * t.false_alarms
        for grade, n in h.by_grade.items():
            self.hazard_grades[grade] += sign * n
        for key, n in h.by_grade_supervision.items():
            self.hazard_cells[key] += sign * n
        self.hazards_overdue += sign * h.overdue
        for name in ("identified", "closed", "closed_on_time", "withdrawn", "still_open", "overdue_open"):
            self.cohort[name] += sign * getattr(r, name)
        self.overdue += sign * i.overdue
        self.inspection_units += sign * i.units_in_use
        self.unknown_due += sign * i.unknown_due
        self.maintenance_on_time += sign * m.on_time
        self.maintenance_elevators += sign * m.elevators_in_use
        if online is not None:
            self.online += sign * online.online
            self.online_units += sign * online.units_in_use

    def safety_kpi(self, scope: Scope, window: Window) -> SafetyKpi:
        c = self.cohort
        return SafetyKpi(
            scope=scope,
            window=window,
            accidents=AccidentRates(self.accidents, self.deaths, self.units_in_use, self.serious_injuries),
            trapped=TrappedRate(
                self.trapped,
                0 if scope.kind == "boiler" else self.elevators_in_use,
                window.days,
                self.trapped_false_alarms,
            ),
            hazards=OpenHazards(dict(+self.hazard_grades), dict(+self.hazard_cells), self.hazards_overdue),
            rectification=RectificationCohort(
                c["identified"],
                c["closed"],
                c["closed_on_time"],
                c["withdrawn"],
                c["still_open"],
                c["overdue_open"],
                window.end_ms,
            ),
            inspections=OverdueInspections(self.overdue, self.inspection_units, self.unknown_due),
        )


@dataclass(frozen=True, slots=True)
class CellResult:
    accidents: AccidentRates
    trapped: TrappedRate
    hazards: OpenHazards
    cohort: RectificationCohort
    inspections: OverdueInspections
    maintenance: MaintenanceOnTime


class OnlineView:
    """``device_id in view``: the unit's terminal last said online (no set of 10,000 ids per tick)."""

    def __init__(self, status: Mapping[str, tuple[int, bool]]) -> None:
        self.status = status

    def __contains__(self, device_id: object) -> bool:
        found = self.status.get(device_id)  # type: ignore[call-overload]
        return found is not None and found[1]


class Inputs:
    """The state's inputs by cell for one computation. The few (accidents, incidents, hazards,
    rescue timelines) are put in cells, and kept while their kind of input has not changed
    (``KpiState.versions``); the many (visits, inspections: one or more per unit) are looked up
    per unit only for the cells that are recomputed."""

    def __init__(self, fleet: Fleet, state: KpiState, previous: Inputs | None = None) -> None:
        self.fleet = fleet
        self.state = state
        self.online = OnlineView(state.status)
        v = state.versions
        self.versions = {
            "accidents": v["accident"],
            "incidents": (v["incident"], v["action"]),
            "hazards": v["hazard"],
            "timelines": (v["incident"], v["action"]),
        }
        old = previous.versions if previous is not None else {}
        self.accidents: dict[Cell, list[Accident]]
        self.incidents: dict[Cell, list[Incident]]
        self.hazards: dict[Cell, list[dict[str, Any]]]
        self.timelines: dict[Scope, list[DispatchTimeline]]
        for name in self.versions:
            if previous is not None and old.get(name) == self.versions[name]:
                setattr(self, name, getattr(previous, name))
            else:
                setattr(self, name, getattr(self, f"_{name}")())

    def _accidents(self) -> dict[Cell, list[Accident]]:
        out: dict[Cell, list[Accident]] = defaultdict(list)
        for acc in self.state.accidents.values():
            cell = self.fleet.cell_of.get(acc.device_id)
            if cell is not None:  # a unit the registry does not know is in no scope
                out[cell].append(acc)
        return out

    def _incidents(self) -> dict[Cell, list[Incident]]:
        out: dict[Cell, list[Incident]] = defaultdict(list)
        false_alarms = self.state.false_alarms()
        for inc in self.state.incidents.values():
            cell = self.fleet.cell_of.get(inc.device_id)
            if cell is not None:
                if inc.alert_id in false_alarms:
                    inc = Incident(inc.device_id, inc.alarm_ms, inc.cleared_ms, inc.alert_id, True)
                out[cell].append(inc)
        return out

    def _hazards(self) -> dict[Cell, list[dict[str, Any]]]:
        out: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
        for hazard in self.state.hazards.values():
            out[self.fleet.hazard_cell(hazard)].append(hazard)
        return out

    def _timelines(self) -> dict[Scope, list[DispatchTimeline]]:
        state = self.state
        alarms = [
            {"alert_id": aid, "device_id": inc.device_id, "opened_at": inc.alarm_ms}
            for aid, inc in state.incidents.items()
            if aid in state.actions
        ]
        actions = [
            {"alert_id": aid, "action": action, "ts": ts}
            for aid, acts in state.actions.items()
            for action, ts in acts
        ]
        out: dict[Scope, list[DispatchTimeline]] = defaultdict(list)
        for timeline in fold_timelines(alarms, actions):
            for scope in self.fleet.scopes_of_device(timeline.device_id):
                out[scope].append(timeline)
        return out

    def visits(self, cell: Cell) -> list[Visit]:
        found = self.state.visits
        return [v for device_id in self.fleet.cells.get(cell, ()) for v in found.get(device_id, {}).values()]

    def inspections(self, cell: Cell) -> list[Inspection]:
        found = self.state.inspections
        return [i for device_id in self.fleet.cells.get(cell, ()) for i in found.get(device_id, {}).values()]


def cell_result(fleet: Fleet, inputs: Inputs, cell: Cell, window: Window) -> CellResult:
    """Every additive figure of one cell in one window, by the ``metrics`` definitions."""
    units = fleet.cells.get(cell, {})
    hazards = inputs.hazards.get(cell, ())
    return CellResult(
        accidents=accident_rates(inputs.accidents.get(cell, ()), units, window, CITY),
        trapped=trapped_rate(inputs.incidents.get(cell, ()), units, window, CITY),
        hazards=open_hazards(hazards, CITY, units, window.end_ms),
        cohort=rectification(hazards, window, window.end_ms, CITY, units),
        inspections=overdue_inspections(units, window.end_ms, CITY, inputs.inspections(cell)),
        maintenance=maintenance_on_time(units, inputs.visits(cell), window, CITY),
    )


#: a figure that compares an instant t with the window (t in [end − 365 d, end), t < end, end − t
#: ≤ 15 d, t − start ≤ 15 d, …) can only change its answer when the window's end passes one of
#: these offsets from t (both sides of each edge: being early only costs a recomputation)
_GAP_MS = int(MAX_MAINTENANCE_GAP_DAYS * DAY_MS)
_YEAR_MS = 365 * DAY_MS
_EDGES = (0, 1, _GAP_MS, _GAP_MS + 1, _YEAR_MS - _GAP_MS, _YEAR_MS - _GAP_MS + 1, _YEAR_MS, _YEAR_MS + 1)


def valid_until(fleet: Fleet, inputs: Inputs, cell: Cell, as_of_ms: int) -> int:
    """The first window end after ``as_of_ms`` at which the cell's figures may differ with no new
    input: an instant of one of its inputs (or of its units' registration) crossing an edge of a
    window, or the next local midnight (inspections fall due by the day). Until then the cached
    figures are exactly what a recomputation would give."""
    instants: list[int] = []
    instants += (a.occurred_ms for a in inputs.accidents.get(cell, ()))
    for inc in inputs.incidents.get(cell, ()):
        instants.append(inc.alarm_ms)
        if inc.cleared_ms is not None:
            instants.append(inc.cleared_ms)
    for h in inputs.hazards.get(cell, ()):
        instants += (
            int(h[k]) for k in ("opened_at", "deadline", "verified_at", "closed_at") if h.get(k) is not None
        )
    instants += (i.ts_ms for i in inputs.inspections(cell))
    instants += (v.ts_ms for v in inputs.visits(cell))
    for unit in fleet.cells.get(cell, {}).values():
        registered = getattr(unit, "registered_on", None)
        if registered is not None:
            instants.append(start_of_day_ms(registered))
    horizon = start_of_day_ms(local_date(as_of_ms) + timedelta(days=1))
    for t in instants:
        for edge in _EDGES:
            if as_of_ms < t + edge < horizon:
                horizon = t + edge
    return horizon


WindowKey = tuple[str, int]  # (window label, start of a ytd window; 0 for the sliding 365 d)


class RowComputer:
    """Rows for scopes and windows, reusing each cell's figures until they may change.

    A cell's cached figures for a window stand until its inputs change (:meth:`forget`, called
    as records are folded) or the window's end reaches the cell's :func:`valid_until`; its
    online count until a unit of it goes online or offline (:meth:`forget_online`). Each scope
    keeps the sum of its cells' figures, and a changed cell takes back what it added before
    and adds its new figures. Event time only moves forward, so a tick costs the cells
    something happened to (and the few whose inputs crossed a window edge), not the city's
    10,000 units; :func:`compute_rows` (no cache) is what this must always equal.
    """

    def __init__(self, fleet: Fleet, cache: bool = True) -> None:
        self.fleet = fleet
        self.use_cache = cache
        self.results: dict[WindowKey, dict[Cell, tuple[CellResult, int, int]]] = {}
        self.online: dict[Cell, OnlineRate] = {}
        self.tallies: dict[WindowKey, dict[Scope, Tally]] = {}
        self.added: dict[WindowKey, dict[Cell, tuple[CellResult, OnlineRate]]] = {}
        self.rescue: dict[tuple[Scope, WindowKey], tuple[RescueTimes, int, int, Any]] = {}
        self.inputs: Inputs | None = None
        self.computed = self.reused = 0

    def forget(self, cells: Iterable[Cell]) -> None:
        """Drop the cached figures of ``cells``: their inputs changed."""
        for by_cell in self.results.values():
            for cell in cells:
                by_cell.pop(cell, None)

    def forget_online(self, cells: Iterable[Cell]) -> None:
        """A unit of each of ``cells`` went online or offline."""
        for cell in cells:
            self.online.pop(cell, None)

    def _result(self, inputs: Inputs, cell: Cell, window: Window, key: WindowKey) -> CellResult:
        by_cell = self.results.setdefault(key, {})
        as_of = window.end_ms
        cached = by_cell.get(cell)
        if cached is not None and cached[1] <= as_of < cached[2]:
            self.reused += 1
            return cached[0]
        result = cell_result(self.fleet, inputs, cell, window)
        by_cell[cell] = (result, as_of, valid_until(self.fleet, inputs, cell, as_of))
        self.computed += 1
        return result

    def _rescue(self, inputs: Inputs, scope: Scope, window: Window, closed: bool) -> RescueTimes:
        """A scope's rescue times, kept until a timeline changes or an alarm crosses an edge of the
        window (or, with nobody on site, the 30-minute limit: it becomes late)."""
        timelines = inputs.timelines.get(scope, ())
        if closed:
            return rescue_times(timelines, self.fleet.units, window, scope)
        key = (scope, (window.label, window.start_ms if window.label == "ytd" else 0))
        as_of, version = window.end_ms, inputs.versions["timelines"]
        cached = self.rescue.get(key)
        if cached is not None and cached[3] == version and cached[1] <= as_of < cached[2]:
            return cached[0]
        result = rescue_times(timelines, self.fleet.units, window, scope)
        horizon = start_of_day_ms(local_date(as_of) + timedelta(days=1))
        limit_ms = int(result.limit_min * MINUTE_MS)
        for tl in timelines:
            for edge in (0, 1, limit_ms, limit_ms + 1, _YEAR_MS, _YEAR_MS + 1):
                if as_of < tl.alarm_ms + edge < horizon:
                    horizon = tl.alarm_ms + edge
        self.rescue[key] = (result, as_of, horizon, version)
        return result

    def _online(self, inputs: Inputs, cell: Cell) -> OnlineRate:
        found = self.online.get(cell)
        if found is None:
            found = self.online[cell] = terminal_online_rate(
                self.fleet.cells.get(cell, {}), inputs.online, CITY
            )
        return found

    def _tallies(self, inputs: Inputs, window: Window, cells: set[Cell]) -> dict[Scope, Tally]:
        """Every scope's sums for a current window, brought up to date cell by cell."""
        key = (window.label, window.start_ms if window.label == "ytd" else 0)
        if key not in self.tallies:  # a new year's ytd: the old one's sums are of no more use
            for old in [k for k in self.tallies if k[0] == window.label]:
                del self.tallies[old], self.added[old]
                self.results.pop(old, None)
            self.tallies[key], self.added[key] = defaultdict(Tally), {}
        tallies, added = self.tallies[key], self.added[key]
        for cell in cells:
            new = (self._result(inputs, cell, window, key), self._online(inputs, cell))
            old = added.get(cell)
            if old is not None and old[0] is new[0] and old[1] is new[1]:
                continue
            for scope in self.fleet.scopes_of_cell(cell):
                tally = tallies[scope]
                if old is not None:
                    tally.add(*old, sign=-1)
                tally.add(*new)
            added[cell] = new
        return tallies

    def _closed_tallies(
        self, inputs: Inputs, window: Window, cells: set[Cell], wanted: set[Scope]
    ) -> dict[Scope, Tally]:
        """A past year's sums from scratch (rare: a late record, a year turning)."""
        tallies: dict[Scope, Tally] = defaultdict(Tally)
        for cell in cells:
            targets = [s for s in self.fleet.scopes_of_cell(cell) if s in wanted]
            if targets:
                part = cell_result(self.fleet, inputs, cell, window)
                for scope in targets:
                    tallies[scope].add(part, None)
        return tallies

    def rows(
        self,
        state: KpiState,
        scopes: Iterable[Scope],
        windows: Iterable[Window],
        *,
        closed: bool = False,
        time_ms: int | None = None,
    ) -> list[KpiRow]:
        """Rows for ``scopes`` × ``windows``, timed at ``time_ms`` (default: the window's end).

        ``closed``: the windows are past calendar years, their ``ytd`` rows timed at the year's
        last millisecond, without the online rate (which is only "now")."""
        wanted = list(dict.fromkeys(scopes))
        if not wanted:
            return []
        if not self.use_cache:
            self.results.clear()
            self.online.clear()
            self.tallies.clear()
            self.added.clear()
            self.rescue.clear()
        inputs = self.inputs = Inputs(self.fleet, state, self.inputs if self.use_cache else None)
        cells = set(self.fleet.cells) | set(inputs.hazards)
        rows: list[KpiRow] = []
        for window in windows:
            if closed:
                tallies = self._closed_tallies(inputs, window, cells, set(wanted))
            else:
                tallies = self._tallies(inputs, window, cells)
            for scope in wanted:
                tally = tallies.get(scope) or Tally()
                rescue = self._rescue(inputs, scope, window, closed)
                values: dict[str, int | float | None] = dict(tally.safety_kpi(scope, window).fields())
                values |= extra_fields(tally, rescue, with_online=not closed)
                fields = {k: v for k, v in values.items() if v is not None}
                when = window.end_ms - 1 if closed else (window.end_ms if time_ms is None else time_ms)
                rows.append(KpiRow(scope, window, fields, when))
        return rows


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def extra_fields(tally: Tally, rescue: RescueTimes, with_online: bool) -> dict[str, int | float | None]:
    return {
        "trapped_false_alarms": tally.trapped_false_alarms,
        "rescue_alarms": rescue.alarms,
        "rescue_false_alarms": rescue.false_alarms,
        "rescue_arrived": rescue.arrived,
        "rescue_late_without_arrival": rescue.late_without_arrival,
        "arrival_within_30min": rescue.within_limit,
        "arrival_share_within_30min": _float(rescue.share_within_limit),
        "arrival_mean_min": _float(rescue.arrival.mean_min),
        "arrival_median_min": _float(rescue.arrival.median_min),
        "arrival_p90_min": _float(rescue.arrival.p90_min),
        "freeing_median_min": _float(rescue.freeing.median_min),
        "freeing_p90_min": _float(rescue.freeing.p90_min),
        "maintenance_on_time": tally.maintenance_on_time,
        "maintenance_elevators": tally.maintenance_elevators,
        "maintenance_on_time_rate": _float(
            tally.maintenance_on_time / tally.maintenance_elevators if tally.maintenance_elevators else None
        ),
        "units_online": tally.online if with_online else None,
        "online_rate": _float(
            tally.online / tally.online_units if with_online and tally.online_units else None
        ),
    }


def compute_rows(
    fleet: Fleet,
    state: KpiState,
    scopes: Iterable[Scope],
    windows: Iterable[Window],
    *,
    closed: bool = False,
    time_ms: int | None = None,
) -> list[KpiRow]:
    """Rows computed from scratch (no cached cell): what :class:`RowComputer` must always equal."""
    return RowComputer(fleet, cache=False).rows(state, scopes, windows, closed=closed, time_ms=time_ms)


def year_window(year: int) -> Window:
    """A whole calendar year as the ``ytd`` window it closes (Guangzhou calendar)."""
    whole = calendar_year(year)
    return Window(whole.start_ms, whole.end_ms, "ytd")
