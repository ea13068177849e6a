"""``sesmon store``: Kafka → InfluxDB, batched and asynchronous, never stalling the stream.

The main thread reads Kafka, turns records into line protocol (:mod:`store.points`) and cuts
batches (``store_batch_points`` points, or whatever came within ``store_flush_interval_s``).
A record on a stream ingest writes may carry many envelopes (``sesmon.contract.groups``): each
envelope becomes its points; ``records_<stream>`` counts Kafka records, ``envelopes_<stream>``
the envelopes in them, ``bad_envelopes`` those that gave no point and ``bad_records`` records
that hold no envelope at all (not JSON).
A writer thread sends them to InfluxDB (:mod:`store.wire`). While InfluxDB is slow the
batches wait in memory, up to ``store_memory_max_points``; past that, and as soon as a write
fails (InfluxDB down), they go to the disk spool (:mod:`store.spool`), so the stage keeps
reading Kafka — and committing — whatever InfluxDB does. When InfluxDB answers again the
writer sends what is in memory, then the spool, oldest first. Only a full spool
(``store_spool_max_bytes``) stops the reading (partitions paused): even then nothing is dropped.

Delivery is at-least-once: a Kafka offset is committed only once every record before it is
in InfluxDB or in the spool (batches in memory are not durable: a crash re-reads them). A
point written twice is the same series and time with the same values, which InfluxDB
stores once. On a clean stop the memory batches are spooled, so nothing is read again.

The city map's ``unit`` points (:class:`store.points.UnitMap`) ride in the same batches: those a
record causes with its offsets, the periodic refresh of every registry unit on its own (no
offset). At start the stage reads each unit's last ``unit`` point back from InfluxDB, so a
restart does not forget an alert that opened before the offset it resumes from (InfluxDB away at
start: the states rebuild from the records, counted in ``unit_seed_failures``).

Retries follow ``sesmon.runtime.retry`` (backoff with jitter, ends when the stage stops). Points
InfluxDB refuses as invalid (HTTP 400/422: a field type conflict) cannot succeed on a retry:
they are counted, logged and kept under ``<data dir>/store/rejected/`` for inspection.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import urllib3
from confluent_kafka import KafkaError, Message, TopicPartition

from sesmon.contract.registry import Registry
from sesmon.runtime.health import Health, fatal
from sesmon.runtime.kafka import (
    ensure_topics,
    make_consumer,
    make_producer,
    stats_record,
    subscribe_from_start,
)
from sesmon.runtime.retry import Stopping, call_with_retry
from sesmon.runtime.settings import Settings
from store.points import STATE_RANK, STORED_STREAMS, BadRecord, PointMaker, RecordLines, UnitMap
from store.spool import Spool, SpoolFile
from store.wire import TIMEOUT, InfluxUnavailable, InfluxWriter, V1Wire, WriteRejected

log = logging.getLogger("sesmon.store")

#: on stop, how long the writer may go on emptying memory before the rest is spooled
STOP_GRACE_S = 5.0
#: longest wait between two InfluxDB attempts while it is down (also how soon a return is noticed)
RETRY_MAX_WAIT_S = 2.0
#: refused points kept for inspection at most (beyond, only counted)
REJECTED_KEEP_BYTES = 64 * 1024 * 1024
COMMIT_EVERY_S = 0.5
WRITER_COUNTERS = (
    "written_points",
    "written_batches",
    "write_errors",
    "write_ms_last",
    "rejected_points",
    "rejected_batches",
    "spooled_points",
    "spooled_batches",
)
REGISTRY_CHECK_S = 5.0
#: each unit's last ``unit`` point, read at start; a refresh writes one every few minutes, so a week
#: back finds every unit unless the store was away longer (then the states rebuild from the records)
UNIT_SEED_QUERY = (
    "SELECT last(state) AS state, last(mode) AS mode, last(online) AS online, last(firing) AS firing "
    "FROM unit WHERE time > now() - 7d GROUP BY device_id"
)


@dataclass(eq=False)
class Batch:
    """Points of consecutive records and the offsets that become committable once they are durable."""

    body: bytes
    points: int
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per partition
    durable: bool = False


class BatchBuilder:
    """Collects lines until a batch is full or old enough."""

    def __init__(self, max_points: int, max_age_s: float) -> None:
        self.max_points = max(1, max_points)
        self.max_age_s = max_age_s
        self.lines: list[str] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.started = 0.0

    def add(self, lines: list[str], topic: str, partition: int, offset: int) -> None:
        if not self.offsets and not self.lines:
            self.started = time.monotonic()
        self.lines += lines
        self.offsets[(topic, partition)] = offset + 1

    def add_lines(self, lines: list[str]) -> None:
        """Points no Kafka record stands for (the map's refresh): written, nothing to commit."""
        if not lines:
            return
        if not self.offsets and not self.lines:
            self.started = time.monotonic()
        self.lines += lines

    @property
    def full(self) -> bool:
        return len(self.lines) >= self.max_points

    def due(self, now: float) -> bool:
        return bool(self.offsets or self.lines) and (self.full or now - self.started >= self.max_age_s)

    def take(self) -> Batch | None:
        if not self.offsets and not self.lines:
            return None
        body = ("\n".join(self.lines) + "\n").encode() if self.lines else b""
        batch = Batch(body, len(self.lines), self.offsets)
        self.lines, self.offsets = [], {}
        return batch

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        for tp in partitions:
            self.offsets.pop(tp, None)


class PointSink:
    """Writes batches to InfluxDB from its own thread; memory up to a bound, then the spool.

    :meth:`submit` never waits for InfluxDB. Thread-safe: the stage submits, the writer writes.
    """

    def __init__(
        self,
        writer: InfluxWriter,
        spool: Spool,
        memory_max_points: int,
        counters: Counter[str] | None = None,
        health: Health | None = None,
    ) -> None:
        self.writer = writer
        self.spool = spool
        self.memory_max_points = memory_max_points
        self.counters: Counter[str] = counters if counters is not None else Counter()
        for name in WRITER_COUNTERS:  # created here: the writer thread never adds a key (snapshots iterate)
            self.counters.setdefault(name, 0)
        self.health = health
        self.memory: deque[Batch] = deque()
        self.memory_points = 0
        self.current: Batch | SpoolFile | None = None  # being written (taken from memory or spool)
        self.influx_up: bool | None = None  # None: not tried yet
        self.last_error = ""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self.rejected_dir = spool.directory.parent / "rejected"
        self._rejected_bytes = 0

    # ------------------------------------------------------------------ the stream's side

    def start(self) -> PointSink:
        self.thread.start()
        return self

    def submit(self, batch: Batch) -> None:
        """Queue a batch for InfluxDB; past the memory bound, spool it (then it is durable)."""
        if batch.points == 0:
            batch.durable = True
            return
        with self._wake:
            if self.memory_points + batch.points <= self.memory_max_points or not self.memory:
                self.memory.append(batch)
                self.memory_points += batch.points
                self._wake.notify()
                return
        self._spool(batch)

    def _spool(self, batch: Batch) -> None:
        call_with_retry(
            lambda: self.spool.put(batch.body, batch.points),
            None,  # a disk that refuses is retried until it takes it: nothing is dropped
            on=OSError,
            max_wait_s=5.0,
            what="spooling points to disk",
        )
        with self._lock:
            batch.durable = True
            batch.body = b""  # on disk now: free the memory
            self.counters["spooled_points"] += batch.points
            self.counters["spooled_batches"] += 1
        if self.health is not None:
            self.health.progress()  # spooling is the stage doing its job while InfluxDB is away

    @property
    def pending_points(self) -> int:
        current = self.current
        return self.memory_points + self.spool.points + (current.points if isinstance(current, Batch) else 0)

    @property
    def drained(self) -> bool:
        """Nothing waiting for InfluxDB: neither in memory, nor being written, nor in the spool."""
        with self._lock:
            return not self.memory and self.current is None and self.spool.files == 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "influx_up": self.influx_up,
            "influx_api": self.writer.api,
            "memory_points": self.memory_points,
            "spool_points": self.spool.points,
            "spool_files": self.spool.files,
            "spool_bytes": self.spool.bytes,
            "pending_points": self.pending_points,
            "drained": self.drained,
        }

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let the writer empty memory for a while (if InfluxDB is up), then spool what is left."""
        deadline = time.monotonic() + grace_s
        while self.influx_up and self.memory and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self.thread.is_alive():
            self.thread.join(30)
        while self.memory:
            batch = self.memory.popleft()
            self.memory_points -= batch.points
            self._spool(batch)

    # ------------------------------------------------------------------ the writer thread

    def _wait_for_work(self) -> bool:
        with self._wake:
            if not self.memory and self.spool.files == 0:
                self._wake.wait(0.5)
            return bool(self.memory) or self.spool.files > 0

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wait_for_work():
                if self.health is not None:
                    self.health.progress()  # nothing to write is not a stall
                continue
            try:
                call_with_retry(
                    self._write_next,
                    self._stop,
                    on=InfluxUnavailable,
                    max_wait_s=RETRY_MAX_WAIT_S,
                    what="InfluxDB write",
                )
            except Stopping:
                break
            except Exception:  # a bug here must not leave a live stage with a dead writer
                log.exception("InfluxDB writer failed")
                fatal("store", "the InfluxDB writer thread failed")

    def _take_next(self) -> Batch | SpoolFile | None:
        """Memory first (it is what the stream waits on to commit), else the oldest spool file."""
        with self._lock:
            if self.memory:
                batch = self.memory.popleft()
                self.memory_points -= batch.points
                self.current = batch
                return batch
            self.current = self.spool.oldest()
            return self.current

    def _write_next(self) -> None:
        """One attempt at the next batch (retried under ``sesmon.runtime.retry`` while InfluxDB is away).

        A memory batch that fails goes to the spool at once, and while InfluxDB stays away the
        whole memory is spilled there before each attempt: spooled points are durable, so the
        stream's offsets keep being committed during an outage; the attempts are made with the
        oldest spool file.
        """
        if self.influx_up is False:
            self._spill_memory()
        job = self._take_next()
        if job is None:
            return
        try:
            try:
                body = job.body if isinstance(job, Batch) else self.spool.read(job)
            except FileNotFoundError:  # removed by hand: nothing left to write
                log.error("spool file %s vanished (%d points)", job.path, job.points)  # type: ignore[union-attr]
                self._done(job)
                return
            try:
                self._write_once(body)
                self.counters["written_points"] += job.points
                self.counters["written_batches"] += 1
            except WriteRejected as exc:
                self._rejected(body, job.points, exc)
            except InfluxUnavailable:
                if isinstance(job, Batch):
                    self._spool(job)  # durable now; it comes back from the spool
                raise
            self._done(job)
        finally:
            with self._lock:
                self.current = None

    def _spill_memory(self) -> None:
        with self._lock:
            batches = list(self.memory)
            self.memory.clear()
            self.memory_points = 0
        for batch in batches:
            self._spool(batch)

    def _write_once(self, body: bytes) -> None:
        started = time.monotonic()
        try:
            self.writer.write(body)
        except InfluxUnavailable as exc:
            if self.influx_up is not False:
                log.warning("InfluxDB unavailable (%s): spooling points to disk until it is back", exc)
            self.influx_up = False
            self.last_error = str(exc)[:300]
            self.counters["write_errors"] += 1
            raise
        if self.influx_up is False:
            log.info("InfluxDB is back: writing what waited (%d points)", self.pending_points)
        self.influx_up = True
        self.counters["write_ms_last"] = int((time.monotonic() - started) * 1000)
        if self.health is not None:
            self.health.progress()

    def _done(self, job: Batch | SpoolFile) -> None:
        if isinstance(job, Batch):
            with self._lock:
                job.durable = True
                job.body = b""
        else:
            self.spool.remove(job)

    def _rejected(self, body: bytes, points: int, exc: WriteRejected) -> None:
        self.influx_up = True  # it answered
        dropped = exc.dropped if exc.dropped is not None else points
        self.counters["rejected_points"] += dropped
        self.counters["rejected_batches"] += 1
        self.counters["written_points"] += points - dropped  # a partial write keeps the rest
        log.error("InfluxDB refused %d of %d points (not retried): %s", dropped, points, exc)
        if self._rejected_bytes + len(body) > REJECTED_KEEP_BYTES:
            return
        with contextlib.suppress(OSError):
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
            path = self.rejected_dir / f"{time.time_ns():020d}.lp"
            path.write_bytes(f"# {exc}\n".encode() + body)
            self._rejected_bytes += len(body)


class StoreStage:
    """The ``sesmon store`` process: Kafka consumer, point maker, :class:`PointSink`, commits, stats."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.health = Health("store")
        self.counters: Counter[str] = Counter()
        self._stop = threading.Event()
        ensure_topics(settings)
        spool_dir = settings.store_spool_dir or Path(settings.data_dir) / "store" / "spool"
        self.spool = Spool(spool_dir, settings.store_spool_max_bytes)
        self.writer = InfluxWriter(settings)
        self.sink = PointSink(
            self.writer, self.spool, settings.store_memory_max_points, self.counters, self.health
        )
        self.units = (
            UnitMap(self.registry.get, lambda: list(self.registry.units), settings.store_unit_refresh_s)
            if self.registry is not None
            else None
        )
        self.maker = PointMaker(self._place, self.units)
        self.stream_of = {settings.topic(s): s for s in STORED_STREAMS}
        self.count_key = {settings.topic(s): f"records_{s}" for s in STORED_STREAMS}
        for name in ("bad_records", "bad_envelopes", *(f"envelopes_{s}" for s in STORED_STREAMS)):
            self.counters[name] = 0  # in every pipeline record from the start, so a reader finds them
        self.builder = BatchBuilder(settings.store_batch_points, settings.store_flush_interval_s)
        self.batches: deque[Batch] = deque()  # submitted, in order: the durable prefix is committable
        self.paused = False
        self._next_commit = self._next_stats = self._next_registry = 0.0
        self._last_log = 0.0
        self._topics_thread: threading.Thread | None = None
        self.consumer = make_consumer(
            settings, f"{settings.topic_prefix}-store", list(STORED_STREAMS), error_cb=self._on_kafka_error
        )
        subscribe_from_start(
            self.consumer,
            list(self.stream_of),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self.stats_producer = make_producer(
            settings, **{"enable.idempotence": False, "acks": "1", "error_cb": self._on_kafka_error}
        )
        if self.spool.files:
            log.info("%d points from an earlier run wait in the spool %s", self.spool.points, spool_dir)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the stage to end (safe from a signal handler)."""
        self._stop.set()

    def run_forever(self) -> None:
        self.health.watch_thread("main", threading.current_thread())
        self.sink.start()
        self.health.watch_thread("influx_writer", self.sink.thread)
        self._seed_units()
        try:
            while not self._stop.is_set():
                self._flow_control()
                records = self.consumer.consume(self.settings.store_batch_points, 0.1)
                for record in records:
                    self._take(record)
                self.counters["records"] += len(records)
                now = time.monotonic()
                if self.builder.due(now):
                    self._submit()
                self._tick(now)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._submit()
        self.sink.stop()
        self._commit(asynchronous=False)
        self._publish_stats()
        with contextlib.suppress(Exception):
            self.consumer.close()
        self.stats_producer.flush(2)
        self.writer.close()
        log.info("store stage stopped; %d points wait in the spool for the next run", self.spool.points)

    # ------------------------------------------------------------------ Kafka side

    def _take(self, record: Message) -> None:
        if record.error():
            self._on_record_error(record.error())
            return
        topic = record.topic()
        stream = self.stream_of[topic]
        try:
            made = self.maker.record_lines(stream, record.value())
        except BadRecord as exc:
            self.counters["bad_records"] += 1
            self._log_rarely("skipping a record on %s at offset %s: %s", topic, record.offset(), exc)
            made = RecordLines([], 0)
        if made.bad_envelopes:
            self.counters["bad_envelopes"] += made.bad_envelopes
            self._log_rarely(
                "%d envelope(s) of the record on %s at offset %s skipped: %s",
                made.bad_envelopes,
                topic,
                record.offset(),
                made.error,
            )
        self.counters[self.count_key[topic]] += 1
        self.counters[f"envelopes_{stream}"] += made.envelopes
        self.counters["points"] += len(made.lines)
        self.builder.add(made.lines, topic, record.partition(), record.offset())
        if self.builder.full:
            self._submit()

    def _submit(self) -> None:
        batch = self.builder.take()
        if batch is None:
            return
        self.batches.append(batch)
        self.sink.submit(batch)

    def _commit(self, asynchronous: bool = True) -> None:
        offsets: dict[tuple[str, int], int] = {}
        while self.batches and self.batches[0].durable:
            offsets |= self.batches.popleft().offsets
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=asynchronous
            )
            self.counters["commits"] += 1
        except Exception as exc:  # a rebalance or a broker away: the re-read is harmless
            self.counters["commit_errors"] += 1
            self._log_rarely("offset commit failed (records will be read again): %s", exc)

    def _flow_control(self) -> None:
        """Stop reading Kafka while the spool is full; resume once it has room (nothing is dropped)."""
        full = self.spool.full
        if full == self.paused:
            return
        assignment = self.consumer.assignment()
        if full:
            log.warning("spool full (%d bytes): pausing Kafka until InfluxDB takes points", self.spool.bytes)
            self.consumer.pause(assignment)
            self.counters["pauses"] += 1
        else:
            log.info("spool has room again: resuming Kafka")
            self.consumer.resume(assignment)
        self.paused = full

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self.paused:
            consumer.pause(partitions)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Commit what is durable, then stop tracking the lost partitions (their new owner re-reads)."""
        self._commit(asynchronous=False)
        lost = {(tp.topic, tp.partition) for tp in partitions}
        for batch in self.batches:
            for tp in lost:
                batch.offsets.pop(tp, None)
        self.builder.forget(lost)

    def _on_record_error(self, err: KafkaError) -> None:
        self.counters["kafka_errors"] += 1
        if err.fatal():
            fatal("store", f"Kafka consumer: {err}")
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            self._recreate_topics_soon(f"subscribed topics missing ({err})")
            return
        self._log_rarely("Kafka consumer error: %s", err)

    def _on_kafka_error(self, err: KafkaError) -> None:
        try:
            if err.fatal():
                fatal("store", f"Kafka client: {err}")
            self._log_rarely("Kafka: %s (librdkafka retries by itself)", err)
            if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
                self._recreate_topics_soon(f"Kafka connection lost ({err})")
        except Exception:
            log.exception("error in Kafka error callback")

    def _recreate_topics_soon(self, why: str) -> None:
        """A broker that comes back may come back empty (Tansu keeps nothing): recreate our topics."""
        if self._topics_thread is not None and self._topics_thread.is_alive():
            return
        log.warning("%s; making sure the sesmon topics exist", why)

        def recreate() -> None:
            with contextlib.suppress(Stopping):
                call_with_retry(
                    lambda: ensure_topics(self.settings, timeout=5.0),
                    self._stop,
                    max_wait_s=5.0,
                    give_up_after_s=600.0,
                    what="recreating Kafka topics",
                )

        self._topics_thread = threading.Thread(target=recreate, name="store-topics", daemon=True)
        self._topics_thread.start()

    # ------------------------------------------------------------------ periodic work

    def _tick(self, now: float) -> None:
        if now >= self._next_commit:
            self._next_commit = now + COMMIT_EVERY_S
            self._commit()
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_every_s
            self._publish_stats()
        if now >= self._next_registry:
            self._next_registry = now + REGISTRY_CHECK_S
            self._reload_registry()
        if self.units is not None:
            refreshed = self.units.refresh()
            if refreshed:
                self.counters["points"] += len(refreshed)
                self.builder.add_lines(refreshed)
        self.stats_producer.poll(0)

    def snapshot(self) -> dict[str, Any]:
        """Counters, the sink's state and health: what the ``pipeline`` record carries."""
        return (
            dict(self.counters)
            | (self.units.snapshot() if self.units is not None else {})
            | self.sink.snapshot()
            | {
                "uncommitted_batches": len(self.batches),
                "paused": self.paused,
            }
            | self.health.snapshot()
        )

    def _publish_stats(self) -> None:
        with contextlib.suppress(BufferError):  # Kafka away and the queue full: stats are best effort
            self.stats_producer.produce(
                self.settings.topic("pipeline"), key=b"store", value=stats_record("store", self.snapshot())
            )

    def _place(self, device_id: str) -> tuple[str, str] | None:
        unit = self.registry.get(device_id) if self.registry is not None else None
        return (unit.district, unit.firm_id) if unit is not None else None

    def _reload_registry(self) -> None:
        if self.registry is None:
            return
        try:
            if self.registry.reload_if_changed():
                self.maker.forget()
                if self.units is not None:
                    self.units.forget()
                log.info("registry reloaded: %d units", len(self.registry))
        except Exception as exc:  # a bad file keeps the registry in force
            self.counters["registry_reload_failures"] += 1
            log.error("registry changed but cannot be used, keeping the one in force: %s", exc)

    def _seed_units(self) -> None:
        """Each unit's last ``unit`` point, read back once at start (InfluxQL ``/query``, v1 auth)."""
        if self.units is None:
            return
        settings = self.settings
        wire = V1Wire(self.writer.url, settings.influx_db, settings.influx_token)
        params = urlencode({"db": settings.influx_db, "q": UNIT_SEED_QUERY}, quote_via=quote)
        try:
            response = wire.pool.request(
                "GET", f"{wire.url}/query?{params}", headers=wire.headers, timeout=TIMEOUT, retries=False
            )
            if response.status != 200:
                raise InfluxUnavailable(f"/query answered {response.status}: {response.data[:300]!r}")
            answer = orjson.loads(response.data)
            seeded = seed_units(self.units, answer)
            log.info("map states of %d units read back from InfluxDB", seeded)
        except (urllib3.exceptions.HTTPError, InfluxUnavailable, orjson.JSONDecodeError) as exc:
            self.counters["unit_seed_failures"] += 1
            log.warning("could not read the map's unit states back (they rebuild from the records): %s", exc)
        finally:
            wire.close()

    def _log_rarely(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log >= 10.0:
            self._last_log = now
            log.warning(message, *args)


def seed_units(units: UnitMap, answer: dict[str, Any]) -> int:
    """Feed an InfluxQL answer (last state, mode, online, firing per device_id) to ``units``."""
    seeded = 0
    for result in answer.get("results") or ():
        if "error" in result:
            raise InfluxUnavailable(f"InfluxQL error: {result['error']}")
        for series in result.get("series") or ():
            device_id = (series.get("tags") or {}).get("device_id")
            columns = series.get("columns") or []
            for row in series.get("values") or ():
                last = dict(zip(columns, row, strict=False))
                if not device_id or last.get("state") not in STATE_RANK:
                    continue
                firing = [rule for rule in str(last.get("firing") or "").split(",") if rule]
                online = last.get("online") is not False
                units.seed(device_id, last.get("mode"), online, firing, last["state"])
                seeded += 1
    return seeded


def run(settings: Settings, registry: Registry | None = None) -> None:
    """``sesmon store``: run until SIGINT/SIGTERM."""
    stage = StoreStage(settings, registry)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stage.stop())
    stage.run_forever()
