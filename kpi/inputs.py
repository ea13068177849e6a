"""What the KPI stage keeps of the pipeline's records, folded idempotently, in memory and in SQLite.

Delivery from Kafka is at-least-once, so every input is keyed by its natural id and a record
seen twice changes nothing the second time:

| input | key | from |
|---|---|---|
| accident | ``report_id`` (a corrected report replaces the first) | ``reports`` (``accident``) |
| maintenance visit | (device_id, start or ts, kind) | ``reports`` (``maintenance``) |
| inspection | (device_id, ts) | ``reports`` (``inspection``) |
| trapped incident | ``alert_id`` (opened, cleared at its resolution) | ``alerts`` (trapped rules) |
| dispatch action | (alert_id, action, ts) | ``dispatch`` (on trapped alerts: rescue times) |
| hazard | ``hazard_id``, the highest ``updated_at`` wins | ``hazards`` |
| terminal status | device_id, the latest ``ts`` wins | ``status`` |

:func:`parse_record` turns one Kafka record into :class:`Fact` s (pure; a record that is not
JSON or not a known shape raises :class:`BadRecord`). :class:`KpiState` applies facts: the
in-memory copy the KPI rows are computed from, and the same change in SQLite (WAL) inside the
caller's transaction, one per Kafka batch, so a restart resumes from exactly what was folded.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from metrics.inputs import TRAPPED_RULES, Accident, Incident, Inspection, Visit, parse_alert_id
from sesmon.contract.groups import envelopes_of

#: alerts whose dispatch timeline is a rescue (96333: on site within 30 min, freed)
RESCUE_RULES = TRAPPED_RULES
#: what is kept of a hazard record (its ``history`` grows with every step and is not needed)
HAZARD_KEYS = (
    "hazard_id",
    "device_id",
    "kind",
    "district",
    "firm_id",
    "grade",
    "status",
    "supervision",
    "opened_at",
    "updated_at",
    "deadline",
    "overdue",
    "rectified_at",
    "verified_at",
    "closed_at",
    "closed_on_time",
)
#: the streams the stage reads
INPUT_STREAMS = ("reports", "alerts", "hazards", "dispatch", "status", "pipeline")


class BadRecord(ValueError):
    """A record that is not JSON or not a shape the stage knows (counted, skipped, never fatal)."""


@dataclass(frozen=True, slots=True)
class Fact:
    """One thing a record says. ``what`` names the input; ``event_ms`` moves the event clock;
    ``occurred_ms`` is the instant the fact belongs to (which calendar year's row it corrects)."""

    what: str  # accident | visit | inspection | incident | action | hazard | status | clock | ignored
    value: Any = None
    device_id: str = ""
    event_ms: int | None = None
    occurred_ms: int | None = None


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRecord(f"{name} is {type(value).__name__}, not a number")
    return int(value)


def parse_record(stream: str, value: bytes | None) -> list[Fact]:
    """The facts of one record on ``stream`` (grouped device-stream records give one per envelope)."""
    try:
        items = envelopes_of(value or b"")
    except ValueError as exc:  # orjson.JSONDecodeError
        raise BadRecord(f"not JSON: {exc}") from None
    if not items:
        raise BadRecord("neither a JSON object nor an array of objects")
    out: list[Fact] = []
    for item in items:
        try:
            out.append(_PARSERS[stream](item))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, BadRecord):
                raise
            raise BadRecord(f"{stream} record without what it needs: {exc!r}") from None
    return out


def _report(env: dict[str, Any]) -> Fact:
    body = env["body"]
    report = env.get("report")
    ts = _int(body["ts"], "ts")
    if report == "accident":
        acc = Accident.from_report(body)
        if not acc.report_id or not acc.device_id:
            raise BadRecord("accident report without report_id or device_id")
        return Fact("accident", acc, acc.device_id, ts, acc.occurred_ms)
    if report == "maintenance":
        visit = Visit.from_report(body)
        return Fact("visit", visit, visit.device_id, ts, visit.ts_ms)
    if report == "inspection":
        insp = Inspection.from_report(body)
        return Fact("inspection", insp, insp.device_id, ts, insp.ts_ms)
    if report == "hazard":  # the worker folds these into hazard records, which come on `hazards`
        return Fact("ignored", event_ms=ts)
    raise BadRecord(f"unknown report {report!r}")


