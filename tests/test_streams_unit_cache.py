"""The worker's unit cache writes a unit when it changed materially, or when its last write got old.

Pure: a dict stands in for the Faust table (the cache only reads and writes it by key).
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import orjson

from rules.state import AlertEntry, UnitState
from streams.unit_cache import DEFAULT_BUCKETS, UnitCache, bucket_key


class Message:
    topic, partition, tp = "sesmon-telemetry", 0, ("sesmon-telemetry", 0)


class Event:
    """An input event as the worker hands it to the cache (only its partition is kept)."""

    message = Message()


class Table(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes.append(key)
        assert isinstance(value, bytes)  # the JSON bytes the worker's table stores
        super().__setitem__(key, orjson.loads(value))


def key(device_id: str) -> str:
    """The table key of the unit's bucket (the fake events are all on partition 0)."""
    return bucket_key(0, device_id, DEFAULT_BUCKETS)


def stored(table: Table, device_id: str) -> dict[str, Any]:
    return table[key(device_id)][device_id]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reading_moves_clocks(state: UnitState, ts: int) -> None:
    """What an in-sequence reading that fires nothing changes: clocks, seq mark, held values."""
    state.max_ts = state.watermark_ts = ts
    state.last_rx = ts + 50
    state.seq_next += 1
    state.values = {"floor": ts % 7, "moving": True}
    state.due = ts + 180_000


def test_volatile_changes_wait_for_the_max_age_material_ones_do_not() -> None:
    table, clock, event = Table(), Clock(), Event()
    cache = UnitCache(table, max_age_s=60.0, clock=clock)
    state = UnitState("E1", "elevator")
    cache.put("E1", state, event)
    assert cache.flush() == 1 and table.writes == [key("E1")]  # never written: written

    reading_moves_clocks(state, 10_000)
    cache.put("E1", state, event)
    assert cache.flush() == 0  # only clocks and held values moved
    clock.now += 59
    assert cache.flush() == 0  # still dirty, still young
    clock.now += 2
    assert cache.flush() == 1 and stored(table, "E1")["mx"] == 10_000  # old enough: written

    state.reorder.append((20_000, 9, {"moving": True}))  # a reading held behind a gap
    cache.put("E1", state, event)
    assert cache.flush() == 1  # held readings are material at once

    state.alerts["elevator.trapped"] = AlertEntry("a1", 20_000, "trapped")
    cache.put("E1", state, event)
    assert cache.flush() == 1 and "elevator.trapped" in stored(table, "E1")["a"]

    reading_moves_clocks(state, 30_000)
    cache.put("E1", state, event)
    assert cache.flush() == 0
    assert cache.flush(force=True) == 1 and stored(table, "E1")["mx"] == 30_000  # a rebalance writes all
    assert cache.flush(force=True) == 0  # nothing changed since


def test_a_state_read_from_the_table_is_not_written_back_unchanged() -> None:
    table, clock, event = Table(), Clock(), Event()
    writer = UnitCache(table, clock=clock)
    state = UnitState("E2", "elevator")
    writer.put("E2", state, event)
    writer.flush()
    reader = UnitCache(table, clock=clock)  # a restarted worker
    loaded = reader.get("E2", event)
    assert loaded is not None
    reading_moves_clocks(loaded, 5_000)
    reader.put("E2", loaded, event)
    assert reader.flush() == 0 and table.writes == [key("E2")]


def test_max_age_zero_writes_every_change() -> None:
    table, event = Table(), Event()
    cache = UnitCache(table, max_age_s=0)
    state = UnitState("E3", "elevator")
    for ts in (1, 2, 3):
        reading_moves_clocks(state, ts)
        cache.put("E3", state, event)
        assert cache.flush() == 1
    assert table.writes == [key("E3")] * 3


def test_a_pending_write_does_not_keep_its_input_event_alive() -> None:
    """A unit waiting for its write keeps a stand-in of its partition, not the Kafka record."""
    table = Table()
    cache = UnitCache(table, max_age_s=60.0, clock=Clock())
    event = Event()
    cache.put("E9", UnitState("E9", "elevator"), event)
    gone = weakref.ref(event)
    del event
    gc.collect()
    assert gone() is None
    assert cache.flush(force=True) == 1
    assert table.writes == [key("E9")]


def test_a_checkpoint_writes_each_bucket_once_with_all_its_units() -> None:
    """10,000 changed units cost one table write per bucket, and every unit reads back."""
    table, event = Table(), Event()
    cache = UnitCache(table, max_age_s=60.0, clock=Clock())
    ids = [f"E{i}" for i in range(10_000)]
    for device_id in ids:
        state = UnitState(device_id, "elevator")
        reading_moves_clocks(state, 1_000)
        cache.put(device_id, state, event)
    assert cache.flush() == 10_000
    assert sorted(table.writes) == sorted({key(d) for d in ids}) and len(table.writes) == DEFAULT_BUCKETS
    restarted = UnitCache(table, clock=Clock())
    for device_id in ("E0", "E4321", "E9999"):
        state = restarted.get(device_id, event)
        assert state is not None and state.device_id == device_id and state.max_ts == 1_000
    assert restarted.get("E10000", event) is None  # a unit never written


