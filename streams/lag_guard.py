"""Deadman ticks wait while the worker is behind on a partition.

Why: a tick judges a unit on processing time ("no reading for 3 minutes"), but a worker that
lags holds the unit's newer readings in Kafka. Measured (bench/e2e.py, 10 minutes at 0.4 x raw,
with the machine shared): once the worker fell ~60 s behind, every unit looked silent, the sweep
sent ticks for all 10,000 units, evaluating them slowed the readings further, and the worker
ended evaluating 5-500 readings/s while 1,600/s arrived. So a partition's ticks wait while
records wait on it *and* the newest reading evaluated there was received over ``max_lag_ms``
ago; a partition with nothing waiting (a unit, or the whole partition, really silent) ticks.
"""

from __future__ import annotations


class TickLagGuard:
    """Per input partition: the receive time of the newest reading evaluated there."""

    def __init__(self, max_lag_ms: int) -> None:
        self.max_lag_ms = max_lag_ms
        self.received_ms: dict[int, int] = {}

    def saw(self, partition: int, received_ms: int) -> None:
        if received_ms > self.received_ms.get(partition, 0):
            self.received_ms[partition] = received_ms

    def behind(self, now_ms: int, waiting: dict[int, int]) -> set[int]:
        """Partitions whose ticks wait: ``waiting`` records there, and the worker that far behind."""
        if self.max_lag_ms <= 0:
            return set()
        return {
            partition
            for partition, records in waiting.items()
            if records > 0 and now_ms - self.received_ms.get(partition, 0) > self.max_lag_ms
        }
