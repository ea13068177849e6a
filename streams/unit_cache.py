"""Units' rule state in memory between checkpoints, written to the Faust table at checkpoints.

Why: a Faust table write costs ≈150 µs with its changelog record (stack.md), more than ten
readings' rules. The worker therefore keeps each unit's :class:`~rules.state.UnitState` here,
decoded once, and writes a unit only at a checkpoint and only if it changed since the last one.

Restart-safety: the worker acks its input records only after the checkpoint that wrote the
states they changed, so the offsets Faust commits never run ahead of the table. A crash or a
rebalance re-evaluates the input since the last commit against a state at least that new;
alert ids are deterministic and the alerts stage drops repeats. On a rebalance the worker
checkpoints (Faust does not redeliver unacked records of a partition it keeps, so an unacked
event would stall the commit for good) and then drops the cache whole (:meth:`clear`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rules.state import UnitState, load

from .faust_private import as_current_event


@dataclass(slots=True)
class _Cached:
    state: UnitState
    event: Any  # an input event of the unit's partition: a RocksDB table write needs one
    dirty: bool


class UnitCache:
    """device_id -> its state, read through from the table, written back at :meth:`flush`."""

    def __init__(self, table: Any, max_units: int = 500_000) -> None:
        self.table = table
        self.max_units = max_units
        self._units: dict[str, _Cached] = {}
        self._dirty: set[str] = set()

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
            self._units[device_id] = _Cached(state, event, False)
        return state

    def put(self, device_id: str, state: UnitState, event: Any) -> None:
        cached = self._units.get(device_id)
        if cached is None:
            self._units[device_id] = _Cached(state, event, True)
        else:
            cached.state, cached.event, cached.dirty = state, event, True
        self._dirty.add(device_id)

    def states(self) -> dict[str, UnitState]:
        return {device_id: cached.state for device_id, cached in self._units.items()}

    def flush(self) -> int:
        """Write every unit changed since the last flush; returns how many were written."""
        written = 0
        for device_id in self._dirty:
            cached = self._units.get(device_id)
            if cached is None or not cached.dirty:
                continue
            with as_current_event(cached.event):
                self.table[device_id] = cached.state
            cached.dirty = False
            cached.event = None  # let the event (and its record) go
            written += 1
        self._dirty.clear()
        if len(self._units) > self.max_units:  # bounded memory: forget the clean ones, re-read later
            self._units = {d: c for d, c in self._units.items() if c.dirty}
        return written

    def clear(self) -> None:
        """A rebalance: forget everything (unflushed changes were never acked; see module doc)."""
        self._units.clear()
        self._dirty.clear()
