"""Durable state of the response loop: incidents, the changes still to page, accident keys, the clock.

SQLite in WAL mode with ``synchronous=NORMAL``, like :mod:`alerts.delivery_log` (beside it, under
``<data dir>/alerts/``): a committed batch survives the process being killed; only a power loss
may drop the last batches, and then the Kafka offsets of those records were not committed either
(the stage commits offsets only after :meth:`IncidentStore.save` returned), so they are re-read
and re-applied.

Tables:

- ``incidents``: one row per incident (its JSON, :class:`alerts.incidents.Incident`), kept after
  close: closed incidents are the record. ``open`` is indexed (a partial index on the open rows),
  so loading the clock's work at start scans only open incidents.
- ``outbox``: the changes of a batch, written in the same transaction as the incidents they
  changed, until the stage says they were paged (:meth:`mark_delivered`). Without it a crash
  between storing the state and paging would lose a page for good: the re-read input is then a
  no-op (the incident already says it happened) and a clock change has no input at all.
- ``accidents``: accident key -> the alert whose change paged the regulator (exactly one report
  per trapped event, across restarts and across the trapped and trapped_2h incidents).
- ``meta``: the event clock's state (so "now" resumes where it was).

The dispatch keys already applied live in each incident's timeline (an action is a duplicate when
its ``(action, by, ts)`` is already there), so they are stored atomically with the incident and
need no table of their own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from alerts.incidents import Incident, IncidentChange, ResponseLoop

#: file name under ``<data dir>/alerts/``
STORE_FILE = "incidents.sqlite"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS incidents (alert_id TEXT PRIMARY KEY, open INTEGER NOT NULL,"
    " opened_at INTEGER NOT NULL, device_id TEXT NOT NULL, updated_ms INTEGER NOT NULL, body BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS incidents_open ON incidents(opened_at) WHERE open = 1",
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " change_id TEXT NOT NULL UNIQUE, alert_id TEXT NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accidents (key TEXT PRIMARY KEY, alert_id TEXT NOT NULL, at_ms INTEGER)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
)


class IncidentStore:
    """Incidents and their pending changes in SQLite (WAL). Thread-safe (one lock)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: another process (``sesmon alerts list``) reads beside the running stage."""
        self.path = path
        self._lock = threading.Lock()
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self.db.execute(statement)

    @classmethod
    def in_data_dir(cls, data_dir: Path, **kwargs: Any) -> IncidentStore:
        return cls(data_dir / "alerts" / STORE_FILE, **kwargs)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ writes
    def save(
        self,
        incidents: Iterable[Incident],
        changes: Iterable[IncidentChange] = (),
        *,
        accidents: dict[str, str] | None = None,
        clock: dict[str, Any] | None = None,
    ) -> None:
        """One batch in one transaction: the incidents as they now stand, the changes to page,
        the accident keys reported and the clock state. Returns once committed."""
        now = int(time.time() * 1000)
        rows = [(i.alert_id, int(i.is_open), i.opened_at, i.device_id, now, i.to_json()) for i in incidents]
        out = [(c.change_id, c.alert_id, c.to_json()) for c in changes]
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?)", rows)
            # a change re-made after a crash has the same id: keep the first (it may be half-paged)
            db.executemany("INSERT OR IGNORE INTO outbox (change_id, alert_id, body) VALUES (?, ?, ?)", out)
            if accidents:
                db.executemany(
                    "INSERT OR IGNORE INTO accidents VALUES (?, ?, ?)",
                    [(key, alert_id, now) for key, alert_id in accidents.items()],
                )
            if clock is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (orjson.dumps(clock),))

    def commit(
        self, loop: ResponseLoop, changes: Iterable[IncidentChange], clock: dict[str, Any] | None
    ) -> None:
        """Store what ``loop`` changed since the last commit (its dirty incidents, new accident keys)
        with ``changes`` and the clock, in one transaction: call before committing Kafka offsets."""
        self.save(loop.take_dirty(), changes, accidents=loop.take_accidents(), clock=clock)

    def mark_delivered(self, change_ids: Iterable[str]) -> None:
        """These changes were paged to every receiver (the delivery log has each page)."""
        ids = [(c,) for c in change_ids]
        if ids:
            with self._transaction() as db:
                db.executemany("DELETE FROM outbox WHERE change_id = ?", ids)

    # ------------------------------------------------------------------ reads
    def get(self, alert_id: str) -> Incident | None:
        with self._lock:
            row = self.db.execute("SELECT body FROM incidents WHERE alert_id = ?", (alert_id,)).fetchone()
        return Incident.from_json(row[0]) if row else None

    def get_many(self, alert_ids: Iterable[str]) -> dict[str, Incident]:
        """The stored incidents among ``alert_ids`` (one query per 500: the stage asks per batch)."""
        ids = list(dict.fromkeys(alert_ids))
        rows: list[tuple[str, bytes]] = []
        with self._lock:
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT alert_id, body FROM incidents WHERE alert_id IN ({marks})"  # placeholders only
                rows += self.db.execute(sql, chunk).fetchall()
        return {alert_id: Incident.from_json(body) for alert_id, body in rows}

    def load_open(self) -> list[Incident]:
        """Every open incident (the loop's working set at start), oldest first."""
        return self.list_open()

    def list_open(self, limit: int | None = None) -> list[Incident]:
        """Open incidents, oldest first (``sesmon alerts list``); reads only the open index."""
        sql = "SELECT body FROM incidents WHERE open = 1 ORDER BY opened_at, alert_id"
        with self._lock:
            if limit is None:
                rows = self.db.execute(sql).fetchall()
            else:
                rows = self.db.execute(sql + " LIMIT ?", (limit,)).fetchall()
        return [Incident.from_json(r[0]) for r in rows]

    def pending_changes(self) -> list[IncidentChange]:
        """Changes stored but not yet marked paged, in the order they were made (page them again)."""
        with self._lock:
            rows = self.db.execute("SELECT body FROM outbox ORDER BY seq").fetchall()
        return [IncidentChange.model_validate_json(r[0]) for r in rows]

    def accident_keys(self) -> dict[str, str]:
        """Accident key -> the alert whose change reported it to the regulator."""
        with self._lock:
            return dict(self.db.execute("SELECT key, alert_id FROM accidents").fetchall())

    def clock_state(self) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE name = 'clock'").fetchone()
        return orjson.loads(row[0]) if row else None

    def count(self, *, open_only: bool = False) -> int:
        sql = "SELECT count(*) FROM incidents" + (" WHERE open = 1" if open_only else "")
        with self._lock:
            return int(self.db.execute(sql).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()
