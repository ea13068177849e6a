"""Hidden dangers (隐患): the record, its closed loop, who may act on it, and the rectification rate.

Loop (domain.md §3.3): found → reported → graded happen together when a rule or report opens
a hazard (status ``reported``). Grades follow GB 45067-2024: ``major`` (重大事故隐患: a registry
or inspection fact such as 超期未检), ``suspected_major`` (an IoT sign of a failed or bypassed
protection — 开门走车, a trip that did not act — that an inspector must confirm on site), and
``general``. A trip or safety valve that *worked* is not a hidden danger. The supervision level
(挂牌督办) is set when a hazard is graded (``supervision_at_grading``: major → district) and
changes only by a regulator's ``supervise`` or ``regrade`` report, never by a calendar; a hazard
past its deadline is flagged ``overdue``.

``sesmon/v1/reports/hazard`` actions:

| action | does | who may (major or suspected / general) |
|---|---|---|
| ``rectified`` | 整改 done | anyone |
| ``verified`` | 复查 + 效果评价 → 销号 (``closed``) | inspector / inspector, operator |
| ``reopened`` | re-check failed, or it came back | inspector, operator |
| ``withdrawn`` | false positive (误报): closed, not counted | inspector / inspector, operator |
| ``regrade`` | new ``grade`` in the body (on-site confirmation) | inspector |
| ``supervise`` | 挂牌督办 one level up | inspector |
| ``stop_use`` | 停用: the unit is taken out of use | inspector, operator, firm |
| ``return_to_service`` | back in use | inspector, once rectified / inspector, operator, firm |

The role is that of the envelope's ``publisher`` (the MQTT username ingest verified; see
``sesmon/contract/identity.py``). On an open broker there is no publisher, and the report's ``by`` is read
with the same naming convention (``inspector-{id}``, ``operator[-{id}]``, ``firm-{firm_id}``;
anything else has no role and may only report ``rectified``) — trusted as stated, which is
why a city deployment requires identities.

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

from sesmon.contract.identity import principal_of
from sesmon.contract.schemas import HAZARD_ACTIONS
from sesmon.contract.schemas import (
    hazard_device_id as hazard_device_id,  # re-exported: the id format is a contract
)

DAY_MS = 86_400_000
GRADES = ("general", "suspected_major", "major")
SUPERVISION = ("none", "district", "city", "province")
ACTIONS = HAZARD_ACTIONS
#: 挂牌督办 level a hazard gets when graded (the catalogue's settings override it)
SUPERVISION_AT_GRADING: dict[str, str] = {"general": "none", "suspected_major": "none", "major": "district"}
MAJORISH = ("major", "suspected_major")
FINAL = ("closed", "withdrawn")


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
    catalogue_sha: str = ""  # first 16 hex of the catalogue file's SHA-256 (rules/catalogue_store.py)
    grade: Literal["general", "suspected_major", "major"]
    title: str = ""
    status: Literal["reported", "rectified", "closed", "withdrawn"] = "reported"
    opened_at: int
    updated_at: int
    deadline: int
    deadline_days: int = 30
    supervision: Literal["none", "district", "city", "province"] = "none"
    overdue: bool = False
    use_stopped: bool = False  # 停用: the unit is out of use until returned to service
    use_stopped_at: int | None = None
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
    catalogue_sha: str = "",
    unit: Any = None,
    kind: str = "",
    alert_id: str = "",
    supervision_at_grading: Mapping[str, str] = SUPERVISION_AT_GRADING,
    note: str = "",
) -> dict[str, Any]:
    """A fresh hazard record as a plain dict (what lives in the state and the table)."""
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
        "catalogue_sha": catalogue_sha,
        "grade": grade,
        "title": title,
        "status": "reported",
        "opened_at": opened_ms,
        "updated_at": opened_ms,
        "deadline": opened_ms + deadline_days * DAY_MS,
        "deadline_days": deadline_days,
        "supervision": supervision_at_grading.get(grade, "none"),
        "overdue": False,
        "use_stopped": False,
        "use_stopped_at": None,
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


def _log(hazard: dict[str, Any], ts: int, action: str, by: str, note: str, role: str = "") -> None:
    entry = {"ts": ts, "action": action, "by": by, "note": note}
    if role:
        entry["role"] = role
    hazard["history"].append(entry)
    hazard["updated_at"] = max(hazard["updated_at"], ts)


def reporter_role(report: Mapping[str, Any], publisher: str | None = None) -> str:
    """The role acting: the verified publisher's, else the one ``by`` names (open broker)."""
    name = publisher or str(report.get("by", ""))
    return principal_of(name).role if name else "device"


