"""Units' rule state in memory between checkpoints, written to the Faust table at checkpoints.

Why: a Faust table write costs ≈150 µs with its changelog record (stack.md), more than ten
readings' rules. The worker therefore keeps each unit's :class:`~rules.state.UnitState` here,
decoded once, and writes a unit only at a checkpoint, and only if it changed *materially*
since its last write or that write is older than ``max_age_s``. A unit reporting every 10-15 s
changes between two checkpoints; most readings only move its clocks and sample-and-hold values
(:data:`VOLATILE_KEYS`), which decide nothing later. What decides something (held readings,
conditions and their durations, open alerts, counts, hazards, maintenance, the mode) is
material and written at the next checkpoint. So a crash may leave a unit's volatile fields up
to ``max_age_s`` old (a reading after it may wait out the lateness bound once; ``last_rx`` is
older, well inside the deadman's 3 × 60 s), never its held readings or its alerts.

Buckets: the table holds no unit by itself but *buckets* of units (key ``"<partition>/<n>"``,
value the JSON object ``{device_id: state}`` of every unit of that input partition whose
device id hashes to ``n``). A checkpoint writes each bucket that has a unit to write once,
whole: about 64 Faust writes per partition instead of one per unit (10,000 units each with its
≈150 µs write and changelog record held the worker ≈1.5 s every checkpoint, the p99 of a page;
bench/e2e.py). The changelog's last record of a bucket is its whole content, so recovery by
key stays exact. Units of a bucket written anyway go with their newest state.

Steps: a checkpoint is cut (:meth:`UnitCache.begin_flush`: the units changed so far) and then
written a few buckets at a time (:meth:`UnitCache.flush_step`, after each batch), because 9,000
changed units written at once held every reading behind them for 0.3-1.3 s (bench/e2e.py at
0.4 x raw: the p99 of a page). A unit changed after the cut goes with its bucket at its newest
state, or waits for the next checkpoint; the cut's input is acked when its last step is written.

Restart-safety: the worker acks its input records only after the checkpoint that wrote the
states they changed, so the offsets Faust commits never run ahead of the table. A crash or a
rebalance re-evaluates the input since the last commit against a state at least that new;
alert ids are deterministic and the alerts stage drops repeats. On a rebalance the worker
checkpoints (Faust does not redeliver unacked records of a partition it keeps, so an unacked
event would stall the commit for good) and then drops the cache whole (:meth:`clear`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from rules.state import UnitState, load
from sesmon.runtime.kafka import exact_bytes

from .faust_private import as_current_event

#: wire keys of UnitState.to_json that only move a unit's clocks and held values: a change in
#: them alone does not need a write before ``max_age_s`` (``md``'s time is dropped, its mode kept)
VOLATILE_KEYS = frozenset({"mx", "wm", "ws", "rx", "sn", "sa", "val", "rt", "due", "late", "md"})


def material_signature(state: UnitState, wire: dict[str, Any] | None = None) -> int:
    """Hash of what a unit's later decisions depend on (everything but :data:`VOLATILE_KEYS`);
    ``wire``: the state's ``to_json()`` when the caller has it already."""
    wire = state.to_json() if wire is None else wire
    material = {k: v for k, v in wire.items() if k not in VOLATILE_KEYS}
    material["mode"] = state.mode
    return hash(orjson.dumps(material, option=orjson.OPT_SORT_KEYS))


class PartitionEvent:
    """What a Faust table write reads of its current event: the input partition (and topic).

    A unit's pending write kept the whole input event before, and with it the Kafka record of
    up to hundreds of readings, for up to ``max_age_s``: hundreds of MB at 10,000 readings/s.
    One of these per input partition stands in for it."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Any) -> None:
        self.message = _PartitionMessage(message.topic, message.partition, message.tp)


@dataclass(frozen=True, slots=True)
class _PartitionMessage:
    topic: str
    partition: int
    tp: Any


#: buckets per input partition (a bucket's value holds ~units/(partitions × buckets) states)
DEFAULT_BUCKETS = 64


def bucket_key(partition: int, device_id: str, buckets: int) -> str:
    """The table key of a unit's bucket: stable across processes (crc32, not ``hash``)."""
    return f"{partition}/{zlib.crc32(device_id.encode()) % buckets}"


