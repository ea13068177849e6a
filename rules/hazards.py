"""Hidden dangers (隐患): the record, its closed loop and the rectification rate (DESIGN.md §5).

Loop (domain.md §3.3): found → reported → graded happen together when a rule or report opens
a hazard (status ``reported``, grade ``general`` or ``major`` as GB 45067-2024 classes it);
then ``sesmon/v1/reports/hazard`` actions drive it: ``rectified`` (整改), ``verified``
(复查 + 整改效果评价 → 销号, status ``closed``), ``reopened`` (re-check failed or the
problem came back), ``supervise`` (挂牌督办 one level up). A hazard past its deadline and not
rectified escalates its supervision level by itself: district → city → province.

Everything here is a pure function of the hazard dict and the report, so the worker can keep
hazards in a Faust table and replays give the same history. ``hazard_id`` encodes the unit
(``HZ.{device_id}.{source}.{opened_ms}``; device ids cannot contain dots), so a hazard report,
which carries only the hazard id, can be routed to its unit's partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from sesmon.schemas import hazard_device_id as hazard_device_id  # re-exported: the id format is a contract

DAY_MS = 86_400_000
SUPERVISION = ("none", "district", "city", "province")
ACTIONS = ("rectified", "verified", "reopened", "supervise")


class Hazard(BaseModel):
    """One hidden danger as the worker stores and publishes it (JSON via ``model_dump``)."""

    hazard_id: str
    device_id: str
    kind: str = ""
    district: str = ""
    firm_id: str = ""
    user_unit_id: str = ""
    source: str
    rule: str = ""
    rule_version: str = ""
    grade: Literal["general", "major"]
    title: str = ""
    status: Literal["reported", "rectified", "closed"] = "reported"
    opened_at: int
    updated_at: int
    deadline: int
    deadline_days: int = 30
    supervision: Literal["none", "district", "city", "province"] = "none"
    overdue: bool = False
    escalate_at: int = 0
    escalate_every_days: int = 15
    rectified_at: int | None = None
    verified_at: int | None = None
    closed_at: int | None = None
    closed_on_time: bool | None = None
    effect: str = ""
    reopened: int = 0
    occurrences: int = 1
    alert_id: str = ""
    history: list[dict[str, Any]] = Field(default_factory=list)


def hazard_id_for(device_id: str, source: str, opened_ms: int) -> str:
    """Deterministic id: the same finding in a re-processed stream gets the same id."""
    return f"HZ.{device_id}.{source}.{opened_ms}"


def new_hazard(
    *,
    device_id: str,
    source: str,
    grade: str,
    opened_ms: int,
    deadline_days: int,
    title: str = "",
    rule: str = "",
    rule_version: str = "",
    unit: Any = None,
    kind: str = "",
    alert_id: str = "",
    escalate_every_days: int = 15,
    note: str = "",
) -> dict[str, Any]:
    """A fresh hazard record as a plain dict (what lives in the state and the table).

    Major hazards are listed for supervision (挂牌督办) at district level from the start;
    general ones only when they run past their deadline.
    """
    deadline = opened_ms + deadline_days * DAY_MS
    return {
        "hazard_id": hazard_id_for(device_id, source, opened_ms),
        "device_id": device_id,
        "kind": kind or (str(unit.kind) if unit is not None else ""),
        "district": unit.district if unit is not None else "",
        "firm_id": unit.firm_id if unit is not None else "",
        "user_unit_id": unit.user_unit_id if unit is not None else "",
        "source": source,
        "rule": rule,
        "rule_version": rule_version,
        "grade": grade,
        "title": title,
        "status": "reported",
        "opened_at": opened_ms,
        "updated_at": opened_ms,
        "deadline": deadline,
        "deadline_days": deadline_days,
        "supervision": "district" if grade == "major" else "none",
        "overdue": False,
        "escalate_at": deadline,
        "escalate_every_days": escalate_every_days,
        "rectified_at": None,
        "verified_at": None,
        "closed_at": None,
        "closed_on_time": None,
        "effect": "",
        "reopened": 0,
        "occurrences": 1,
        "alert_id": alert_id,
        "history": [{"ts": opened_ms, "action": "reported", "by": "system", "note": note or rule}],
    }


def _log(hazard: dict[str, Any], ts: int, action: str, by: str, note: str) -> None:
    hazard["history"].append({"ts": ts, "action": action, "by": by, "note": note})
    hazard["updated_at"] = max(hazard["updated_at"], ts)


def apply_hazard_report(hazard: Mapping[str, Any], report: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Apply one ``reports/hazard`` body; returns (new hazard dict, whether it changed).

    Invalid transitions (verifying an unrectified hazard, rectifying a closed one) and
    repeats of an already-applied report change nothing, so redelivery is harmless.
    """
    action = report.get("action")
    ts = int(report.get("ts", 0))
    by = str(report.get("by", ""))
    note = str(report.get("note", ""))
    if action not in ACTIONS:
        return dict(hazard), False
    for h in hazard.get("history", ()):
        if h.get("ts") == ts and h.get("action") == action and h.get("by") == by:
            return dict(hazard), False
    hz = dict(hazard)
    hz["history"] = list(hazard.get("history", ()))
    status = hz["status"]
    if action == "rectified":
        if status != "reported":
            return dict(hazard), False
        hz["status"] = "rectified"
        hz["rectified_at"] = ts
    elif action == "verified":
        if status != "rectified":
            return dict(hazard), False
        hz["status"] = "closed"
        hz["verified_at"] = ts
        hz["closed_at"] = ts
        hz["effect"] = note or "effective"
        hz["closed_on_time"] = (hz["rectified_at"] or ts) <= hz["deadline"]
        hz["overdue"] = False
    elif action == "reopened":
        if status == "reported":
            return dict(hazard), False
        hz["status"] = "reported"
        hz["reopened"] = hz.get("reopened", 0) + 1
        hz["rectified_at"] = hz["verified_at"] = hz["closed_at"] = hz["closed_on_time"] = None
        hz["effect"] = ""
        hz["deadline"] = ts + int(hz.get("deadline_days", 30)) * DAY_MS
        hz["escalate_at"] = hz["deadline"]
        hz["overdue"] = False
    else:  # supervise: 挂牌督办 one level up
        level = SUPERVISION.index(hz["supervision"])
        if status == "closed" or level == len(SUPERVISION) - 1:
            return dict(hazard), False
        hz["supervision"] = SUPERVISION[level + 1]
    _log(hz, ts, action, by, note)
    return hz, True


