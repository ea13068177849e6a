"""Grouped Kafka records: many validated envelopes in one record, for the fast path.

Why: Faust pays ~190 µs of its own machinery per Kafka record (stack.md), more than the rules
cost for a dozen readings. Ingest therefore packs the envelopes bound for one partition into
one record whose value is a JSON array of envelopes; a record whose value is a JSON object is a
single envelope (deadman ticks, older producers, tests). Every consumer of the device streams
reads both through :func:`envelopes_of`.

A unit's messages must all land on one partition (its rule state lives there), and Faust sends
deadman ticks keyed by device_id with the Java client's murmur2 partitioner; ingest picks the
partition of a group with :func:`partition_of`, the same hash, so both agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

#: header on a grouped record: how many envelopes it carries (ASCII decimal)
GROUP_COUNT_HEADER = "sesmon-count"


def murmur2(data: bytes) -> int:
    """The Java Kafka client's murmur2 (as aiokafka's and librdkafka's ``murmur2_random``)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    tail = length4 * 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``: where a unit lives."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def encode_group(envelopes: Iterable[bytes]) -> bytes:
    """One record value from already-serialised envelopes (JSON objects), in order."""
    return b"[" + b",".join(envelopes) + b"]"


def envelopes_of(value: bytes) -> list[dict[str, Any]]:
    """The envelopes in one device-stream record, grouped or single, in order.

    Raises ``orjson.JSONDecodeError`` (a ``ValueError``) for bytes that are not JSON; a value
    that is neither an object nor an array of objects gives no envelope (callers count it).
    """
    data = orjson.loads(value)
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return [e for e in data if isinstance(e, dict)]
    return []
