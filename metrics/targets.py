"""The plan targets the KPIs are judged against, in one place (domain.md §3.1, DESIGN.md §6).

Guangzhou's special-equipment safety plan: under 0.20 accidents and 0.19 deaths per 10,000
units in use a year, every major (serious) hidden danger rectified, rescuers on site within
30 minutes. Shanxi's plan line is 0.38 accidents per 10,000 units. Boards (the terminal board,
Grafana) draw these lines; nothing else should hard-code them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metrics.rescue import ARRIVAL_LIMIT_MIN

#: Guangzhou: accidents per 10,000 units in use a year (below is good)
ACCIDENTS_PER_10K_MAX = 0.20
#: Guangzhou: deaths per 10,000 units in use a year
DEATHS_PER_10K_MAX = 0.19
#: Shanxi's plan line for accidents per 10,000 units (a second reference line)
SHANXI_ACCIDENTS_PER_10K_MAX = 0.38
#: every major hidden danger rectified (严重隐患治理率 100 %), as a fraction
MAJOR_RECTIFICATION_RATE_MIN = 1.0
#: Guangzhou 96333: rescuers on site within this many minutes
RESCUE_ARRIVAL_MAX_MIN = ARRIVAL_LIMIT_MIN
#: share of rescues on site within the limit the plan expects (all of them)
RESCUE_SHARE_WITHIN_MIN = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """One target line: the ``safety_kpi`` field it judges, its bound and which side is good."""

    field: str
    label: str
    bound: float
    good: Literal["below", "at_most", "at_least"]

    def met(self, value: float | None) -> bool | None:
        """True / False against the bound; None when there is nothing to judge (no value)."""
        if value is None:
            return None
        if self.good == "below":
            return value < self.bound
        return value <= self.bound if self.good == "at_most" else value >= self.bound


#: the city-board lines, in the order an operator reads them
TARGETS: tuple[Target, ...] = (
    Target("accidents_per_10k", "accidents / 10k units", ACCIDENTS_PER_10K_MAX, "below"),
    Target("deaths_per_10k", "deaths / 10k units", DEATHS_PER_10K_MAX, "below"),
    Target("major_rectification_rate", "major hazards rectified", MAJOR_RECTIFICATION_RATE_MIN, "at_least"),
    Target("arrival_p90_min", "rescue arrival P90 (min)", RESCUE_ARRIVAL_MAX_MIN, "at_most"),
    Target("arrival_share_within_30min", "rescues on site ≤ 30 min", RESCUE_SHARE_WITHIN_MIN, "at_least"),
)