def escalate_overdue(hazard: dict[str, Any], now_ms: int) -> bool:
    """Escalate an unrectified hazard past its deadline, in place; True if it changed.

    One supervision level per ``escalate_every_days`` overdue, up to province, so a hazard
    that sits untouched climbs district → city → province (逐级挂牌督办).
    """
    if hazard["status"] != "reported" or now_ms < hazard["escalate_at"]:
        return False
    changed = False
    every = int(hazard.get("escalate_every_days", 15)) * DAY_MS
    while now_ms >= hazard["escalate_at"]:
        level = SUPERVISION.index(hazard["supervision"])
        at = hazard["escalate_at"]
        hazard["escalate_at"] = at + every
        if not hazard["overdue"]:
            hazard["overdue"] = True
            changed = True
        if level < len(SUPERVISION) - 1:
            hazard["supervision"] = SUPERVISION[level + 1]
            _log(hazard, at, "escalated", "system", f"overdue; supervision {hazard['supervision']}")
            changed = True
        else:
            hazard["escalate_at"] = 2**62  # at province level: nothing further to climb
            break
    return changed


@dataclass(frozen=True, slots=True)
class RectificationRate:
    """严重隐患治理率: closed-and-verified ÷ identified, with both kept (DESIGN.md §6)."""

    identified: int
    closed: int
    closed_on_time: int
    overdue_open: int

    @property
    def rate(self) -> float:
        return self.closed / self.identified if self.identified else 1.0

    @property
    def on_time_rate(self) -> float:
        return self.closed_on_time / self.identified if self.identified else 1.0


def rectification_rate(
    hazards: Iterable[Mapping[str, Any] | Hazard], grade: str | None = "major"
) -> RectificationRate:
    """Rate over hazards of one grade (``None``: all grades)."""
    identified = closed = on_time = overdue = 0
    for h in hazards:
        d = h.model_dump() if isinstance(h, Hazard) else h
        if grade is not None and d["grade"] != grade:
            continue
        identified += 1
        if d["status"] == "closed" and d.get("verified_at") is not None:
            closed += 1
            on_time += bool(d.get("closed_on_time"))
        elif d.get("overdue"):
            overdue += 1
    return RectificationRate(identified, closed, on_time, overdue)


class HazardBook:
    """Hazards by id, for a worker or a report that keeps them outside the per-unit state."""

    def __init__(self, hazards: Iterable[Mapping[str, Any]] = ()) -> None:
        self.hazards: dict[str, dict[str, Any]] = {h["hazard_id"]: dict(h) for h in hazards}

    def upsert(self, hazard: Mapping[str, Any]) -> None:
        self.hazards[hazard["hazard_id"]] = dict(hazard)

    def apply(self, report: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """Apply a hazard report; (None, False) for an unknown hazard id."""
        current = self.hazards.get(str(report.get("hazard_id", "")))
        if current is None:
            return None, False
        new, changed = apply_hazard_report(current, report)
        if changed:
            self.hazards[new["hazard_id"]] = new
        return new, changed

    def escalate(self, now_ms: int) -> list[dict[str, Any]]:
        """Escalate every overdue hazard; returns the ones that changed."""
        return [h for h in self.hazards.values() if escalate_overdue(h, now_ms)]

    def open(self) -> list[dict[str, Any]]:
        return [h for h in self.hazards.values() if h["status"] != "closed"]

    def rate(self, grade: str | None = "major") -> RectificationRate:
        return rectification_rate(self.hazards.values(), grade)
