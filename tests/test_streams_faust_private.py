"""Faust's private API, confined to streams/faust_private.py: fail loudly if an upgrade changes it."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faust.streams
from aiokafka.consumer.fetcher import Fetcher

from streams.faust_private import as_current_event, faust_current_event, limit_fetch_wait, pace_fetches


class _Event:
    """Stands for a Faust event: the context variable holds a weak reference to one."""


def test_faust_still_has_the_current_event_variable_we_set() -> None:
    assert isinstance(faust.streams._current_event, contextvars.ContextVar), (
        "faust.streams._current_event is gone or changed: RocksDB tables written from a batch "
        "need another way to name the partition (see streams/faust_private.py)"
    )


def test_faust_reads_back_the_event_we_make_current_and_forgets_it_after() -> None:
    event = _Event()
    before = faust_current_event()
    with as_current_event(event):
        assert faust_current_event() is event, "faust.streams.current_event() no longer reads our event"
    assert faust_current_event() is before


def test_the_private_name_is_used_nowhere_else() -> None:
    import re
    from pathlib import Path

    private = re.compile(r"\b_current_event\b")
    root = Path(__file__).resolve().parent.parent
    users = [
        str(p.relative_to(root))
        for folder in ("ingest", "streams", "rules", "alerts", "store", "simulators", "sesmon", "bench")
        for p in (root / folder).rglob("*.py")
        if private.search(p.read_text(encoding="utf-8"))
    ]
    assert users == ["streams/faust_private.py"]


def test_the_worker_consumer_fetch_wait_is_ours() -> None:
    """Faust hard-codes fetch_max_wait_ms=1500, which Tansu always waits out when caught up."""
    import aiokafka
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def make() -> aiokafka.AIOKafkaConsumer:  # aiokafka wants a running loop
        return aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=1500)

    made = asyncio.run(make())
    assert made._fetch_max_wait_ms == 1500, "aiokafka renamed _fetch_max_wait_ms: limit_fetch_wait is void"

    class Thread:  # just what _create_worker_consumer reads of its consumer thread
        pass

    limit_fetch_wait(25)
    limit_fetch_wait(30)  # idempotent: wraps Faust's own method once
    original = AIOKafkaConsumerThread._sesmon_original_create
    assert original.__name__ == "_create_worker_consumer"
    assert "fetch_max_wait_ms" in inspect.getsource(original), "Faust builds its consumer differently now"
    try:
        AIOKafkaConsumerThread._sesmon_original_create = lambda self, transport: made
        limit_fetch_wait(30)
        consumer = AIOKafkaConsumerThread._create_worker_consumer(Thread(), None)
    finally:
        AIOKafkaConsumerThread._sesmon_original_create = original
        limit_fetch_wait(30)
    assert consumer is made and consumer._fetch_max_wait_ms == 30


@contextmanager
def _paced(interval_ms: float, fake_fetch: Any) -> Iterator[type[Fetcher]]:
    """pace_fetches wrapped around ``fake_fetch`` instead of aiokafka's fetch, restored after."""
    original = getattr(Fetcher, "_sesmon_original_fetch", None) or Fetcher._proc_fetch_request
    Fetcher._sesmon_original_fetch = fake_fetch
    try:
        pace_fetches(interval_ms)
        yield Fetcher
    finally:
        Fetcher._sesmon_original_fetch = original
        pace_fetches(0)
    assert Fetcher._proc_fetch_request is original


def _start_fetch() -> tuple[asyncio.Future[Any], asyncio.Task[bool]]:
    """One (paced) fetch task of a bare fetcher, and the waiter its records wake."""
    fetcher = Fetcher.__new__(Fetcher)
    waiter = asyncio.get_running_loop().create_future()
    fetcher._fetch_waiters = {waiter}
    return waiter, asyncio.ensure_future(Fetcher._proc_fetch_request(fetcher, None, 0, None))


def test_fetches_are_paced_and_their_records_handed_over_at_once() -> None:
    """aiokafka's fetcher routine (private) is what pace_fetches wraps: a fetch that returns
    records wakes the waiters at once, and the next fetch cannot start before the interval."""
    assert "_proc_fetch_request" in inspect.getsource(Fetcher._fetch_requests_routine), (
        "aiokafka's fetcher no longer runs _proc_fetch_request: pace_fetches is void"
    )
    assert hasattr(Fetcher, "_notify") and "_fetch_waiters" in inspect.getsource(Fetcher.__init__)

    calls: list[float] = []

    async def fake_fetch(self: object, assignment: object, node_id: int, request: object) -> bool:
        calls.append(time.monotonic())
        return True

    async def run() -> float:
        started = time.monotonic()
        waiter, task = _start_fetch()
        await waiter
        assert not task.done(), "the records waited for the pause"  # handed over before it ends
        assert await task is True
        return time.monotonic() - started

    with _paced(500, fake_fetch):
        assert asyncio.run(run()) >= 0.499 and len(calls) == 1  # the next fetch waits the interval out


def test_a_consumer_stopped_during_the_pause_stops_cleanly() -> None:
    """aiokafka's ``Fetcher.close`` cancels the fetch task and awaits it without catching: a pause
    that let the cancellation out made every stop of a worker's consumer raise CancelledError
    (aiokafka's own fetch ends quietly when cancelled; so must the pause)."""

    async def fake_fetch(self: object, assignment: object, node_id: int, request: object) -> bool:
        return True

    async def run() -> bool:
        waiter, task = _start_fetch()
        await waiter  # the records are handed over: the task now sits in its pause
        task.cancel()  # what Fetcher.close() does, before it awaits the task
        return await task

    with _paced(60_000, fake_fetch):
        assert asyncio.run(asyncio.wait_for(run(), 10)) is True
