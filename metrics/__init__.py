"""KPI definitions as a regulator computes them: pure functions over plain inputs (no I/O, no Kafka).

Every result carries its numerator and denominator; a ratio over nothing is ``None``.

- :mod:`metrics.windows`: trailing 365 days and year to date in event time (Guangzhou calendar)
- :mod:`metrics.scope`: city / district / firm × elevator / boiler / all, units in use
- :mod:`metrics.inputs`: accidents, incidents, dispatch timelines, visits, inspections, and
  how they are folded from the pipeline's records
- :mod:`metrics.safety`: accidents and deaths per 10k units, trapped per 10k elevators
- :mod:`metrics.rescue`: arrival and freeing times (mean, median, P90, share ≤ 30 min)
- :mod:`metrics.hazards`: open hidden dangers, major-hazard rectification cohort
- :mod:`metrics.compliance`: overdue inspections, maintenance on time, terminal online rate
- :mod:`metrics.efficiency`: boiler efficiency, indirect method, per unit per day
- :mod:`metrics.kpi`: the ``safety_kpi`` rows for every scope and window
"""

from metrics.compliance import (
    MaintenanceOnTime,
    OnlineRate,
    OverdueInspections,
    maintenance_on_time,
    online_units,
    overdue_inspections,
    terminal_online_rate,
)
from metrics.efficiency import DailyEfficiency, daily_efficiency, flue_gas_loss_pct, indirect_efficiency_pct
from metrics.hazards import OpenHazards, RectificationCohort, latest_hazards, open_hazards, rectification
from metrics.inputs import (
    Accident,
    DispatchTimeline,
    Incident,
    Inspection,
    Visit,
    fold_incidents,
    fold_timelines,
)
from metrics.kpi import SafetyKpi, safety_kpi, safety_kpis
from metrics.rescue import DurationStats, RescueTimes, percentile, rescue_times
from metrics.safety import AccidentRates, TrappedRate, accident_rates, per_10k, trapped_rate
from metrics.scope import CITY, Scope, all_scopes, count_in_use, scopes_of
from metrics.windows import GUANGZHOU, Window, calendar_year, kpi_windows, trailing_365d, year_to_date

__all__ = [
    "CITY",
    "GUANGZHOU",
    "Accident",
    "AccidentRates",
    "DailyEfficiency",
    "DispatchTimeline",
    "DurationStats",
    "Incident",
    "Inspection",
    "MaintenanceOnTime",
    "OnlineRate",
    "OpenHazards",
    "OverdueInspections",
    "RectificationCohort",
    "RescueTimes",
    "SafetyKpi",
    "Scope",
    "TrappedRate",
    "Visit",
    "Window",
    "accident_rates",
    "all_scopes",
    "calendar_year",
    "count_in_use",
    "daily_efficiency",
    "flue_gas_loss_pct",
    "fold_incidents",
    "fold_timelines",
    "indirect_efficiency_pct",
    "kpi_windows",
    "latest_hazards",
    "maintenance_on_time",
    "online_units",
    "open_hazards",
    "overdue_inspections",
    "per_10k",
    "percentile",
    "rectification",
    "rescue_times",
    "safety_kpi",
    "safety_kpis",
    "scopes_of",
    "terminal_online_rate",
    "trailing_365d",
    "trapped_rate",
    "year_to_date",
]
