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
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