def _refusal(action: str, grade: str, role: str, hz: Mapping[str, Any]) -> str | None:
    """Why ``role`` may not take ``action`` on this hazard (None: it may)."""
    major = grade in MAJORISH
    if action in ("verified", "withdrawn"):
        allowed = ("inspector",) if major else ("inspector", "operator")
        if role not in allowed:
            what = "a major or suspected major hazard" if major else "a hazard"
            return f"only {' or '.join(allowed)} may mark {what} {action} (reporter role: {role})"
    elif action in ("regrade", "supervise"):
        if role != "inspector":
            return f"only an inspector (regulator or inspection body) may {action} (reporter role: {role})"
    elif action == "reopened":
        if role not in ("inspector", "operator"):
            return f"only an inspector or operator may reopen a hazard (reporter role: {role})"
    elif action == "stop_use":
        if role not in ("inspector", "operator", "firm"):
            return f"stop_use needs an inspector, operator or firm (reporter role: {role})"
    elif action == "return_to_service":
        if major and role != "inspector":
            return (
                f"only an inspector may return a unit with a major hazard to service (reporter role: {role})"
            )
        if not major and role not in ("inspector", "operator", "firm"):
            return f"return_to_service needs an inspector, operator or firm (reporter role: {role})"
        if major and hz["status"] == "reported":
            return "a unit with an unrectified major hazard cannot return to service"
    return None


@dataclass(frozen=True, slots=True)
class Transition:
    """Outcome of one hazard report: the new record, whether it changed, and why not."""

    hazard: dict[str, Any]
    changed: bool
    refusal: str = ""


def transition(
    hazard: Mapping[str, Any],
    report: Mapping[str, Any],
    *,
    publisher: str | None = None,
    system: bool = False,
    supervision_at_grading: Mapping[str, str] = SUPERVISION_AT_GRADING,
) -> Transition:
    """Apply one ``reports/hazard`` body. ``system``: the engine itself (auto-rectification).

    Invalid transitions, refused roles and repeats of an already-applied report change
    nothing (redelivery is harmless); ``refusal`` says why for the dead-letter record.
    """
    action = str(report.get("action", ""))
    ts = int(report.get("ts", 0))
    by = str(report.get("by", ""))
    note = str(report.get("note", ""))
    same = dict(hazard)
    if action not in ACTIONS:
        return Transition(same, False, f"unknown action {action!r}")
    for h in hazard.get("history", ()):
        if h.get("ts") == ts and h.get("action") == action and h.get("by") == by:
            return Transition(same, False, "already applied")
    status = hazard["status"]
    grade = hazard["grade"]
    role = "system" if system else reporter_role(report, publisher)
    if not system:
        why = _refusal(action, grade, role, hazard)
        if why:
            return Transition(same, False, why)
    hz = dict(hazard)
    hz["history"] = list(hazard.get("history", ()))
    bad = Transition(same, False, f"{action} does not apply to a {status} hazard")
    if action == "rectified":
        if status != "reported":
            return bad
        hz["status"] = "rectified"
        hz["rectified_at"] = ts
        hz["overdue"] = False
    elif action == "verified":
        if status != "rectified":
            return bad
        hz["status"] = "closed"
        hz["verified_at"] = hz["closed_at"] = ts
        hz["effect"] = note or "effective"
        hz["closed_on_time"] = (hz["rectified_at"] or ts) <= hz["deadline"]
    elif action == "reopened":
        if status not in ("rectified", "closed"):
            return bad
        hz["status"] = "reported"
        hz["reopened"] = hz.get("reopened", 0) + 1
        hz["rectified_at"] = hz["verified_at"] = hz["closed_at"] = hz["closed_on_time"] = None
        hz["effect"] = ""
        hz["deadline"] = ts + int(hz.get("deadline_days", 30)) * DAY_MS
        hz["overdue"] = False
    elif action == "withdrawn":
        if status in FINAL:
            return bad
        hz["status"] = "withdrawn"
        hz["closed_at"] = ts
        hz["effect"] = f"withdrawn: {note}" if note else "withdrawn (false positive)"
        hz["overdue"] = False
        hz["use_stopped"] = False
    elif action == "regrade":
        new_grade = report.get("grade")
        if new_grade not in GRADES:
            return Transition(same, False, f"regrade needs grade: one of {list(GRADES)}")
        if status in FINAL or new_grade == grade:
            return bad if status in FINAL else Transition(same, False, f"already graded {grade}")
        hz["grade"] = new_grade
        level = supervision_at_grading.get(str(new_grade), "none")
        if new_grade == "major":  # confirmed on site: listed at least at its grading level
            level = max(level, hz["supervision"], key=SUPERVISION.index)
        hz["supervision"] = level
        note = note or f"{grade} → {new_grade}"
    elif action == "supervise":
        level = SUPERVISION.index(hz["supervision"])
        if status in FINAL or level == len(SUPERVISION) - 1:
            return bad if status in FINAL else Transition(same, False, "already at province level")
        hz["supervision"] = SUPERVISION[level + 1]
    elif action == "stop_use":
        if status in FINAL or hz.get("use_stopped"):
            return bad if status in FINAL else Transition(same, False, "unit already stopped")
        hz["use_stopped"] = True
        hz["use_stopped_at"] = ts
    else:  # return_to_service
        if not hz.get("use_stopped"):
            return Transition(same, False, "unit is not stopped")
        hz["use_stopped"] = False
    _log(hz, ts, action, by, note, role)
    return Transition(hz, True)