def _alert(alert: dict[str, Any]) -> Fact:
    alert_id = str(alert["alert_id"])
    changed = _int(alert["changed_at"], "changed_at")
    opened = _int(alert["opened_at"], "opened_at")
    if alert.get("state") not in ("firing", "resolved"):
        raise BadRecord(f"alert state {alert.get('state')!r}")
    if alert.get("rule") not in TRAPPED_RULES:
        return Fact("clock", event_ms=changed)
    device_id = str(alert["device_id"])
    cleared = changed if alert["state"] == "resolved" else None
    return Fact("incident", Incident(device_id, opened, cleared, alert_id), device_id, changed, opened)


def _dispatch(env: dict[str, Any]) -> Fact:
    body = env["body"]
    alert_id = str(body.get("alert_id") or env["alert_id"])
    action = str(body["action"])
    ts = _int(body["ts"], "ts")
    parsed = parse_alert_id(alert_id)
    if parsed is None:
        raise BadRecord(f"alert id {alert_id[:80]!r} is not <device>.<rule>.<opened_ms>")
    device_id, rule, opened = parsed
    if rule not in RESCUE_RULES:
        return Fact("clock", event_ms=ts)
    return Fact("action", (alert_id, action, ts), device_id, ts, opened)


def _hazard(record: dict[str, Any]) -> Fact:
    slim = {k: record[k] for k in HAZARD_KEYS if k in record}
    for name in ("opened_at", "updated_at"):
        slim[name] = _int(slim.get(name), name)
    if not slim.get("hazard_id") or slim.get("grade") is None or slim.get("status") is None:
        raise BadRecord("hazard record without hazard_id, grade or status")
    return Fact("hazard", slim, str(slim.get("device_id", "")), slim["updated_at"], slim["opened_at"])


def _status(env: dict[str, Any]) -> Fact:
    if env.get("type") == "tick":  # the worker's deadman ticks share the stream: not a status
        return Fact("ignored")
    body = env["body"]
    device_id = str(env.get("device_id") or body["device_id"])
    status = body["status"]
    if status not in ("online", "offline"):
        raise BadRecord(f"status {status!r}")
    ts = _int(body.get("ts", env.get("ts")), "ts")
    return Fact("status", (device_id, ts, status == "online"), device_id, ts)


def _pipeline(stats: dict[str, Any]) -> Fact:
    """The worker's watermark (highest device time it evaluated) is the pipeline's event time."""
    if stats.get("stage") != "streams":
        return Fact("ignored")
    watermark = stats.get("event_time_ms")
    if isinstance(watermark, int) and not isinstance(watermark, bool) and watermark > 0:
        return Fact("clock", event_ms=watermark)
    return Fact("ignored")


