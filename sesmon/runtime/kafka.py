"""Kafka plumbing shared by the stages: topic names, topic creation, clients, stats records.

The stages outside Faust use confluent-kafka (librdkafka): it batches in C, calls back on
delivery (which the ingest bridge turns into MQTT acks) and, unlike aiokafka, can use
Tansu's idempotent producer (stack.md K3).

Every consumer here starts a partition it has never committed at offset 0, not at the offset
the broker calls earliest: Tansu names as earliest the batch *stored* first, and when two
producers write one partition at once that can be the second batch, so a reader "from the
beginning" skipped the first (README, Semantics). A broker whose log no longer starts at 0
(retention) answers offset 0 with "out of range", and ``auto.offset.reset=earliest`` applies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sesmon.runtime.settings import Settings

log = logging.getLogger(__name__)

#: logical streams and what they hold; every one keyed by device_id unless said otherwise
STREAMS = {
    "telemetry": "validated device telemetry (Envelope JSON)",
    "events": "validated device events",
    "status": "online/offline, incl. LWT and deadman ticks",
    "reports": "accident, maintenance, inspection (keyed by device_id) and hazard reports (by hazard_id)",
    "dispatch": "responders' actions (keyed by alert_id)",
    "alerts": "alert state changes from the rules (keyed by alert_id)",
    "hazards": "hidden-danger records (keyed by hazard_id)",
    "deadletter": "rejected input: raw bytes as value, reason in headers (keyed by MQTT topic)",
    "late": "readings beyond the lateness bound, recorded not dropped",
    "pipeline": "each stage's counters once a second (keyed by stage)",
    "kpi": "safety_kpi rows: tags, fields and time of each point (keyed by scope|scope_id|kind|window)",
}


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("librdkafka")
    logger.setLevel(logging.ERROR)
    return logger


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap, "logger": _quiet_logger(), **extra}


def ensure_topics(settings: Settings, streams: list[str] | None = None, timeout: float = 20.0) -> None:
    """Create the sesmon topics with the configured partitions (same count: co-partitioned)."""
    admin = AdminClient(client_config(settings))
    names = [settings.topic(s) for s in (streams or list(STREAMS))]
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    wanted = [NewTopic(n, settings.kafka_partitions, 1) for n in names if n not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        log.debug("created topic %s", name)


def make_producer(settings: Settings, **extra: Any) -> Producer:
    conf = client_config(
        settings,
        **{
            "acks": "all",
            "enable.idempotence": True,
            # the Java/aiokafka key hash: Faust (aiokafka) sends ticks keyed by device_id and
            # must land on the same partition as the unit's readings (librdkafka's default,
            # CRC32, would not: the tick would meet an empty table partition)
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 200_000,
        },
    )
    conf.update(extra)
    return Producer(conf)


def make_consumer(settings: Settings, group: str, streams: list[str], **extra: Any) -> Consumer:
    conf = client_config(
        settings,
        **{
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
        },
    )
    conf.update(extra)
    consumer = Consumer(conf)
    subscribe_from_start(consumer, [settings.topic(s) for s in streams])
    return consumer


PartitionsCallback = Callable[[Consumer, list[TopicPartition]], None]


def subscribe_from_start(
    consumer: Consumer,
    topics: list[str],
    on_assign: PartitionsCallback | None = None,
    on_revoke: PartitionsCallback | None = None,
    on_lost: PartitionsCallback | None = None,
) -> None:
    """``consumer.subscribe``, except that an assigned partition the group never committed starts
    at offset 0 instead of where the broker's ListOffsets(earliest) points (module docstring).

    Committed partitions resume as before. ``on_assign`` runs after the assignment is made.
    """

    def assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:  # the default path: the reset policy decides, as before
            log.warning(
                "could not read committed offsets (%s); the reset policy places %d partitions",
                exc,
                len(partitions),
            )
            committed = partitions
        else:
            for tp in committed:
                if tp.offset < 0:  # never committed (OFFSET_INVALID)
                    tp.offset = 0
        consumer.assign(committed)
        if on_assign is not None:
            on_assign(consumer, committed)

    callbacks: dict[str, PartitionsCallback] = {"on_assign": assign}
    if on_revoke is not None:
        callbacks["on_revoke"] = on_revoke
    if on_lost is not None:
        callbacks["on_lost"] = on_lost
    consumer.subscribe(topics, **callbacks)


def make_reader(
    settings: Settings, streams: list[str], from_beginning: bool = True, **extra: Any
) -> Consumer:
    """A group-less reader of every partition (boards, tests, replay): no group join to wait for.

    Tansu holds a consumer group's first join for half the session timeout (stack.md K8). From
    the beginning means from offset 0 (module docstring).
    """
    config = {"group.id": "sesmon-reader", "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    consumer = Consumer(client_config(settings, **{**config, **extra}))
    metadata = consumer.list_topics(timeout=10)
    offset = 0 if from_beginning else OFFSET_END
    assignment = []
    for stream in streams:
        topic = metadata.topics.get(settings.topic(stream))
        if topic is None:
            raise KafkaException(f"topic {settings.topic(stream)} does not exist")
        assignment += [TopicPartition(settings.topic(stream), p, offset) for p in topic.partitions]
    consumer.assign(assignment)
    return consumer


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def exact_bytes(data: bytes) -> bytes:
    """A copy of ``data`` that owns only its length, for bytes kept a while (a unit's state in the
    worker's cache, a record owed to Kafka, an archive line until its checkpoint): a bytes object
    from ``orjson.dumps`` keeps orjson's whole output buffer (a 650-byte state held 8 KiB, a 3 KB
    one 24 KiB, a 233-byte envelope 4 KiB; 10,000 units held ≈140 MB more than their JSON)."""
    return b"%s" % data


def loads(data: bytes) -> Any:
    return orjson.loads(data)


def stats_record(stage: str, counters: dict[str, Any]) -> bytes:
    return dumps({"stage": stage, "at": int(time.time() * 1000), **counters})
