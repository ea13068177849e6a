"""The plain inputs of the KPIs, and how they are read from the records the pipeline carries.

Each input is a small frozen dataclass built from the wire shape (a report body, an alert
record, a dispatch action, a hazard record) with a ``from_*`` constructor, so the KPI
functions never parse JSON and a live computation can fold Kafka records into them:

| input | from | Kafka topic |
|---|---|---|
| :class:`Accident` | ``AccidentReport`` body (``reports/accident``) | ``reports`` |
| :class:`Incident` | trapped-rule alerts + ``false_alarm`` actions | ``alerts``, ``dispatch`` |
| :class:`DispatchTimeline` | an alert's ``opened_at`` + its dispatch actions | ``alerts``, ``dispatch`` |
| :class:`Visit` | ``MaintenanceReport`` body | ``reports`` |
| :class:`Inspection` | ``InspectionReport`` body | ``reports`` |
| hazard records | ``rules.hazards.Hazard`` dicts as published (latest per ``hazard_id``) | ``hazards`` |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

#: rules whose alerts are trapped-passenger incidents (困人): between floors / at a landing, and
#: mains lost with passengers held (the two inhibit each other: one alert per incident)
TRAPPED_RULES = frozenset({"elevator.trapped", "elevator.power_loss_occupied"})
#: maintenance kinds that are maintenance visits (a repair call is not one)
MAINTENANCE_VISITS = frozenset({"routine_15d", "quarterly", "semiannual", "annual"})


def field(record: Any, name: str, default: Any = None) -> Any:
    """``record[name]`` for a mapping, ``record.name`` for a model or dataclass."""
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def parse_alert_id(alert_id: str) -> tuple[str, str, int] | None:
    """``{device_id}.{rule}.{opened_ms}`` → (device_id, rule, opened_ms); device ids have no dots."""
    parts = alert_id.split(".")
    if len(parts) < 3 or not parts[-1].isdigit():
        return None
    return parts[0], ".".join(parts[1:-1]), int(parts[-1])


@dataclass(frozen=True, slots=True)
class Accident:
    """One accident (事故 or 相关事故) on a unit, dated by when it happened."""

    report_id: str
    device_id: str
    occurred_ms: int
    deaths: int = 0
    serious_injuries: int = 0
    grade: str = "general"

    @classmethod
    def from_report(cls, report: Any) -> Accident:
        """From a ``sesmon.contract.schemas.AccidentReport`` or its body: ``ts`` is when it happened."""
        return cls(
            report_id=str(field(report, "report_id")),
            device_id=str(field(report, "device_id")),
            occurred_ms=int(field(report, "ts")),
            deaths=int(field(report, "deaths", 0) or 0),
            serious_injuries=int(field(report, "serious_injuries", 0) or 0),
            grade=str(field(report, "grade", "general")),
        )


@dataclass(frozen=True, slots=True)
class Incident:
    """A trapped-passenger alarm on a unit: raised at ``alarm_ms``, cleared at ``cleared_ms`` (None: open)."""

    device_id: str
    alarm_ms: int
    cleared_ms: int | None = None
    alert_id: str = ""
    false_alarm: bool = False


@dataclass(frozen=True, slots=True)
class DispatchTimeline:
    """One alarm and the responders' actions on it (接警 → 派单 → 接单 → 到场 → 救出 → …)."""

    alert_id: str
    device_id: str
    alarm_ms: int
    actions: tuple[tuple[str, int], ...] = ()  # (action, ts) in the order reported

    def first(self, action: str) -> int | None:
        """When ``action`` was first reported (None: never)."""
        times = [ts for a, ts in self.actions if a == action]
        return min(times) if times else None

    @property
    def false_alarm(self) -> bool:
        return any(a == "false_alarm" for a, _ in self.actions)

    @property
    def on_site_ms(self) -> int | None:
        return self.first("on_site")

    @property
    def freed_ms(self) -> int | None:
        return self.first("freed")

    @property
    def arrival_ms(self) -> int | None:
        """On site minus alarm (None when nobody has arrived)."""
        on_site = self.on_site_ms
        return None if on_site is None else on_site - self.alarm_ms

    @property
    def freeing_ms(self) -> int | None:
        """Freed minus on site (None unless both happened)."""
        on_site, freed = self.on_site_ms, self.freed_ms
        return None if on_site is None or freed is None else freed - on_site


