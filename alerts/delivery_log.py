"""The durable delivery record: which page (idempotency key, receiver topic) the broker acknowledged.

Why per page and not per batch: a record written only after a whole batch was acknowledged
let a crash repeat up to a batch of pages (1,349 repeats over five ``kill -9``). One row per
acknowledged publish, written as its PUBACK arrives, bounds what a crash can repeat to the
publishes in flight. SQLite in WAL mode with ``synchronous=NORMAL``: a committed row survives
the process being killed (it is in the OS's hands); only a power loss may drop the last rows,
which again only repeats pages.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

#: rows per INSERT statement of record_many (4 variables a row, well under SQLite's limit)
RECORD_CHUNK = 250
#: topic of a legacy row (the old per-change table): every receiver of that change had it
ALL_RECEIVERS = "*"


class DeliveryLog:
    """Durable record of deliveries (SQLite, WAL): the dedup memory of the alerts stage.

    Thread-safe: the paho network thread records acknowledgements while the main loop looks
    up what a re-read change still owes.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS pages (dedup_key TEXT NOT NULL, receiver_topic TEXT NOT NULL,"
            " item_id TEXT, at_ms INTEGER, PRIMARY KEY (dedup_key, receiver_topic)) WITHOUT ROWID"
        )
        self._adopt_legacy_record()

    def _adopt_legacy_record(self) -> None:
        """A record written by the per-change version counts as delivered to all receivers."""
        legacy = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='delivered'")
        if legacy.fetchone() is None:
            return
        with self._lock:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT OR IGNORE INTO pages SELECT dedup_key, ?, alert_id, at_ms FROM delivered",
                (ALL_RECEIVERS,),
            )
            self.db.execute("DROP TABLE delivered")
            self.db.execute("COMMIT")

    def record(self, key: str, topic: str, item_id: str = "") -> None:
        """One acknowledged page, committed before this returns."""
        with self._lock:
            self.db.execute(
                "INSERT OR IGNORE INTO pages VALUES (?, ?, ?, ?)",
                (key, topic, item_id, int(time.time() * 1000)),
            )

    def record_many(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """(key, topic, item_id) rows, committed before this returns: one multi-row INSERT (one
        statement, so one transaction and one call into SQLite) per ``RECORD_CHUNK`` rows. The
        alerts stage's pager records each burst of PUBACKs so; every call it makes gives the GIL
        away and waits for it again, and BEGIN, executemany, COMMIT were three."""
        now = int(time.time() * 1000)
        rows = list(rows)
        with self._lock:
            for at in range(0, len(rows), RECORD_CHUNK):
                chunk = rows[at : at + RECORD_CHUNK]
                values = ",".join(["(?, ?, ?, ?)"] * len(chunk))  # placeholders only
                self.db.execute(
                    f"INSERT OR IGNORE INTO pages VALUES {values}",
                    [v for k, t, i in chunk for v in (k, t, i, now)],
                )

    def missing(self, key: str, topics: Iterable[str]) -> list[str]:
        """The topics of ``topics`` that have not had this change yet (in the given order)."""
        with self._lock:
            done = {
                row[0]
                for row in self.db.execute("SELECT receiver_topic FROM pages WHERE dedup_key=?", (key,))
            }
        if ALL_RECEIVERS in done:
            return []
        return [t for t in topics if t not in done]

    def seen(self, key: str, topic: str | None = None) -> bool:
        """Was this change delivered to ``topic`` (to any receiver when ``topic`` is None)?"""
        with self._lock:
            if topic is None:
                row = self.db.execute("SELECT 1 FROM pages WHERE dedup_key=? LIMIT 1", (key,)).fetchone()
            else:
                row = self.db.execute(
                    "SELECT 1 FROM pages WHERE dedup_key=? AND receiver_topic IN (?, ?)",
                    (key, topic, ALL_RECEIVERS),
                ).fetchone()
        return row is not None

    def count(self) -> int:
        """Pages recorded (one per change and receiver)."""
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM pages").fetchone()[0])

    def count_changes(self) -> int:
        """Distinct changes with at least one page recorded."""
        with self._lock:
            return int(self.db.execute("SELECT count(DISTINCT dedup_key) FROM pages").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()
