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

Restart-safety: the worker acks its input records only after the checkpoint that wrote the
states they changed, so the offsets Faust commits never run ahead of the table. A crash or a
rebalance re-evaluates the input since the last commit against a state at least that new;
alert ids are deterministic and the alerts stage drops repeats. On a rebalance the worker
checkpoints (Faust does not redeliver unacked records of a partition it keeps, so an unacked
event would stall the commit for good) and then drops the cache whole (:meth:`clear`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from rules.state import UnitState, load

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
    ) -> None:
        self.table = table
        self.clock = clock
        self.max_units = max_units
        self.max_age_s = max_age_s  # 0: write every change
        self._units: dict[str, _Cached] = {}
        self._dirty: set[str] = set()
        self._partitions: dict[Any, PartitionEvent] = {}  # input tp -> its stand-in event

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
        with as_current_event(event):
            stored = self.table.get(device_id)
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

    def flush(self, force: bool = False) -> int:
        """Write the units changed materially since their last write, or changed and last written
        ``max_age_s`` ago (every changed unit when ``force``: a rebalance); returns how many.
        A unit left out stays dirty for a later checkpoint."""
        written = 0
        now = self.clock()
        dirty, self._dirty = self._dirty, set()
        for device_id in dirty:
            cached = self._units.get(device_id)
            if cached is None or not cached.dirty:
                continue
            signature = None
            wire = cached.state.to_json()
            if self.max_age_s > 0:
                signature = material_signature(cached.state, wire)
                fresh = now - cached.written_at < self.max_age_s
                if not force and fresh and signature == cached.signature:
                    self._dirty.add(device_id)  # only clocks moved: wait for a later checkpoint
                    continue
            # serialised once, by orjson: the table (raw values) puts these bytes in RocksDB and
            # sends the same bytes as the changelog record (Faust's JSON codec did it twice)
            with as_current_event(cached.event):
                self.table[device_id] = orjson.dumps(wire, option=orjson.OPT_NON_STR_KEYS)
            cached.dirty = False
            cached.signature, cached.written_at = signature, now
            written += 1
        if len(self._units) > self.max_units:  # bounded memory: forget the clean ones, re-read later
            self._units = {d: c for d, c in self._units.items() if c.dirty}
        return written

    def clear(self) -> None:
        """A rebalance: forget everything (unflushed changes were never acked; see module doc)."""
        self._units.clear()
        self._dirty.clear()