_PARSERS = {
    "reports": _report,
    "alerts": _alert,
    "dispatch": _dispatch,
    "hazards": _hazard,
    "status": _status,
    "pipeline": _pipeline,
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accidents (report_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,
    occurred_ms INTEGER NOT NULL, deaths INTEGER NOT NULL, serious_injuries INTEGER NOT NULL, grade TEXT);
CREATE TABLE IF NOT EXISTS incidents (alert_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,
    alarm_ms INTEGER NOT NULL, cleared_ms INTEGER);
CREATE TABLE IF NOT EXISTS actions (alert_id TEXT NOT NULL, action TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (alert_id, action, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS visits (device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (device_id, ts_ms, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inspections (device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    passed INTEGER NOT NULL, next_due TEXT NOT NULL, PRIMARY KEY (device_id, ts_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hazards (hazard_id TEXT PRIMARY KEY, updated_at INTEGER NOT NULL, record BLOB);
CREATE TABLE IF NOT EXISTS status (device_id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, online INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (level TEXT NOT NULL, scope_id TEXT NOT NULL, kind TEXT NOT NULL,
    year INTEGER NOT NULL, PRIMARY KEY (level, scope_id, kind, year)) WITHOUT ROWID;
"""

#: a pending row for the current windows (365d, ytd) rather than a closed calendar year
CURRENT = 0
PendingKey = tuple[str, str, str, int]  # (level, scope_id, kind, year or CURRENT)


class KpiState:
    """The folded inputs: dicts the rows are computed from, mirrored in SQLite (``path`` None: memory only).

    Apply facts inside :meth:`batch` (one SQLite transaction); :meth:`apply` returns whether
    the fact changed anything, so a repeat is visible as a repeat.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.accidents: dict[str, Accident] = {}
        self.incidents: dict[str, Incident] = {}
        self.actions: dict[str, dict[tuple[str, int], None]] = {}
        self.visits: dict[str, dict[tuple[int, str], Visit]] = {}
        self.inspections: dict[str, dict[int, Inspection]] = {}
        self.hazards: dict[str, dict[str, Any]] = {}
        self.status: dict[str, tuple[int, bool]] = {}
        self.meta: dict[str, int] = {}
        self.pending: set[PendingKey] = set()
        #: changes applied per kind of input (what a computation cached from them is keyed by)
        self.versions: Counter[str] = Counter()
        self.path = path
        self.db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a process crash
            self.db.executescript(_SCHEMA)
            self._load()

    # ------------------------------------------------------------------ durability

    def _load(self) -> None:
        assert self.db is not None
        q = self.db.execute
        for rid, dev, occ, deaths, inj, grade in q("SELECT * FROM accidents"):
            self.accidents[rid] = Accident(rid, dev, occ, deaths, inj, grade)
        for aid, dev, alarm, cleared in q("SELECT * FROM incidents"):
            self.incidents[aid] = Incident(dev, alarm, cleared, aid)
        for aid, action, ts in q("SELECT * FROM actions"):
            self.actions.setdefault(aid, {})[(action, ts)] = None
        for dev, ts, kind in q("SELECT * FROM visits"):
            self.visits.setdefault(dev, {})[(ts, kind)] = Visit(dev, ts, kind)
        for dev, ts, passed, due in q("SELECT * FROM inspections"):
            self.inspections.setdefault(dev, {})[ts] = Inspection(
                dev, ts, bool(passed), date.fromisoformat(due)
            )
        for hid, _updated, record in q("SELECT * FROM hazards"):
            self.hazards[hid] = orjson.loads(record)
        for dev, ts, online in q("SELECT * FROM status"):
            self.status[dev] = (ts, bool(online))
        self.meta = dict(q("SELECT key, value FROM meta"))
        self.pending = {tuple(row) for row in q("SELECT * FROM pending")}  # type: ignore[misc]

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction: everything applied inside is stored together, or (on an error) not at all."""
        if self.db is None:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _sql(self, statement: str, args: tuple[Any, ...]) -> None:
        if self.db is not None:
            self.db.execute(statement, args)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ------------------------------------------------------------------ the event clock and bookkeeping

    @property
    def event_time_ms(self) -> int:
        return self.meta.get("event_time_ms", 0)

    def set_meta(self, key: str, value: int) -> None:
        if self.meta.get(key) != value:
            self.meta[key] = value
            self._sql("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add_pending(self, keys: Iterable[PendingKey]) -> None:
        for key in keys:
            if key not in self.pending:
                self.pending.add(key)
                self._sql("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)", key)

    def clear_pending(self, keys: Iterable[PendingKey]) -> None:
        for key in list(keys):
            self.pending.discard(key)
            self._sql("DELETE FROM pending WHERE level=? AND scope_id=? AND kind=? AND year=?", key)

    # ------------------------------------------------------------------ folding

    def apply(self, fact: Fact) -> bool:
        """Fold one fact; True if it changed the inputs (False: a repeat, or older than what is known)."""
        handler = getattr(self, f"_apply_{fact.what}", None)
        changed = bool(handler(fact.value)) if handler is not None else False
        if changed:
            self.versions[fact.what] += 1
        return changed

    def _apply_accident(self, acc: Accident) -> bool:
        if self.accidents.get(acc.report_id) == acc:
            return False
        self.accidents[acc.report_id] = acc
        self._sql(
            "INSERT OR REPLACE INTO accidents VALUES (?, ?, ?, ?, ?, ?)",
            (acc.report_id, acc.device_id, acc.occurred_ms, acc.deaths, acc.serious_injuries, acc.grade),
        )
        return True

    def _apply_visit(self, visit: Visit) -> bool:
        mine = self.visits.setdefault(visit.device_id, {})
        if (visit.ts_ms, visit.kind) in mine:
            return False
        mine[(visit.ts_ms, visit.kind)] = visit
        self._sql("INSERT OR IGNORE INTO visits VALUES (?, ?, ?)", (visit.device_id, visit.ts_ms, visit.kind))
        return True

    def _apply_inspection(self, insp: Inspection) -> bool:
        mine = self.inspections.setdefault(insp.device_id, {})
        if mine.get(insp.ts_ms) == insp:
            return False
        mine[insp.ts_ms] = insp
        self._sql(
            "INSERT OR REPLACE INTO inspections VALUES (?, ?, ?, ?)",
            (insp.device_id, insp.ts_ms, int(insp.passed), insp.next_due.isoformat()),
        )
        return True

    def _apply_incident(self, inc: Incident) -> bool:
        known = self.incidents.get(inc.alert_id)
        if known is not None:
            # the first clearing stands: a firing record read again after the resolution changes nothing
            cleared = known.cleared_ms if known.cleared_ms is not None else inc.cleared_ms
            inc = Incident(known.device_id, min(known.alarm_ms, inc.alarm_ms), cleared, inc.alert_id)
            if inc == known:
                return False
        self.incidents[inc.alert_id] = inc
        self._sql(
            "INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?)",
            (inc.alert_id, inc.device_id, inc.alarm_ms, inc.cleared_ms),
        )
        return True

    def _apply_action(self, action: tuple[str, str, int]) -> bool:
        alert_id, what, ts = action
        mine = self.actions.setdefault(alert_id, {})
        if (what, ts) in mine:
            return False
        mine[(what, ts)] = None
        self._sql("INSERT OR IGNORE INTO actions VALUES (?, ?, ?)", action)
        return True

    def _apply_hazard(self, hazard: dict[str, Any]) -> bool:
        known = self.hazards.get(hazard["hazard_id"])
        if known is not None and (known["updated_at"] > hazard["updated_at"] or known == hazard):
            return False
        self.hazards[hazard["hazard_id"]] = hazard
        self._sql(
            "INSERT OR REPLACE INTO hazards VALUES (?, ?, ?)",
            (hazard["hazard_id"], hazard["updated_at"], orjson.dumps(hazard)),
        )
        return True

    def _apply_status(self, status: tuple[str, int, bool]) -> bool:
        """The latest status per unit; True when the unit went online or offline (not a mere refresh)."""
        device_id, ts_ms, online = status
        known = self.status.get(device_id)
        if known is not None and known[0] >= ts_ms:
            return False
        self.status[device_id] = (ts_ms, online)
        self._sql("INSERT OR REPLACE INTO status VALUES (?, ?, ?)", (device_id, ts_ms, int(online)))
        return known is None or known[1] != online

    # ------------------------------------------------------------------ views for the rows

    def online_units(self) -> set[str]:
        """Units whose terminal last said ``online`` (an MQTT Last Will says ``offline``)."""
        return {device for device, (_ts, online) in self.status.items() if online}

    def false_alarms(self) -> set[str]:
        return {aid for aid, acts in self.actions.items() if any(a == "false_alarm" for a, _ in acts)}

    def counts(self) -> dict[str, int]:
        """Sizes of the folded inputs (for the stage's ``pipeline`` record)."""
        return {
            "accidents": len(self.accidents),
            "incidents": len(self.incidents),
            "rescue_timelines": len(self.actions),
            "visits": sum(len(v) for v in self.visits.values()),
            "inspections": sum(len(v) for v in self.inspections.values()),
            "hazards": len(self.hazards),
            "units_with_status": len(self.status),
        }
