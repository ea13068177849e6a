"""``python -m sesmon.app.healthcheck STAGE``: is a stage alive and well? (container health checks)

Why this way: the stages open no port of their own; what they do is publish their counters
and :class:`sesmon.runtime.health.Health` snapshot (threads alive, last progress) to the
``pipeline`` topic once a second. The check reads the tail of that topic without joining a
consumer group and looks for the stage's latest record: healthy when it is younger than
``--max-age`` seconds and does not say ``health.ok = false``. A stage whose process lives on
with a dead thread, or that has stopped publishing, is reported unhealthy; a stage that dies
exits (``fatal``) and its container's restart policy starts it again.

``--rising COUNTER`` also asks that the counter grew over the last ``--max-age`` seconds:
``healthcheck ingest --rising received`` is how the simulator's container tells that its
readings still arrive (the simulator publishes no record of its own).

Exit status 0 healthy, 1 not (with one line saying why).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from sesmon.runtime.kafka import client_config
from sesmon.runtime.settings import Settings

#: the ``pipeline`` record key of each stage command (the Faust worker reports as ``streams``)
RECORD_KEY = {"worker": "streams"}
#: records read back from the end of each partition (every stage writes one a second)
LOOKBACK = 500


def stage_records(settings: Settings, stage: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The ``pipeline`` records of ``stage`` in the last :data:`LOOKBACK` of each partition, oldest first."""
    key = RECORD_KEY.get(stage, stage).encode()
    topic = settings.topic("pipeline")
    consumer = Consumer(
        client_config(settings, **{"group.id": "sesmon-healthcheck", "enable.auto.commit": False})
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        assignment, last_offset = [], {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            if high > low:
                assignment.append(TopicPartition(topic, partition, max(low, high - LOOKBACK)))
                last_offset[partition] = high - 1
        consumer.assign(assignment)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while last_offset and time.monotonic() < deadline:
            for message in consumer.consume(LOOKBACK, 0.5):
                if message.error():
                    continue
                if message.offset() >= last_offset.get(message.partition(), 1 << 62):
                    last_offset.pop(message.partition(), None)
                if message.key() != key:
                    continue
                records.append(orjson.loads(message.value()))
        return sorted(records, key=lambda record: int(record.get("at", 0)))
    finally:
        consumer.close()


def verdict(
    records: list[dict[str, Any]], max_age_s: float, rising: str | None = None, now_ms: int | None = None
) -> str | None:
    """``None`` when the newest of ``records`` (oldest first) says healthy, else why not."""
    if not records:
        return "no pipeline record from it yet"
    newest = records[-1]
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age_s = (now_ms - int(newest.get("at", 0))) / 1000
    if age_s > max_age_s:
        return f"its last pipeline record is {age_s:.0f} s old (limit {max_age_s:.0f} s)"
    health = newest.get("health") or {}
    if health.get("ok") is False:
        return f"it reports dead parts: {', '.join(map(str, health.get('dead') or ())) or '?'}"
    if rising is not None:
        since_ms = now_ms - max_age_s * 1000
        window = [r for r in records if int(r.get("at", 0)) >= since_ms and rising in r]
        if len(window) < 2 or window[-1][rising] <= window[0][rising]:
            return f"{rising} has not grown in the last {max_age_s:.0f} s"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sesmon.app.healthcheck", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("stage", help="ingest | worker | alerts | store | kpi | supervisor")
    parser.add_argument("--max-age", type=float, default=30.0, metavar="S", help="record age limit")
    parser.add_argument("--rising", metavar="COUNTER", help="a counter that must have grown within --max-age")
    args = parser.parse_args(argv)
    try:
        problem = verdict(stage_records(Settings(), args.stage), args.max_age, args.rising)
    except Exception as exc:  # Kafka away, a bad record: unhealthy, with the reason
        problem = f"cannot read the pipeline topic: {exc}"
    if problem is None:
        print(f"{args.stage}: healthy")
        return 0
    print(f"{args.stage}: unhealthy: {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
