"""The Faust worker: decode, call the rules, keep per-unit state in a Table, emit alerts.

Agents stay thin on purpose (DESIGN.md §1): every decision is made in ``rules/`` which has
no Faust import. Settings below answer the traps measured in stack.md:

- ``store="rocksdb://"`` with ``recovery_consistency_check=False``: Tansu reports wrong end
  offsets (K1), so in-memory tables lose their last updates on recovery while RocksDB
  tables recovered exactly. RocksDB tables need per-event iteration (a current event).
- ``table_standby_replicas=0``: with standby replicas two workers over-counted by 7-37 %.
- ``broker_session_timeout=10``: Tansu holds the first join for half the session timeout.
- at-least-once (no exactly-once: Tansu has no transactions for aiokafka, K3); Faust flushes
  the producer before it commits offsets, and alert ids are deterministic, so a redelivered
  reading yields the same alert id and the alerts stage drops the repeat.
- the web server is off (it binds 0.0.0.0:6066 by default, and two workers would clash).

Health (``sesmon.runtime.health``): a Faust consumer can stall without a word (stack.md), so a probe
thread of our own asks Kafka, outside Faust, how far the input partitions go; records waiting
while no batch completes is reported as ``stalled`` (and, for long, ends the process so its
supervisor restarts it). Losing every broker also ends it: a broker that comes back empty
(Tansu keeps nothing, K7) would otherwise meet our stale offsets, and a fresh start re-reads
the new topics from the beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from typing import Any

import faust
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from rules import RuleEngine
from rules.catalogue_store import store_catalogue
from sesmon.contract.groups import GROUP_COUNT_HEADER, encode_group, envelopes_of, partition_of
from sesmon.contract.registry import Registry
from sesmon.runtime.gc_pauses import GcPauses
from sesmon.runtime.health import Health, fatal
from sesmon.runtime.kafka import client_config, dumps, ensure_topics, stats_record
from sesmon.runtime.memory_report import start_memory_report
from sesmon.runtime.settings import Settings

from .faust_private import limit_fetch_wait, pace_fetches, start_uncommitted_at_zero
from .lag_guard import TickLagGuard
from .unit_cache import UnitCache, iter_bucket

log = logging.getLogger("sesmon.streams")

DEVICE_STREAMS = ("telemetry", "events", "status", "reports")
DUE_INDEX_SLICE = 500  # units indexed between two yields to the event loop
TICKS_PER_RECORD = 500  # deadman ticks grouped in one Kafka record
QUIET_S = 1.0  # no batch this long: a checkpoint under way is finished, or one begun, at once
CHECKPOINT_SLOW_MS = 250  # a checkpoint step this long (readings wait for it) is logged


class KafkaProbe:
    """Asks Kafka, from its own thread and client, where the worker's input partitions end.

    Why outside Faust: Faust's own view (its fetcher's high watermarks) freezes exactly when
    its consumer stalls. ``ends`` under-reports by up to one record batch on Tansu (stack.md
    K1), so "records waiting" is never over-stated. ``on_kafka_lost`` is called (from this
    thread) once every broker is down, or an input topic is gone, after we had been connected.
    """

    def __init__(
        self, settings: Settings, topics: list[str], on_kafka_lost: Any, every_s: float = 2.0
    ) -> None:
        self.topics = topics
        self.every_s = every_s
        self.on_kafka_lost = on_kafka_lost
        self.ends: dict[tuple[str, int], int] = {}
        self.checked_ms = 0  # when ``ends`` was last refreshed
        self.connected = False
        self._stop = threading.Event()
        self._admin = AdminClient(client_config(settings, error_cb=self._on_error))
        self.thread = threading.Thread(target=self._run, name="kafka-probe", daemon=True)

    def start(self) -> KafkaProbe:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self.connected:
            self.on_kafka_lost(f"every Kafka broker is down ({err.str()})")

    def _run(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.every_s
                try:
                    self.check()
                except Exception as exc:  # Kafka away: the last answer stays, marked by its age
                    log.debug("Kafka probe failed: %r", exc)
            # serves error_cb: a lost broker is noticed within this, before it can come back
            self._admin.poll(0.2)

    def check(self) -> None:
        metadata = self._admin.list_topics(timeout=5)
        missing = [t for t in self.topics if t not in metadata.topics]
        if missing and self.connected:
            self.on_kafka_lost(f"input topic(s) {', '.join(missing)} are gone from Kafka")
        self.connected = True
        wanted = {
            TopicPartition(t, p): OffsetSpec.latest()
            for t in self.topics
            if t in metadata.topics
            for p in metadata.topics[t].partitions
        }
        ends: dict[tuple[str, int], int] = {}
        for tp, future in self._admin.list_offsets(wanted, request_timeout=5).items():
            with contextlib.suppress(KafkaException):
                ends[(tp.topic, tp.partition)] = int(future.result(timeout=6).offset)
        self.ends = ends
        self.checked_ms = int(time.time() * 1000)


def reload_registry_safely(registry: Registry, counters: Counter[str]) -> bool:
    """Reload the registry if its file changed; a bad file keeps the one in force.

    Why catch everything: the worker must never die of a reload (a ``csv.Error`` for one
    oversized field once ended it). The failure is logged with its reason and counted in
    ``registry_reload_failures``, which the ``pipeline`` record and the board show.
    """
    try:
        if registry.reload_if_changed():
            counters["registry_reloads"] += 1
            counters["registry_units"] = len(registry)
            log.info("registry reloaded: %d units", len(registry))
            return True
    except Exception as exc:
        counters["registry_reload_failures"] += 1
        log.error(
            "registry changed but cannot be used, keeping the %d units in force: %s", len(registry), exc
        )
    return False


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Bounded RocksDB memory per table partition (see the settings' comment)."""
    mib = 1024 * 1024
    return {
        "write_buffer_size": settings.worker_rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.worker_rocksdb_block_cache_mb * mib,
        "block_cache_compressed_size": settings.worker_rocksdb_block_cache_mb * mib,
    }


