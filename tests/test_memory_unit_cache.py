"""The worker keeps each unit's last-written JSON: it must cost its length, not orjson's buffer.

Why: ``orjson.dumps`` returns a bytes object that keeps its whole output buffer (a 650-byte state
held 8 KiB, a 3 KB one 24 KiB). The cache keeps one per unit between checkpoints, so 10,000 units
held ≈140 MB more than their states (``SESMON_TRACEMALLOC=1`` on bench/e2e.py:
``streams/unit_cache.py`` +100 MB in 6,298 blocks). Pure: a dict stands in for the Faust table.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson

from rules.state import UnitState
from sesmon.runtime.kafka import exact_bytes
from streams.unit_cache import UnitCache


class Message:
    topic, partition, tp = "sesmon-telemetry", 0, ("sesmon-telemetry", 0)


class Event:
    message = Message()


class Table(dict[str, Any]):
    """Faust's table as the cache uses it, by key; the values as RocksDB would keep them: not as
    the Python bytes given (decoded here, so they count against this file, not the cache)."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, orjson.loads(value))


def allocated_by_unit_cache(snapshot: tracemalloc.Snapshot) -> int:
    import streams.unit_cache as module

    return sum(
        s.size
        for s in snapshot.filter_traces([tracemalloc.Filter(True, module.__file__)]).statistics("filename")
    )


def traced_growth(make: Any) -> tuple[Any, int]:
    """What ``make()`` returns, and the bytes allocated and still held after it."""
    before = tracemalloc.get_traced_memory()[0]
    made = make()
    return made, tracemalloc.get_traced_memory()[0] - before


def test_exact_bytes_is_a_copy_of_its_length() -> None:
    body = {"k": "x" * 600}
    tracemalloc.start()
    try:
        data, by_orjson = traced_growth(lambda: orjson.dumps(body))
        copy, by_copy = traced_growth(lambda: exact_bytes(data))
    finally:
        tracemalloc.stop()
    assert copy == data
    assert by_orjson > 4 * len(data)  # what made the copy worth it (orjson's buffer, 8 KiB here)
    assert by_copy < len(data) + 100


def test_the_units_kept_between_checkpoints_cost_about_their_json() -> None:
    units = 300
    cache = UnitCache(Table(), max_age_s=60.0)
    states = {}
    for n in range(units):
        state = UnitState(f"E{n}", "elevator")
        state.values = {"floor": n % 30, "note": "x" * 600}  # a state of ≈0.7 KB, as a moving lift's
        states[f"E{n}"] = state
    tracemalloc.start()
    try:
        for device_id, state in states.items():
            cache.put(device_id, state, Event())
        cache.flush()
        kept = allocated_by_unit_cache(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    json_bytes = sum(len(orjson.dumps(s.to_json(), option=orjson.OPT_NON_STR_KEYS)) for s in states.values())
    # the units' JSON, their buckets' dicts and the cache's entries; orjson's buffers were ≈12 x the JSON
    assert kept < 2 * json_bytes, f"{kept:,} bytes kept for {json_bytes:,} bytes of JSON"
