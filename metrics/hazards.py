"""Open hidden dangers by grade and supervision level, and the major-hazard rectification rate.

Input: hazard records as ``rules/hazards.py`` publishes them on the ``hazards`` topic (a dict
per hazard, the latest version per ``hazard_id``): grades ``general``, ``suspected_major``,
``major``; statuses ``reported``, ``rectified``, ``closed``, ``withdrawn``; supervision (挂牌督办)
``none``, ``district``, ``city``, ``province``. Scope comes from the record's own ``kind``,
``district`` and ``firm_id`` (as graded), else from the registry.

The rectification rate is a cohort (严重隐患治理率): hazards *identified* in the window, minus
those withdrawn as false positives, of which how many were verified closed by the cut-off,
and how many of those were rectified before their deadline. No hazard identified → ``None``
(no hazards is not 100 % rectification). Unlike ``rules.hazards.rectification_rate`` the
cut-off may lie after the window (a year's cohort judged today).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metrics.safety import ratio
from metrics.scope import CITY, Scope, units_of
from metrics.windows import Window

OPEN_STATUSES = ("reported", "rectified")
MAJOR = ("major",)


def _placed(hazard: Mapping[str, Any], index: Mapping[str, Any]) -> tuple[str, str, str]:
    unit = index.get(str(hazard.get("device_id", "")))
    kind = hazard.get("kind") or (getattr(unit, "kind", "") if unit else "")
    district = hazard.get("district") or (unit.district if unit else "")
    firm = hazard.get("firm_id") or (unit.firm_id if unit else "")
    return str(getattr(kind, "value", kind)), district, firm


def latest_hazards(records: Iterable[Any]) -> list[dict[str, Any]]:
    """The latest version of each hazard from a stream of records (highest ``updated_at`` wins;
    on a tie the later record)."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        d = rec.model_dump() if hasattr(rec, "model_dump") else dict(rec)
        prev = latest.get(d["hazard_id"])
        if prev is None or d.get("updated_at", 0) >= prev.get("updated_at", 0):
            latest[d["hazard_id"]] = d
    return list(latest.values())


@dataclass(frozen=True, slots=True)
class OpenHazards:
    """Hazards not closed or withdrawn, by grade and by (grade, supervision level)."""

    by_grade: Mapping[str, int] = field(default_factory=dict)
    by_grade_supervision: Mapping[tuple[str, str], int] = field(default_factory=dict)
    overdue: int = 0  # open and past the rectification deadline (unrectified)

    @property
    def total(self) -> int:
        return sum(self.by_grade.values())

    @property
    def major(self) -> int:
        return self.by_grade.get("major", 0)


def open_hazards(
    hazards: Iterable[Any], scope: Scope = CITY, units: Any = (), as_of_ms: int | None = None
) -> OpenHazards:
    """Open hazards in ``scope`` now (their latest records); with ``as_of_ms`` an unrectified one
    past its deadline is overdue even if no sweep has flagged it yet."""
    index = units_of(units)
    grades: Counter[str] = Counter()
    cells: Counter[tuple[str, str]] = Counter()
    overdue = 0
    for h in hazards:
        h = get_dict(h)
        if h.get("status") not in OPEN_STATUSES or not scope.matches(*_placed(h, index)):
            continue
        grades[h["grade"]] += 1
        cells[(h["grade"], h.get("supervision", "none"))] += 1
        late = as_of_ms is not None and h.get("deadline") is not None and h["deadline"] < as_of_ms
        overdue += h["status"] == "reported" and bool(h.get("overdue") or late)
    return OpenHazards(dict(grades), dict(cells), overdue)


def get_dict(h: Any) -> Mapping[str, Any]:
    return h.model_dump() if hasattr(h, "model_dump") else h


@dataclass(frozen=True, slots=True)
class RectificationCohort:
    identified: int  # opened in the window, not withdrawn
    closed: int  # verified closed (销号) before the cut-off
    closed_on_time: int  # … and rectified before its deadline
    withdrawn: int  # false positives, left out of ``identified``
    still_open: int  # neither closed nor withdrawn
    overdue_open: int  # still unrectified and past the deadline at the cut-off
    cutoff_ms: int = 0

    @property
    def rate(self) -> float | None:
        return ratio(self.closed, self.identified)

    @property
    def on_time_rate(self) -> float | None:
        return ratio(self.closed_on_time, self.identified)


def rectification(
    hazards: Iterable[Any],
    window: Window,
    cutoff_ms: int | None = None,
    scope: Scope = CITY,
    units: Any = (),
    grades: Iterable[str] = MAJOR,
) -> RectificationCohort:
    """Major-hazard rectification of the cohort opened in ``window``, judged at ``cutoff_ms``
    (default the window's end). ``grades`` adds ``suspected_major`` if a plan counts them too."""
    index = units_of(units)
    wanted = set(grades)
    cutoff = window.end_ms if cutoff_ms is None else cutoff_ms
    identified = closed = on_time = withdrawn = still_open = overdue = 0
    for h in hazards:
        h = get_dict(h)
        if h.get("grade") not in wanted or h.get("opened_at") not in window:
            continue
        if not scope.matches(*_placed(h, index)):
            continue
        if h.get("status") == "withdrawn":
            withdrawn += 1
            continue
        identified += 1
        closed_at = h.get("verified_at") or h.get("closed_at")
        if h.get("status") == "closed" and closed_at is not None and closed_at < cutoff:
            closed += 1
            on_time += bool(h.get("closed_on_time"))
            continue
        still_open += 1
        overdue += h.get("status") == "reported" and h.get("deadline", cutoff) < cutoff
    return RectificationCohort(identified, closed, on_time, withdrawn, still_open, overdue, cutoff)