def iter_bucket(value: Any) -> Iterator[tuple[str, Any]]:
    """``(device_id, stored state)`` of one bucket value as the table holds it (JSON bytes)."""
    if not value:
        return iter(())
    units = orjson.loads(value) if isinstance(value, bytes | bytearray | memoryview) else value
    return iter(units.items())


@dataclass(slots=True)
class _Bucket:
    """One bucket's units as last written (or read): what its next write starts from."""

    units: dict[str, bytes | dict[str, Any]]  # device_id -> its state: JSON bytes, or as read


@dataclass(slots=True)
class _Cached:
    state: UnitState
    event: PartitionEvent | None  # its input partition: a RocksDB table write needs one
    dirty: bool  # changed since its last write
    signature: int | None = None  # material_signature at its last write (None: never written)
    written_at: float = 0.0  # monotonic time of its last write (or load)


class UnitCache:
    """device_id -> its state, read through from the table, written back at :meth:`flush`."""

    def __init__(
        self,
        table: Any,
        max_units: int = 500_000,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        buckets: int = DEFAULT_BUCKETS,
    ) -> None:
        self.table = table
        self.clock = clock
        self.max_units = max_units
        self.max_age_s = max_age_s  # 0: write every change
        self.buckets = max(1, buckets)
        self.bucket_writes = 0  # table writes so far (one per bucket per checkpoint at most)
        self.table_write_s = 0.0  # time spent in those writes (RocksDB and Faust's changelog send)
        self._units: dict[str, _Cached] = {}
        self._dirty: set[str] = set()
        self._partitions: dict[Any, PartitionEvent] = {}  # input tp -> its stand-in event
        self._buckets: dict[str, _Bucket] = {}  # bucket key -> its units as stored
        self._plan: list[tuple[str, list[str]]] | None = None  # a flush under way: buckets left
        self._plan_force = False
        self._plan_now = 0.0

    def _bucket(self, device_id: str, event: Any) -> tuple[str, _Bucket]:
        """The unit's bucket, read from the table (under ``event``'s partition) the first time."""
        key = bucket_key(event.message.partition, device_id, self.buckets)
        bucket = self._buckets.get(key)
        if bucket is None:
            with as_current_event(event):
                stored = self.table.get(key)
            bucket = self._buckets[key] = _Bucket(dict(iter_bucket(stored)))
        return key, bucket

    def _partition_event(self, event: Any) -> PartitionEvent:
        message = event.message
        found = self._partitions.get(message.tp)
        if found is None:
            found = self._partitions[message.tp] = PartitionEvent(message)
        return found

    def __len__(self) -> int:
        return len(self._units)

    def get(self, device_id: str, event: Any) -> UnitState | None:
        cached = self._units.get(device_id)
        if cached is not None:
            return cached.state
        _, bucket = self._bucket(device_id, event)
        stored = bucket.units.get(device_id)
        if isinstance(stored, dict):  # as read: its own bytes, so the state shares nothing with the bucket
            stored = bucket.units[device_id] = exact_bytes(
                orjson.dumps(stored, option=orjson.OPT_NON_STR_KEYS)
            )
        state = load(stored)
        if state is not None:
            signature = material_signature(state) if self.max_age_s > 0 else None
            self._units[device_id] = _Cached(state, None, False, signature, self.clock())
        return state

    def put(self, device_id: str, state: UnitState, event: Any) -> None:
        where = self._partition_event(event)
        cached = self._units.get(device_id)
        if cached is None:
            self._units[device_id] = _Cached(state, where, True)
        else:
            cached.state, cached.event, cached.dirty = state, where, True
        self._dirty.add(device_id)

    def states(self) -> dict[str, UnitState]:
        return {device_id: cached.state for device_id, cached in self._units.items()}

    @property
    def flushing(self) -> bool:
        """A flush begun (:meth:`begin_flush`) and not yet finished by :meth:`flush_step`."""
        return self._plan is not None

    def begin_flush(self, force: bool = False) -> int:
        """Cut: the units changed so far are what this flush writes (by :meth:`flush_step`, a few
        buckets at a time, so the readings that arrive meanwhile are not held up; units changed
        after the cut go with their newest state or wait for the next flush). Returns how many."""
        if self._plan is not None:
            raise RuntimeError("a flush is already under way")
        dirty, self._dirty = self._dirty, set()
        plan: dict[str, list[str]] = {}
        units = self._units
        for device_id in dirty:
            cached = units.get(device_id)
            if cached is None or not cached.dirty or cached.event is None:
                continue
            key = bucket_key(cached.event.message.partition, device_id, self.buckets)
            plan.setdefault(key, []).append(device_id)
        self._plan = list(plan.items())
        self._plan.reverse()  # popped from the end: buckets in the order first seen
        self._plan_force = force
        self._plan_now = self.clock()
        return sum(len(ids) for ids in plan.values())

    def flush_step(self, max_units: int | None = None) -> int:
        """Write the next buckets of the flush under way, about ``max_units`` units (all: None);
        returns the units written. The flush is finished when :attr:`flushing` turns False."""
        plan = self._plan
        if plan is None:
            return 0
        now, force = self._plan_now, self._plan_force
        budget = max_units if max_units is not None else len(self._units) + 1
        written = 0
        while plan and budget > 0:
            key, device_ids = plan.pop()
            budget -= len(device_ids)
            written += self._flush_bucket(key, device_ids, now, force)
        if not plan:
            self._plan = None
            self._forget_clean()
        return written

    def flush(self, force: bool = False) -> int:
        """Write the units changed materially since their last write, or changed and last written
        ``max_age_s`` ago (every changed unit when ``force``: a rebalance); returns how many.
        A unit left out stays dirty for a later checkpoint. Finishes a flush under way first."""
        written = self.flush_step()
        self.begin_flush(force)
        return written + self.flush_step()

    def _flush_bucket(self, key: str, device_ids: list[str], now: float, force: bool) -> int:
        """One bucket of a flush: written whole if one of its units needs a write (each unit at
        its newest), else its units stay dirty (only clocks moved: a later checkpoint)."""
        fresh: list[tuple[str, _Cached, dict[str, Any], int | None]] = []
        due = False
        for device_id in device_ids:
            cached = self._units.get(device_id)
            if cached is None or not cached.dirty or cached.event is None:
                continue  # written since the cut (with a newer state), or forgotten
            wire = cached.state.to_json()
            signature = None
            if self.max_age_s > 0:
                signature = material_signature(cached.state, wire)
                if force or now - cached.written_at >= self.max_age_s or signature != cached.signature:
                    due = True
            else:
                due = True
            fresh.append((device_id, cached, wire, signature))
        if not fresh:
            return 0
        if not due:
            self._dirty.update(device_id for device_id, *_ in fresh)
            return 0
        event = fresh[0][1].event
        bucket = self._buckets.get(key)
        if bucket is None:  # forgotten since (bounded memory): read it back before writing it
            _, bucket = self._bucket(fresh[0][0], event)
        for device_id, cached, wire, signature in fresh:  # the bucket carries each one's newest
            bucket.units[device_id] = exact_bytes(orjson.dumps(wire, option=orjson.OPT_NON_STR_KEYS))
            cached.dirty = False
            cached.signature, cached.written_at = signature, now
        # serialised once, by orjson: the table (raw values) puts these bytes in RocksDB and
        # sends the same bytes as the changelog record (Faust's JSON codec did it twice); exact: the
        # changelog send and RocksDB hold it a while, orjson's buffer would be several times its size
        value = exact_bytes(
            orjson.dumps(
                {d: orjson.Fragment(v) if type(v) is bytes else v for d, v in bucket.units.items()},
                option=orjson.OPT_NON_STR_KEYS,
            )
        )
        started = time.perf_counter()
        with as_current_event(event):
            self.table[key] = value
        self.table_write_s += time.perf_counter() - started
        self.bucket_writes += 1
        return len(fresh)

    def _forget_clean(self) -> None:
        """Bounded memory: past ``max_units``, forget the clean units (read back when needed)."""
        if len(self._units) <= self.max_units:
            return
        self._units = {d: c for d, c in self._units.items() if c.dirty}
        keep = {
            bucket_key(c.event.message.partition, d, self.buckets)
            for d, c in self._units.items()
            if c.event is not None
        }
        self._buckets = {k: b for k, b in self._buckets.items() if k in keep}

    def clear(self) -> None:
        """A rebalance: forget everything (unflushed changes were never acked; see module doc)."""
        self._units.clear()
        self._dirty.clear()
        self._buckets.clear()
        self._plan = None
