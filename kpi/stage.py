"""``sesmon kpi``: fold the pipeline's low-rate streams into KPI inputs and emit ``safety_kpi`` rows.

Reads ``reports``, ``alerts``, ``hazards``, ``dispatch``, ``status`` and ``pipeline`` (never
telemetry: the stage stays off the per-reading hot path) with its own consumer group. Each
Kafka batch is folded (:mod:`kpi.inputs`) in ONE SQLite transaction under
``<data dir>/kpi/``, and the batch's offsets are committed only after that transaction:
at-least-once delivery with idempotent folding, so a crash re-reads at most a batch and
counts nothing twice.

Time is event time. "Now" is the highest event time seen (alerts' ``changed_at``, reports'
``ts``, hazards' ``updated_at``, dispatch and status ``ts``, the worker's ``event_time_ms`` on
``pipeline``), never the wall clock; the wall clock only refuses to let a clock far in the
future (``SESMON_KPI_MAX_AHEAD_S``) move it.

Every ``SESMON_KPI_EVERY_S`` and at stop the stage recomputes (:mod:`kpi.rows`) the rows of
the scopes that a folded record touched, for the trailing 365 days and the year to date up
to now; every scope at start, when the registry changes and when the event-time day turns
(windows slide, inspections fall due). A record from an earlier calendar year also marks that
year's ``ytd`` row, re-emitted as of the year's end (its last millisecond): a late report
corrects the period it belongs to. When now crosses into a new year, every scope's closing
row of the old year is emitted. Which rows are owed is kept in SQLite with the inputs, so a
crash between folding and emitting owes them still.

Rows go to the Kafka stream ``kpi`` (key ``scope|scope_id|kind|window``; value tags, fields,
time), which the store stage writes to InfluxDB as ``safety_kpi``. Run ONE kpi process per
pipeline: the KPIs are city-wide sums, so its state is not partitioned.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message

from kpi.inputs import CURRENT, INPUT_STREAMS, BadRecord, Fact, KpiState, PendingKey, parse_record
from kpi.rows import Cell, Fleet, KpiRow, RowComputer, year_window
from metrics.scope import Scope
from metrics.windows import kpi_windows
from sesmon.contract.registry import Registry
from sesmon.contract.time import local_date
from sesmon.runtime.health import Health, fatal
from sesmon.runtime.kafka import ensure_topics, make_consumer, make_producer, stats_record
from sesmon.runtime.settings import Settings

log = logging.getLogger("sesmon.kpi")

#: pending key meaning "every scope" (a year rolled over: every scope's closing row is owed)
ALL = ("*", "*", "*")
BATCH_RECORDS = 1000
REGISTRY_CHECK_S = 5.0
FLUSH_TIMEOUT_S = 30.0


def year_of(ts_ms: int) -> int:
    return local_date(ts_ms).year


class KpiStage:
    """The ``sesmon kpi`` process: consumer, durable state, periodic rows, stats."""

    def __init__(self, settings: Settings, registry: Registry | None = None, *, consume: bool = True) -> None:
        self.settings = settings
        self.registry = registry
        self.health = Health("kpi")
        self.counters: Counter[str] = Counter()
        for name in ("records", "facts", "folded", "repeats", "bad_records", "rows_emitted", "recomputes"):
            self.counters[name] = 0  # in every pipeline record from the start
        self._stop = threading.Event()
        self.state = KpiState(Path(settings.data_dir) / "kpi" / "state.sqlite")
        self.fleet = Fleet(registry.units if registry is not None else {})
        self.computer = RowComputer(self.fleet)
        if registry is None:
            log.warning("no registry (SESMON_REGISTRY): every unit is unknown, every rate has no denominator")
        self._full = True  # every scope at start: whatever the last run emitted, the windows moved since
        self._last_log = 0.0
        self._next_kpi = self._next_stats = self._next_registry = 0.0
        self._delivery_errors = 0
        self.last_rows: list[KpiRow] = []
        self.consumer = None
        if consume:
            ensure_topics(settings, [*INPUT_STREAMS, "kpi"])
            self.consumer = make_consumer(
                settings, f"{settings.topic_prefix}-kpi", list(INPUT_STREAMS), error_cb=self._on_kafka_error
            )
        self.stream_of = {settings.topic(s): s for s in INPUT_STREAMS}
        self.producer = make_producer(settings, error_cb=self._on_kafka_error) if consume else None

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the stage to end (safe from a signal handler)."""
        self._stop.set()

    def run_forever(self) -> None:
        assert self.consumer is not None
        self.health.watch_thread("main", threading.current_thread())
        self._next_kpi = time.monotonic() + min(self.settings.kpi_every_s, 1.0)  # first rows soon after start
        try:
            while not self._stop.is_set():
                records = self.consumer.consume(BATCH_RECORDS, 0.2)
                if records:
                    self.fold_records(records)
                    self.consumer.commit(asynchronous=True)  # only now: the batch is in SQLite
                self.health.progress()
                self._tick(time.monotonic())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.emit()
        except Exception:
            log.exception("emitting the last KPI rows failed (they are still owed: the next run emits them)")
        assert self.consumer is not None
        with contextlib.suppress(Exception):
            self.consumer.commit(asynchronous=False)
        self._publish_stats()
        with contextlib.suppress(Exception):
            self.consumer.close()
        if self.producer is not None:
            self.producer.flush(5)
        self.state.close()
        log.info("kpi stage stopped")

    # ------------------------------------------------------------------ folding

    def fold_records(self, records: list[Message]) -> None:
        """Fold a Kafka batch in one SQLite transaction (the offsets are committed after it)."""
        batch: list[tuple[str, list[Fact]]] = []
        for record in records:
            if record.error():
                self._on_record_error(record.error())
                continue
            stream = self.stream_of.get(record.topic(), "")
            self.counters["records"] += 1
            try:
                batch.append((stream, parse_record(stream, record.value())))
            except BadRecord as exc:
                self.counters["bad_records"] += 1
                self._log_rarely(
                    "skipping a record on %s at offset %s: %s", record.topic(), record.offset(), exc
                )
        self.fold(fact for _stream, facts in batch for fact in facts)

    def fold(self, facts: Any) -> None:
        """Apply facts, move the event clock and note the rows they make owed (one transaction)."""
        wall_ms = time.time() * 1000
        max_ahead_ms = self.settings.kpi_max_ahead_s * 1000
        with self.state.batch():
            for fact in facts:
                self.counters["facts"] += 1
                if fact.what == "ignored":
                    self.counters["ignored"] += 1
                if fact.event_ms is not None:
                    if fact.event_ms > wall_ms + max_ahead_ms:
                        self.counters["future_event_time"] += 1
                    else:
                        self._advance(fact.event_ms)
                if fact.what in ("clock", "ignored"):
                    continue
                if not self.state.apply(fact):
                    self.counters["repeats"] += 1
                    continue
                self.counters["folded"] += 1
                self.counters[f"folded_{fact.what}"] += 1
                self.state.add_pending(self._owed(fact))
                if fact.what == "status":
                    self.computer.forget_online([self._cell(fact)])
                else:
                    self.computer.forget([self._cell(fact)])

    def _advance(self, event_ms: int) -> None:
        """Move "now"; crossing into a new calendar year makes every scope's closing rows owed."""
        now = self.state.event_time_ms
        if event_ms <= now:
            return
        if now > 0:
            for year in range(year_of(now), year_of(event_ms)):
                self.state.add_pending([(*ALL, year)])
        self.state.set_meta("event_time_ms", event_ms)

    def _cell(self, fact: Fact) -> Cell:
        if fact.what == "hazard":
            return self.fleet.hazard_cell(fact.value)
        return self.fleet.cell_of.get(fact.device_id, ("", "", "", 0))

    def _owed(self, fact: Fact) -> list[PendingKey]:
        """The rows a folded fact changes: its unit's (or hazard's) scopes, now and in its own past year."""
        if fact.what == "hazard":
            scopes = self.fleet.scopes_of_cell(self.fleet.hazard_cell(fact.value))
        else:
            scopes = self.fleet.scopes_of_device(fact.device_id)
        years = [CURRENT]
        now = self.state.event_time_ms
        if fact.occurred_ms is not None and now > 0 and year_of(fact.occurred_ms) < year_of(now):
            years.append(year_of(fact.occurred_ms))
        return [(s.level, s.scope_id, s.kind, y) for s in scopes for y in years]

    # ------------------------------------------------------------------ rows

    def emit(self) -> list[KpiRow]:
        """Compute the owed rows, produce them to ``kpi`` and, once Kafka has them, forget they were owed."""
        now = self.state.event_time_ms
        if now <= 0:
            return []
        day = local_date(now).toordinal()
        full = self._full or self.state.meta.get("emitted_day") != day
        pending = set(self.state.pending)
        current = [Scope(*key[:3]) for key in pending if key[3] == CURRENT and key[:3] != ALL]
        if full or (*ALL, CURRENT) in pending:
            current = self.fleet.scopes + current
        years: dict[int, list[Scope]] = {}
        for level, scope_id, kind, year in pending:
            if year == CURRENT:
                continue
            if (level, scope_id, kind) == ALL:
                years.setdefault(year, []).extend(self.fleet.scopes)
            else:
                years.setdefault(year, []).append(Scope(level, scope_id, kind))  # type: ignore[arg-type]
        if not current and not years:
            return []
        started = time.perf_counter()
        # windows are half-open [start, end): end one past now, so what happened at now counts
        windows = kpi_windows(now + 1)
        rows = self.computer.rows(self.state, current, windows, time_ms=now) if current else []
        for year, scopes in sorted(years.items()):
            rows += self.computer.rows(self.state, scopes, [year_window(year)], closed=True)
        self.counters["recompute_ms_last"] = int((time.perf_counter() - started) * 1000)
        self.counters["recomputes"] += 1
        if not self._produce(rows):
            return []  # still owed: the next tick tries again
        with self.state.batch():
            self.state.clear_pending(pending)
            self.state.set_meta("emitted_day", day)
            self.state.set_meta("emitted_now_ms", now)
        self._full = False
        self.counters["rows_emitted"] += len(rows)
        self.last_rows = rows
        return rows

    def _produce(self, rows: list[KpiRow]) -> bool:
        """True once Kafka acknowledged every row (acks=all)."""
        if self.producer is None:
            return True
        self._delivery_errors = 0
        topic = self.settings.topic("kpi")
        for row in rows:
            while True:
                try:
                    self.producer.produce(
                        topic,
                        key=row.key().encode(),
                        value=orjson.dumps(row.record()),
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
        left = self.producer.flush(FLUSH_TIMEOUT_S)
        if left or self._delivery_errors:
            self.counters["emit_failures"] += 1
            self._log_rarely(
                "KPI rows not acknowledged by Kafka (%d left, %d errors); retrying",
                left,
                self._delivery_errors,
            )
            return False
        return True

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._delivery_errors += 1

    # ------------------------------------------------------------------ periodic work

    def _tick(self, now: float) -> None:
        if now >= self._next_registry:
            self._next_registry = now + REGISTRY_CHECK_S
            self._reload_registry()
        if now >= self._next_kpi:
            self._next_kpi = now + self.settings.kpi_every_s
            self.emit()
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_every_s
            self._publish_stats()
        if self.producer is not None:
            self.producer.poll(0)

    def snapshot(self) -> dict[str, Any]:
        """Counters, the clock, the state's sizes and health: what the ``pipeline`` record carries."""
        return (
            dict(self.counters)
            | {
                "event_time_ms": self.state.event_time_ms,
                "units": len(self.fleet.units),
                "rows_owed": len(self.state.pending),
                "state": self.state.counts(),
            }
            | self.health.snapshot()
        )

    def _publish_stats(self) -> None:
        if self.producer is None:
            return
        with contextlib.suppress(BufferError):  # stats are best effort
            self.producer.produce(
                self.settings.topic("pipeline"), key=b"kpi", value=stats_record("kpi", self.snapshot())
            )

    def _reload_registry(self) -> None:
        if self.registry is None:
            return
        try:
            if self.registry.reload_if_changed():
                self.fleet = Fleet(self.registry.units)
                self.computer = RowComputer(self.fleet)
                self._full = True  # every denominator may have moved
                log.info("registry reloaded: %d units", len(self.registry))
        except Exception as exc:  # a bad file keeps the registry in force
            self.counters["registry_reload_failures"] += 1
            log.error("registry changed but cannot be used, keeping the one in force: %s", exc)

    def _on_record_error(self, err: KafkaError) -> None:
        self.counters["kafka_errors"] += 1
        if err.fatal():
            fatal("kpi", f"Kafka consumer: {err}")
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            with contextlib.suppress(Exception):
                ensure_topics(self.settings, [*INPUT_STREAMS, "kpi"], timeout=5.0)
            return
        self._log_rarely("Kafka consumer error: %s", err)

    def _on_kafka_error(self, err: KafkaError) -> None:
        try:
            if err.fatal():
                fatal("kpi", f"Kafka client: {err}")
            self._log_rarely("Kafka: %s (librdkafka retries by itself)", err)
        except Exception:
            log.exception("error in Kafka error callback")

    def _log_rarely(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log >= 10.0:
            self._last_log = now
            log.warning(message, *args)


def run(settings: Settings, registry: Registry | None = None) -> None:
    """``sesmon kpi``: run until SIGINT/SIGTERM (the last rows are emitted on the way out)."""
    stage = KpiStage(settings, registry)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stage.stop())
    stage.run_forever()