def test_a_bucket_written_for_one_unit_carries_its_neighbours_newest_state() -> None:
    """A unit whose own change could wait still goes out with its bucket, at its newest."""
    table, clock, event = Table(), Clock(), Event()
    cache = UnitCache(table, max_age_s=60.0, clock=clock, buckets=1)  # one bucket: all are neighbours
    a, b = UnitState("A", "elevator"), UnitState("B", "elevator")
    cache.put("A", a, event)
    cache.put("B", b, event)
    assert cache.flush() == 2 and len(table.writes) == 1
    reading_moves_clocks(b, 7_000)  # volatile only: alone it would wait
    cache.put("B", b, event)
    assert cache.flush() == 0 and len(table.writes) == 1
    a.alerts["elevator.trapped"] = AlertEntry("a1", 20_000, "trapped")  # material
    cache.put("A", a, event)
    assert cache.flush() == 2 and len(table.writes) == 2
    assert table["0/0"]["B"]["mx"] == 7_000 and "elevator.trapped" in table["0/0"]["A"]["a"]
    assert cache.flush(force=True) == 0  # both written: nothing left


def test_forgotten_buckets_are_read_back_before_a_write() -> None:
    """Past max_units the clean units and their buckets are dropped; a later write of one unit
    must not erase the bucket's other units from the table."""
    table, event = Table(), Event()
    cache = UnitCache(table, max_units=1, max_age_s=0, clock=Clock(), buckets=1)
    for device_id in ("A", "B", "C"):
        cache.put(device_id, UnitState(device_id, "elevator"), event)
    cache.flush()  # three units > max_units: all clean, all forgotten
    assert len(cache) == 0
    state = UnitState("A", "elevator")
    reading_moves_clocks(state, 9_000)
    cache.put("A", state, event)
    cache.flush()
    assert set(table["0/0"]) == {"A", "B", "C"} and table["0/0"]["A"]["mx"] == 9_000


def test_a_checkpoint_in_steps_writes_what_changed_before_the_cut_at_its_newest() -> None:
    """The worker writes a checkpoint a few buckets after each batch: units changed after the cut
    go out with their newest state when their bucket comes, or wait for the next checkpoint."""
    table, event = Table(), Event()
    cache = UnitCache(table, max_age_s=60.0, clock=Clock())
    ids = [f"E{i}" for i in range(2_000)]
    states = {device_id: UnitState(device_id, "elevator") for device_id in ids}
    for device_id, state in states.items():
        reading_moves_clocks(state, 1_000)
        cache.put(device_id, state, event)
    assert cache.begin_flush() == 2_000 and cache.flushing
    first = cache.flush_step(100)  # whole buckets: at least 100 units, one bucket more at most
    assert 100 <= first < 100 + 2_000 // DEFAULT_BUCKETS * 2 and len(table.writes) < DEFAULT_BUCKETS
    done = {d for d in ids if key(d) in table}
    waiting = [d for d in ids if d not in done]
    late, rewritten = waiting[0], next(iter(done))
    reading_moves_clocks(states[late], 5_000)  # changed after the cut, before its bucket's turn
    cache.put(late, states[late], event)
    states[rewritten].alerts["elevator.trapped"] = AlertEntry("a1", 5_000, "trapped")  # after its write
    cache.put(rewritten, states[rewritten], event)
    written = first
    while cache.flushing:
        written += cache.flush_step(100)
    assert written == 2_000 and len(table.writes) == DEFAULT_BUCKETS  # each bucket once
    assert stored(table, late)["mx"] == 5_000  # its newest state went with its bucket
    assert "a" not in stored(table, rewritten) or not stored(table, rewritten)["a"]
    assert cache.flush() == 1 and "elevator.trapped" in stored(table, rewritten)["a"]  # the next one


def test_a_whole_flush_finishes_the_one_under_way_first() -> None:
    """A rebalance (flush(force=True)) in the middle of a stepped checkpoint writes everything."""
    table, event = Table(), Event()
    cache = UnitCache(table, max_age_s=60.0, clock=Clock())
    for n in range(500):
        cache.put(f"E{n}", UnitState(f"E{n}", "elevator"), event)
    cache.begin_flush()
    written = cache.flush_step(1)
    cache.put("late", UnitState("late", "elevator"), event)
    assert written + cache.flush(force=True) == 501 and not cache.flushing
    assert all(stored(table, d)["d"] == d for d in [*(f"E{n}" for n in range(500)), "late"])
