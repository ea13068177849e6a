"""The one place sesmon touches Faust's private API.

Faust's RocksDB tables pick the partition of a read or write from the *current event* (a
context variable the stream sets while an agent handles one event). Batches taken with
``noack_take`` have no current event, so the worker sets it by hand to an event of the unit's
own partition. ``faust.streams._current_event`` is private; tests/test_streams_faust_private.py
fails loudly if a Faust upgrade renames it or stops honouring it.

Faust also builds the worker's aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded.
Tansu answers a fetch that finds no data only when that wait runs out (it is not woken by new
records), so a caught-up worker slept 1.5 s before every next record: the floor of a page's
latency and the burst-and-stall pattern bench/e2e.py showed. :func:`limit_fetch_wait` sets the
consumer's wait (aiokafka's ``_fetch_max_wait_ms``, read when the consumer starts).

aiokafka sends the next fetch the moment the last one's records are taken, so a busy worker asked
Tansu hundreds of times a second for a few records each, and Tansu spends about 0.7 ms plus 0.1 ms
per partition on every fetch (measured: one idle consumer of 20 partitions at 50 fetches/s cost
it 13 % of a core). :func:`pace_fetches` makes a fetch to a broker start at least an interval after
the previous one started (aiokafka's ``Fetcher._proc_fetch_request``); the records of a fetch are
handed over at once, only the next request waits.

When Faust is given partitions it calls aiokafka's ``seek_to_committed``, which seeks only to
committed offsets above 0 and leaves the rest to the reset policy, that is to the broker's
ListOffsets(earliest). Tansu can answer that with offset 1 when two producers wrote a partition
at once (README, Semantics), so the worker skipped the partition's first record.
:func:`start_uncommitted_at_zero` seeks those partitions to offset 0 (public aiokafka API; the
reset policy still applies if 0 is out of range on a Kafka with retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from faust.streams import _current_event, current_event
from faust.transport.drivers import aiokafka as faust_aiokafka


@contextmanager
def as_current_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for the duration (a table read or write)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def faust_current_event() -> Any:
    """What Faust itself believes the current event is (for the upgrade test)."""
    return current_event()


def limit_fetch_wait(max_wait_ms: int) -> None:
    """Every Faust worker consumer created from now on waits at most ``max_wait_ms`` per fetch."""
    thread_class = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_class, "_sesmon_original_create", None) or thread_class._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    thread_class._sesmon_original_create = original  # type: ignore[attr-defined]
    thread_class._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def pace_fetches(min_interval_ms: float) -> None:
    """Every aiokafka fetch in this process starts at least ``min_interval_ms`` after the previous
    one to the same broker started (0: as soon as the last records are taken, aiokafka's way)."""
    original = getattr(Fetcher, "_sesmon_original_fetch", None) or Fetcher._proc_fetch_request
    Fetcher._sesmon_original_fetch = original  # type: ignore[attr-defined]
    if min_interval_ms <= 0:
        Fetcher._proc_fetch_request = original  # type: ignore[method-assign]
        return
    interval = min_interval_ms / 1000

    async def paced_fetch(self: Any, assignment: Any, node_id: int, request: Any) -> bool:
        started = time.monotonic()
        got_records = await original(self, assignment, node_id, request)
        rest = interval - (time.monotonic() - started)
        if rest > 0:
            if got_records:  # hand them over now (what aiokafka does when this task ends)
                for waiter in self._fetch_waiters:
                    self._notify(waiter)
            # the node stays "in flight" meanwhile: no next fetch. A stopping consumer cancels this
            # task and awaits it: end quietly, as aiokafka's own fetch does, not fail the stop
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(rest)
        return bool(got_records)

    Fetcher._proc_fetch_request = paced_fetch  # type: ignore[method-assign]


def start_uncommitted_at_zero() -> None:
    """Every aiokafka consumer in this process starts a partition without a committed offset (or
    committed at 0) at offset 0 when ``seek_to_committed`` runs, as Faust's assignment does.

    Table changelogs are left as they were: Faust's recovery places those itself."""
    original = (
        getattr(AIOKafkaConsumer, "_sesmon_original_seek_to_committed", None)
        or AIOKafkaConsumer.seek_to_committed
    )

    async def seek_to_committed(self: AIOKafkaConsumer, *partitions: Any) -> dict[Any, int | None]:
        committed = await original(self, *partitions)
        for tp, offset in committed.items():
            if (offset is None or offset <= 0) and not tp.topic.endswith("-changelog"):
                self.seek(tp, 0)  # aiokafka left it to ListOffsets(earliest)
        return committed

    AIOKafkaConsumer._sesmon_original_seek_to_committed = original  # type: ignore[attr-defined]
    AIOKafkaConsumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