@dataclass(frozen=True, slots=True)
class Visit:
    """A maintenance visit (TSG T5002: at least every 15 days)."""

    device_id: str
    ts_ms: int
    kind: str = "routine_15d"

    @classmethod
    def from_report(cls, report: Any) -> Visit:
        """From a ``MaintenanceReport`` or its body; the visit time is its ``start`` when given."""
        start = field(report, "start")
        return cls(
            str(field(report, "device_id")),
            int(start if start is not None else field(report, "ts")),
            str(field(report, "kind", "routine_15d")),
        )


@dataclass(frozen=True, slots=True)
class Inspection:
    """A periodic inspection result and the next due date it sets."""

    device_id: str
    ts_ms: int
    passed: bool
    next_due: date

    @classmethod
    def from_report(cls, report: Any) -> Inspection:
        due = field(report, "next_due")
        return cls(
            str(field(report, "device_id")),
            int(field(report, "ts")),
            field(report, "result") == "pass",
            due if isinstance(due, date) else date.fromisoformat(str(due)),
        )


# --------------------------------------------------------------------------- folding records


def fold_timelines(alerts: Iterable[Any], actions: Iterable[Any]) -> list[DispatchTimeline]:
    """Dispatch timelines from alert records and ``DispatchAction`` bodies (any order, repeats harmless).

    The alarm time is the alert's ``opened_at`` (when the condition began); an action whose
    alert record was not seen takes it from its ``alert_id``. Repeated actions (same alert,
    action and ts: an at-least-once redelivery) count once.
    """
    opened: dict[str, tuple[str, int]] = {}
    for alert in alerts:
        aid = str(field(alert, "alert_id", ""))
        if aid and aid not in opened:
            opened[aid] = (str(field(alert, "device_id", "")), int(field(alert, "opened_at")))
    by_alert: dict[str, dict[tuple[str, int], None]] = {}
    for action in actions:
        aid = str(field(action, "alert_id", ""))
        by_alert.setdefault(aid, {})[(str(field(action, "action")), int(field(action, "ts")))] = None
    out = []
    for aid, acts in by_alert.items():
        known = opened.get(aid)
        if known is None:
            parsed = parse_alert_id(aid)
            if parsed is None:
                continue
            known = (parsed[0], parsed[2])
        out.append(DispatchTimeline(aid, known[0], known[1], tuple(acts)))
    return out


def fold_incidents(
    alerts: Iterable[Any], actions: Iterable[Any] = (), rules: Iterable[str] = TRAPPED_RULES
) -> list[Incident]:
    """Trapped incidents from alert records (firing and resolved changes) and dispatch actions.

    One incident per ``alert_id``: its first ``opened_at``, cleared at the ``changed_at`` of its
    resolution, a false alarm if any dispatch action on it says ``false_alarm``.
    """
    wanted = frozenset(rules)
    false_alarms = {str(field(a, "alert_id", "")) for a in actions if field(a, "action") == "false_alarm"}
    found: dict[str, Incident] = {}
    for alert in alerts:
        if field(alert, "rule") not in wanted:
            continue
        aid = str(field(alert, "alert_id"))
        prev = found.get(aid)
        cleared = prev.cleared_ms if prev else None
        if field(alert, "state") == "resolved":
            cleared = int(field(alert, "changed_at"))
        found[aid] = Incident(
            device_id=str(field(alert, "device_id")),
            alarm_ms=int(field(alert, "opened_at")),
            cleared_ms=cleared,
            alert_id=aid,
            false_alarm=aid in false_alarms,
        )
    return list(found.values())
