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
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from typing import Any

import faust
from faust.streams import _current_event  # see evaluate(): RocksDB needs it set

from rules import RuleEngine
from sesmon.kafka import dumps, ensure_topics, loads, stats_record
from sesmon.registry import Registry
from sesmon.settings import Settings

log = logging.getLogger("sesmon.streams")

DEVICE_STREAMS = ("telemetry", "events", "status", "reports")


def create_app(settings: Settings, registry: Registry | None, engine: RuleEngine | None = None) -> faust.App:
    engine = engine or RuleEngine()
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
        producer_linger=0.005,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
    )
    counters: Counter[str] = Counter()
    # processing-time presence for the board's "online units" (not state: rebuilt by traffic)
    last_seen: dict[str, int] = {}
    offline_units: set[str] = set()
    ticks_in_flight: set[str] = set()
    due_index: dict[str, int | None] = {}  # device_id -> processing time its tick is due
    index_rebuild_at = [0]  # next full rebuild of due_index from the table (epoch ms)
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
        "unit-state",
        default=None,
        partitions=settings.kafka_partitions,
        schema=faust.Schema(key_type=str, key_serializer="json", value_serializer="json"),
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

    @app.agent(device_topic, name="sesmon-evaluate")
    async def evaluate(stream: Any) -> None:
        """Evaluate in batches: Faust's per-event cost dominates (stack.md), and a batch writes
        each unit's state once. Offsets are acked only after the batch is done (at-least-once).

        RocksDB tables need a *current event* to pick the partition of a read or write, which
        ``take_events`` does not set; we set Faust's context variable by hand to the unit's own
        event (a unit's messages all share its partition, being keyed by device_id), and only
        in this task's context: the stream's own attribute belongs to its background reader.
        """
        async for events in stream.take_events(settings.worker_batch_max, settings.worker_batch_within_s):
            states: dict[str, tuple[dict[str, Any], Any]] = {}
            for event in events:
                try:
                    env = loads(event.value)
                except ValueError:
                    counters["undecodable"] += 1  # ingest validated it; only a foreign producer gets here
                    continue
                device_id = env.get("device_id")
                if not device_id:  # ingest gives every device-bound message its unit
                    counters["skipped_no_device"] += 1
                    continue
                note_presence(device_id, env)
                token = _current_event.set(weakref.ref(event))
                state = states[device_id][0] if device_id in states else state_table.get(device_id)
                _current_event.reset(token)
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
                    continue
                if out.state:  # the engine may change the dict in place: always write it back
                    states[device_id] = (out.state, event)
                await dead_letter_rejections(out, env, device_id, event.value)
                counters["ticks_processed" if env.get("type") == "tick" else "processed"] += 1
                if env.get("received_ms"):
                    counters["lag_ms_last"] = int(time.time() * 1000) - int(env["received_ms"])
                await emit(out)
            for device_id, (state, event) in states.items():
                token = _current_event.set(weakref.ref(event))
                state_table[device_id] = state
                _current_event.reset(token)
                due_index[device_id] = engine.next_due(state)
            counters["batches"] += 1

    @app.timer(interval=settings.deadman_check_every_s)
    async def deadman() -> None:
        """Processing-time guard: a unit that went silent is noticed live, not at its next reading.

        Works from an in-memory index of each unit's next due time, kept by the agent and
        rebuilt from the table once a minute (and at start, so units that went silent before
        a restart are still caught), instead of decoding every unit's state every few seconds.
        """
        now_ms = int(time.time() * 1000)
        if now_ms >= index_rebuild_at[0]:
            index_rebuild_at[0] = now_ms + 60_000
            ticks_in_flight.clear()  # a tick lost to a rebalance must not silence a unit for good
            for device_id, state in list(state_table.items()):
                try:
                    due_index[device_id] = engine.next_due(state)
                except Exception:
                    counters["rule_errors"] += 1
                    log.exception("next_due failed for %s", device_id)
        for device_id, due in list(due_index.items()):
            if due is None or now_ms < due or device_id in ticks_in_flight:
                continue
            # the state change happens in the agent, where the table has a current event;
            # at most one tick per unit in flight, however long the agent takes to get to it
            ticks_in_flight.add(device_id)
            counters["ticks"] += 1
            tick = {"type": "tick", "device_id": device_id, "now_ms": now_ms}
            await status_topic.send(key=device_id.encode(), value=dumps(tick))

    @app.timer(interval=settings.stats_every_s)
    async def publish_stats() -> None:
        horizon = int(time.time() * 1000) - online_window_ms
        counters["online_units"] = sum(
            1 for d, t in last_seen.items() if t >= horizon and d not in offline_units
        )
        await pipeline_topic.send(key=b"streams", value=stats_record("streams", dict(counters)))

    @app.timer(interval=5.0)
    async def reload_registry() -> None:
        if registry is not None:
            try:
                if registry.reload_if_changed():
                    log.info("registry reloaded: %d units", len(registry))
            except ValueError as exc:
                log.error("registry changed but is invalid, keeping the old one: %s", exc)

    app.sesmon_counters = counters  # type: ignore[attr-defined]
    return app


def run(settings: Settings, registry: Registry | None, loglevel: str = "warn") -> None:
    """``sesmon worker``: one Faust worker process; stops on SIGINT/SIGTERM."""
    from faust.worker import Worker

    app = create_app(settings, registry)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