def apply_hazard_report(
    hazard: Mapping[str, Any], report: Mapping[str, Any], publisher: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Apply one ``reports/hazard`` body; returns (new hazard dict, whether it changed)."""
    t = transition(hazard, report, publisher=publisher)
    return t.hazard, t.changed


def mark_overdue(hazard: dict[str, Any], now_ms: int) -> bool:
    """Flag an unrectified hazard past its deadline, in place; True if it changed.

    The supervision level does not move: listing a hazard higher is a regulator's decision.
    """
    if hazard["status"] != "reported" or hazard.get("overdue") or now_ms < hazard["deadline"]:
        return False
    hazard["overdue"] = True
    _log(hazard, hazard["deadline"], "overdue", "system", "deadline passed without rectification")
    return True


@dataclass(frozen=True, slots=True)
class RectificationRate:
    """严重隐患治理率 over a window: closed-and-verified ÷ identified (both kept, DESIGN.md §6).

    ``rate`` and ``on_time_rate`` are None when nothing was identified in the window (no
    hazards is not 100 % rectification). Withdrawn (false-positive) hazards are not counted
    as identified; they are counted separately.
    """

    identified: int
    closed: int
    closed_on_time: int
    overdue_open: int
    withdrawn: int = 0
    window: tuple[int, int] = (0, 0)

    @property
    def rate(self) -> float | None:
        return self.closed / self.identified if self.identified else None

    @property
    def on_time_rate(self) -> float | None:
        return self.closed_on_time / self.identified if self.identified else None


def rectification_rate(
    hazards: Iterable[Mapping[str, Any] | Hazard], window: tuple[int, int], grade: str | None = "major"
) -> RectificationRate:
    """Rate over hazards of one grade (``None``: all) identified in ``window`` = [start_ms, end_ms).

    A hazard counts as closed if it was verified closed by the end of the window.
    """
    start, end = window
    identified = closed = on_time = overdue = withdrawn = 0
    for h in hazards:
        d = h.model_dump() if isinstance(h, Hazard) else h
        if grade is not None and d["grade"] != grade:
            continue
        if not start <= d["opened_at"] < end:
            continue
        if d["status"] == "withdrawn":
            withdrawn += 1
            continue
        identified += 1
        verified = d.get("verified_at")
        if d["status"] == "closed" and verified is not None and verified < end:
            closed += 1
            on_time += bool(d.get("closed_on_time"))
        elif d["status"] == "reported" and d["deadline"] < end:
            overdue += 1
    return RectificationRate(identified, closed, on_time, overdue, withdrawn, (start, end))


class HazardBook:
    """Hazards by id, for a worker or a report that keeps them outside the per-unit state."""

    def __init__(self, hazards: Iterable[Mapping[str, Any]] = ()) -> None:
        self.hazards: dict[str, dict[str, Any]] = {h["hazard_id"]: dict(h) for h in hazards}

    def upsert(self, hazard: Mapping[str, Any]) -> None:
        self.hazards[hazard["hazard_id"]] = dict(hazard)

    def apply(
        self, report: Mapping[str, Any], publisher: str | None = None
    ) -> tuple[dict[str, Any] | None, bool]:
        """Apply a hazard report; (None, False) for an unknown hazard id."""
        current = self.hazards.get(str(report.get("hazard_id", "")))
        if current is None:
            return None, False
        new, changed = apply_hazard_report(current, report, publisher)
        if changed:
            self.hazards[new["hazard_id"]] = new
        return new, changed

    def mark_overdue(self, now_ms: int) -> list[dict[str, Any]]:
        """Flag every hazard past its deadline; returns the ones that changed."""
        return [h for h in self.hazards.values() if mark_overdue(h, now_ms)]

    def open(self) -> list[dict[str, Any]]:
        return [h for h in self.hazards.values() if h["status"] not in FINAL]

    def rate(self, window: tuple[int, int], grade: str | None = "major") -> RectificationRate:
        return rectification_rate(self.hazards.values(), window, grade)