def create_app(settings: Settings, registry: Registry | None, engine: RuleEngine | None = None) -> faust.App:
    engine = engine or RuleEngine()
    if engine.catalogue.source:  # the catalogue that runs is kept, for replay (rules/catalogue_store.py)
        store_catalogue(settings.data_dir, engine.catalogue)  # event time: none known before the first batch
    limit_fetch_wait(settings.worker_fetch_wait_ms)  # Faust's 1.5 s is a latency floor on Tansu
    pace_fetches(settings.worker_fetch_interval_ms)  # a fetch per record taken cost Tansu most of a core
    start_uncommitted_at_zero()  # not where Tansu's ListOffsets(earliest) points: it can skip offset 0
    ensure_topics(settings)
    datadir = settings.data_dir / "streams"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.faust_app_id,
        broker=f"kafka://{settings.kafka_bootstrap.replace(',', ';kafka://')}",
        store="rocksdb://",
        datadir=str(datadir),
        table_standby_replicas=0,
        recovery_consistency_check=False,
        broker_session_timeout=10,
        broker_rebalance_timeout=10,
        broker_heartbeat_interval=1,
        broker_commit_interval=1.0,
        web_enabled=False,
        topic_partitions=settings.kafka_partitions,
        topic_allow_declare=True,
        stream_wait_empty=False,
        stream_buffer_maxsize=settings.worker_stream_buffer,
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
    )
    counters: Counter[str] = Counter()
    health = Health("streams")
    gc_pauses = GcPauses().install()
    lag_guard = TickLagGuard(int(settings.worker_tick_max_lag_s * 1000))
    input_topics = [settings.topic(s) for s in DEVICE_STREAMS]
    # per input partition: the next offset to evaluate, as far as we know it (health, not state)
    next_offset: dict[tuple[str, int], int] = {}
    probe_holder: list[KafkaProbe] = []
    stall_logged_at = [0.0]
    # always in the pipeline record, so a board can show them
    counters["registry_reload_failures"] = counters["registry_reloads"] = 0
    counters["registry_units"] = len(registry) if registry is not None else 0
    # processing-time presence for the board's "online units" (not state: rebuilt by traffic)
    last_seen: dict[str, int] = {}
    offline_units: set[str] = set()
    ticks_in_flight: set[str] = set()
    due_index: dict[str, int | None] = {}  # device_id -> processing time its tick is due
    index_stale = [True]  # rebuild due_index from the table at the next sweep (start, rebalance)
    ticks_forgotten_at = [0]  # next time ticks_in_flight is cleared (epoch ms)
    partitions: dict[str, int] = {}  # device id -> its partition (murmur2 in Python is not free)
    online_window_ms = int(settings.heartbeat_s * settings.offline_after_heartbeats * 1000)
    device_topic = app.topic(
        *(settings.topic(s) for s in DEVICE_STREAMS),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    status_topic = app.topic(settings.topic("status"), key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(settings.topic("alerts"), key_serializer="raw", value_serializer="raw")
    hazards_topic = app.topic(settings.topic("hazards"), key_serializer="raw", value_serializer="raw")
    deadletter_topic = app.topic(settings.topic("deadletter"), key_serializer="raw", value_serializer="raw")
    late_topic = app.topic(settings.topic("late"), key_serializer="raw", value_serializer="raw")
    pipeline_topic = app.topic(settings.topic("pipeline"), key_serializer="raw", value_serializer="raw")
    state_table = app.Table(
        "unit-buckets",  # buckets of units' states (streams/unit_cache.py); was "unit-state", a unit per key
        default=None,
        partitions=settings.kafka_partitions,
        schema=faust.Schema(key_type=str, key_serializer="json", value_serializer="raw"),  # JSON bytes
        options=rocksdb_options(settings),
    )

    async def emit(out: Any) -> None:
        for alert in out.alerts:
            counters[f"alerts_{alert.state}"] += 1
            await alerts_topic.send(key=alert.alert_id.encode(), value=dumps(alert.model_dump(mode="json")))
        for hazard in getattr(out, "hazards", ()):
            data = hazard.model_dump(mode="json") if hasattr(hazard, "model_dump") else hazard
            counters["hazards"] += 1
            await hazards_topic.send(key=str(data.get("hazard_id", "")).encode(), value=dumps(data))
        for late in getattr(out, "late", ()) or ():
            await late_topic.send(key=str(late.get("device_id", "")).encode(), value=dumps(late))
        counters["late_dropped"] += getattr(out, "late_dropped", 0)

    def note_presence(device_id: str, env: dict[str, Any]) -> None:
        if env.get("type") == "status":
            if env.get("body", {}).get("status") == "offline":
                offline_units.add(device_id)
            else:
                offline_units.discard(device_id)
        elif env.get("type") in ("telemetry", "event"):
            last_seen[device_id] = int(env.get("received_ms") or 0)
            offline_units.discard(device_id)

    async def dead_letter_rejections(out: Any, env: dict[str, Any], device_id: str, raw: bytes) -> None:
        """Valid messages the rules cannot apply (unknown hazard, action out of order...)."""
        for reason in getattr(out, "rejected", ()) or ():
            counters["rejected_by_rules"] += 1
            headers = [
                ("mqtt_topic", str(env.get("mqtt_topic", "")).encode()),
                ("reason", b"rejected_by_rules"),
                ("detail", reason.encode()[:1000]),
                ("received_ms", str(env.get("received_ms", "")).encode()),
            ]
            await deadletter_topic.send(key=device_id.encode(), value=raw, headers=headers)

    cache = UnitCache(
        state_table,
        settings.worker_cache_units,
        settings.worker_state_max_age_s,
        buckets=settings.worker_state_buckets,
    )
    lock = asyncio.Lock()  # a batch and a checkpoint never interleave
    pending: list[Any] = []  # input events evaluated but not yet acked (acked at the next checkpoint)
    acking: list[Any] = []  # input events of the checkpoint under way: acked when it is written
    stream_holder: list[Any] = []
    last_checkpoint = [time.monotonic()]  # when the last checkpoint began
    last_batch = [time.monotonic()]  # when the last batch was evaluated

    def begin_checkpoint(force: bool = False) -> None:
        """Cut (lock held): the units changed so far are written by the steps that follow, a few
        hundred units after each batch, so a checkpoint of 10,000 units (~0.3-1 s of JSON and
        table writes) never holds up the readings behind it; their input is acked at the end."""
        counters["checkpoint_units_last"] = cache.begin_flush(force)
        acking.extend(pending)
        pending.clear()
        last_checkpoint[0] = time.monotonic()

    async def checkpoint_step(max_units: int | None) -> None:
        """Write the next buckets of the checkpoint under way (all: None); at its end ack its input."""
        started, cpu_started = time.monotonic(), time.thread_time()
        table_s = cache.table_write_s
        gc_ms = gc_pauses.pause_ms_total
        counters["state_writes"] += cache.flush_step(max_units)
        counters["state_bucket_writes"] = cache.bucket_writes
        pause_ms = int((time.monotonic() - started) * 1000)
        counters["checkpoint_pause_ms_max"] = max(counters["checkpoint_pause_ms_max"], pause_ms)
        if pause_ms >= CHECKPOINT_SLOW_MS:  # readings waited this long: worth a line in the log
            log.warning(
                "a checkpoint step held the readings for %d ms (CPU %.0f ms, table writes %.0f ms, "
                "garbage collection %.0f ms)",
                pause_ms,
                (time.thread_time() - cpu_started) * 1000,
                (cache.table_write_s - table_s) * 1000,
                gc_pauses.pause_ms_total - gc_ms,
            )
        if cache.flushing:
            return
        stream = stream_holder[0] if stream_holder else None
        if stream is not None:
            for event in acking:
                await stream.ack(event)
        acking.clear()
        counters["checkpoints"] += 1
        counters["checkpoint_span_ms_last"] = int((time.monotonic() - last_checkpoint[0]) * 1000)

    async def checkpoint(force: bool = False) -> None:
        """A whole checkpoint at once (lock held): the one under way, then every unit changed
        since (``force``: every changed unit, materially or not; a rebalance)."""
        if cache.flushing:
            await checkpoint_step(None)
        begin_checkpoint(force)
        await checkpoint_step(None)

    async def evaluate_envelope(env: dict[str, Any], event: Any) -> None:
        device_id = env.get("device_id")
        if not device_id or not isinstance(device_id, str):  # ingest gives every device message its unit
            counters["skipped_no_device"] += 1
            return
        note_presence(device_id, env)
        state = cache.get(device_id, event)
        unit = registry.get(device_id) if registry is not None else None
        try:
            if env.get("type") == "tick":
                ticks_in_flight.discard(device_id)
                out = engine.tick(state, int(env["now_ms"]), unit)
            else:
                out = engine.process(state, env, unit)
        except Exception:
            # a rule bug must not stop the city's monitoring: count it, record it, go on
            counters["rule_errors"] += 1
            log.exception("rules failed on %s", env.get("mqtt_topic"))
            return
        if out.state:  # the engine may change the state in place: always mark it changed
            cache.put(device_id, out.state, event)
            due_index[device_id] = engine.next_due(out.state)
        counters["ticks_processed" if env.get("type") == "tick" else "processed"] += 1
        ts = env.get("ts")
        if isinstance(ts, int) and ts > counters["event_time_ms"]:
            counters["event_time_ms"] = ts  # the highest device time evaluated: the alerts stage's clock
        if env.get("received_ms"):
            counters["lag_ms_last"] = int(time.time() * 1000) - int(env["received_ms"])
        if out.rejected:
            await dead_letter_rejections(out, env, device_id, dumps(env))
        if out.alerts or out.hazards or out.late or out.late_dropped:
            await emit(out)

    @app.agent(device_topic, name="sesmon-evaluate")
    async def evaluate(stream: Any) -> None:
        """Evaluate batches of records; each record from ingest carries many readings.

        Acks are manual (``noack_take``): a batch's records are acked at the checkpoint that
        writes the states they changed (see streams/unit_cache.py), never before.
        """
        stream_holder[:] = [stream]
        async for events in stream.noack_take(settings.worker_batch_max, settings.worker_batch_within_s):
            async with lock:  # a rebalance waits for this batch, then checkpoints it (on_revoked)
                for event in events:
                    try:
                        envelopes = envelopes_of(event.value)
                    except ValueError:
                        counters["undecodable"] += 1  # ingest validated it; only a foreign producer gets here
                        envelopes = []
                    for env in envelopes:
                        await evaluate_envelope(env, event)
                    if envelopes and isinstance(received := envelopes[-1].get("received_ms"), int):
                        lag_guard.saw(event.message.partition, received)
                    counters["records"] += 1
                pending.extend(events)
                for event in events:  # in order within a partition: the last one wins
                    next_offset[(event.message.topic, event.message.partition)] = event.message.offset + 1
                counters["batches"] += 1
                last_batch[0] = time.monotonic()
                health.progress()
                if cache.flushing:
                    await checkpoint_step(settings.worker_checkpoint_step_units)
                elif time.monotonic() - last_checkpoint[0] >= settings.worker_checkpoint_s:
                    begin_checkpoint()
                    await checkpoint_step(settings.worker_checkpoint_step_units)

    @app.timer(interval=1.0)
    async def checkpoint_when_quiet() -> None:
        """Input that stops gets its state written and its offsets acked at once: with no batch
        for a second nothing waits behind a checkpoint, so one under way is finished and one is
        begun for what was evaluated since (the interval bounds a busy worker's writes; an idle
        one's are few). A checkpoint that starved for three intervals is finished too."""
        now = time.monotonic()
        since_begin = now - last_checkpoint[0]
        quiet = now - last_batch[0] >= QUIET_S
        if (quiet and (cache.flushing or pending)) or (
            cache.flushing and since_begin >= 3 * settings.worker_checkpoint_s
        ):
            async with lock:
                if pending or cache.flushing:
                    await checkpoint()

    @app.on_partitions_revoked.connect
    async def on_revoked(_app: Any, revoked: Any = None, **_kw: Any) -> None:
        """A checkpoint before partitions move: Faust resumes a kept partition where it read
        (it does not redeliver), so every event evaluated must be acked or the commit stalls at
        the gap for good; the table is still open here. Then drop the cache: the next owner of a
        partition reads the state just written."""
        async with lock:
            await checkpoint(force=True)
            cache.clear()
            counters["rebalances"] += 1
        for tp in revoked or ():  # if one comes back, it counts from where it stands then (not
            next_offset.pop((tp.topic, tp.partition), None)  # from ours: records waiting for good)

    async def rebuild_due_index() -> None:
        """Rebuild the due index from the table (start, new partitions): units that went silent
        before a restart or a rebalance are still caught. Yields to the event loop every few
        hundred units, so a large table never stalls the agent or Faust's commit timer."""
        index_stale[0] = False
        due_index.clear()
        try:
            n = 0
            for _key, bucket in state_table.items():
                for device_id, state in iter_bucket(bucket):
                    due_index[device_id] = engine.next_due(state)
                    n += 1
                    if n % DUE_INDEX_SLICE == 0:
                        await asyncio.sleep(0)
        except Exception:  # a partition closed under us (rebalance): the next sweep tries again
            index_stale[0] = True
            log.exception("rebuilding the deadman index failed; retrying at the next sweep")
        for device_id, state in cache.states().items():  # newer than the table
            due_index[device_id] = engine.next_due(state)

    @app.on_partitions_assigned.connect
    async def on_assigned(_app: Any, assigned: Any = None, **_kw: Any) -> None:
        index_stale[0] = True

    @app.timer(interval=settings.deadman_check_every_s)
    async def deadman() -> None:
        """Processing-time guard: a unit that went silent is noticed live, not at its next reading.

        Works from an in-memory index of each unit's next due time, kept by the agent and
        rebuilt from the table at start and after a rebalance, instead of decoding every
        unit's state every few seconds. Due ticks leave as one grouped record per partition
        (``sesmon.contract.groups``, the partition ingest gives the unit): a fleet falling
        silent at once costs the agent a few records, not one Faust event per unit.
        """
        now_ms = int(time.time() * 1000)
        if index_stale[0]:
            await rebuild_due_index()
        if now_ms >= ticks_forgotten_at[0]:
            ticks_forgotten_at[0] = now_ms + 60_000
            ticks_in_flight.clear()  # a tick lost to a rebalance must not silence a unit for good
        due_by_partition: dict[int, list[bytes]] = {}
        n_partitions = settings.kafka_partitions
        behind = lag_guard.behind(now_ms, waiting_by_partition() or {})  # their readings come first
        for device_id, due in list(due_index.items()):
            if due is None or now_ms < due or device_id in ticks_in_flight:
                continue
            partition = partitions.get(device_id)
            if partition is None:
                partition = partitions[device_id] = partition_of(device_id.encode(), n_partitions)
            if partition in behind:
                counters["ticks_deferred_lagging"] += 1
                continue
            # the state change happens in the agent, where the table has a current event;
            # at most one tick per unit in flight, however long the agent takes to get to it
            ticks_in_flight.add(device_id)
            due_by_partition.setdefault(partition, []).append(
                dumps({"type": "tick", "device_id": device_id, "now_ms": now_ms})
            )
        for partition, ticks in due_by_partition.items():
            counters["ticks"] += len(ticks)
            for start in range(0, len(ticks), TICKS_PER_RECORD):
                group = ticks[start : start + TICKS_PER_RECORD]
                await status_topic.send(
                    value=encode_group(group),
                    partition=partition,
                    headers=[(GROUP_COUNT_HEADER, str(len(group)).encode())],
                )

    def waiting_by_partition() -> dict[int, int] | None:
        """Records not yet evaluated per assigned input partition, all device topics together
        (None: Kafka not asked yet, or no assignment to ask about)."""
        probe = probe_holder[0] if probe_holder else None
        if probe is None or not probe.checked_ms:
            return None
        try:
            assigned = app.consumer.assignment()
        except Exception:  # no consumer yet (starting, rebalancing)
            return None
        waiting: dict[int, int] = {}
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if tp.topic not in input_topics or key not in probe.ends:
                continue
            # a partition we have evaluated nothing from yet counts from where it stood then
            behind = max(0, probe.ends[key] - next_offset.setdefault(key, probe.ends[key]))
            waiting[tp.partition] = waiting.get(tp.partition, 0) + behind
        return waiting

    def input_pending() -> int | None:
        """Records in our assigned input partitions not yet evaluated (None: Kafka not asked yet)."""
        waiting = waiting_by_partition()
        return None if waiting is None else sum(waiting.values())

    def check_stall(pending: int | None) -> bool:
        """True while records wait and no batch completes; ends the process if it lasts."""
        if pending == 0:
            health.progress()  # nothing to do is not a stall
            return False
        idle_s = time.time() - health.last_progress_ms / 1000
        if pending is None or idle_s < settings.worker_stall_after_s:
            return False
        recovering = bool(getattr(app, "in_recovery", False))
        if time.monotonic() >= stall_logged_at[0] + 30:  # say it, but not every second
            stall_logged_at[0] = time.monotonic()
            log.warning("no batch evaluated for %.0f s while %d records wait", idle_s, pending)
        if settings.worker_stall_exit_s and idle_s >= settings.worker_stall_exit_s and not recovering:
            fatal("streams", f"stalled: no batch evaluated for {idle_s:.0f} s while {pending} records wait")
        return True

    def consumer_thread_alive() -> bool:
        """Faust's aiokafka consumer runs in a thread of its own; a dead one stops everything."""
        thread = getattr(getattr(app.consumer, "_thread", None), "_thread", None)
        return thread is None or thread.is_alive()  # None: not started yet (or not threaded)

    def kafka_lost(reason: str) -> None:
        if settings.worker_exit_on_kafka_loss:
            fatal("streams", f"{reason}; restarting to read the topics afresh")
        log.error("%s", reason)

    @app.task
    async def start_probe() -> None:
        probe_holder.append(KafkaProbe(settings, input_topics, kafka_lost).start())
        health.watch_thread("kafka_probe", probe_holder[0].thread)
        health.watch("kafka_consumer_thread", consumer_thread_alive)

    @app.timer(interval=settings.stats_every_s)
    async def publish_stats() -> None:
        horizon = int(time.time() * 1000) - online_window_ms
        counters["online_units"] = sum(
            1 for d, t in last_seen.items() if t >= horizon and d not in offline_units
        )
        pending = input_pending()
        stalled = check_stall(pending)
        extra = {"input_pending": pending, "stalled": stalled, **health.snapshot(), **gc_pauses.snapshot()}
        await pipeline_topic.send(key=b"streams", value=stats_record("streams", dict(counters) | extra))

    @app.timer(interval=5.0)
    async def reload_registry() -> None:
        if registry is not None:
            reload_registry_safely(registry, counters)

    # Faust's conductor stops handing us input while more than ``max_messages`` (100) changelog
    # records wait to be sent, so a checkpoint of thousands of units stalled evaluation until
    # they were all out. Let them drain alongside evaluation; Faust still flushes them all
    # before it commits offsets.
    app.producer.buffer.max_messages = settings.worker_changelog_buffer
    app.sesmon_counters = counters  # type: ignore[attr-defined]
    return app


def run(settings: Settings, registry: Registry | None, loglevel: str = "warn") -> None:
    """``sesmon worker``: one Faust worker process; stops on SIGINT/SIGTERM."""
    from faust.worker import Worker

    memory_report = start_memory_report("streams", settings)  # SESMON_TRACEMALLOC=1 (off by default)
    app = create_app(settings, registry)
    if memory_report is not None:

        @app.task
        async def memory_report_on_sigusr2() -> None:
            """mode's worker gives SIGUSR2 to pdb; with the report on it asks for a report instead."""
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, memory_report.request)

    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
