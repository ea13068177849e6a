"""A replay over several processes, split by unit, that decides exactly what one process decides.

Why: one Python process replays ~24,000 archived readings per CPU second (archive read, ingest's
validation, the rules); issue 12 asks for 50,000 a second. The rules keep one state per unit and
units never read each other's state, so the per-unit work (most of it) spreads over processes.
What units share is the alerts stage's part: the event clock (device time, with the receive time
as its wall), the response loop (escalations at 5/30 minutes, dispatch actions) and the order of
the output lines. That part stays in one process, the parent, and is cheap.

**Workers** (``--jobs N``, each a share of the units, balanced by archive bytes) read their units'
partitions, re-parse with ingest's validation, run the rules and each unit's ticks exactly as
:class:`~replay.engine.Replayer` does, and stream to the parent, as orjson batches through a pipe,
only what the shared part can observe, each tagged with its place in the single process's order:

- a **message** event ``[w, 1, received_ms, seq, writer, effects]`` where ``w`` is the simulated
  wall when it was handled (``max(received_ms, warm-up start)``). ``effects`` is the message's
  timeline entries, rule alert changes, hidden-danger changes and notes, in the order it made
  them, then its device time if it raised the *worker's* highest device time; or, for the usual
  reading, just that device time (an int). Such readings one after another at the same wall are
  one event (the first one's key, the last one's time): observes at one wall commute, as the
  clock is asked only when the wall moves on, and the highest is all they leave. A message with
  none of these is not sent: its only shared effects are the wall passing ``w`` and an
  ``observe`` below the clock's high, neither of which changes what the parent decides (the next
  event the parent sees moves the wall past ``w`` before any clock question is asked, with the
  same clock state);
- a **tick** event ``[due, flag, device_id, effects]`` for every tick (the single process asks
  the clock after each one). A tick fires in the single process when the wall first passes its
  due: before the messages received at ``due`` (``flag`` 0), or, when it fell due at the very
  wall it was scheduled at, after them (``flag`` 2); ticks of one due fire by device id.

So ``(w, flag, ...)`` sorts every event exactly where the single process met it: messages by the
archive's receive order ``(received_ms, seq, writer)``, ticks by ``(due, device_id)`` between them.
Each worker's stream is sorted by that key; the parent merges them (``heapq.merge``) with its own
stream (dispatch actions and unit-less reports, read by the parent) and runs the shared part:
before a tick it fires the clock deadlines due strictly before it (the single process runs a tick
before a deadline of the same instant), before a message the rest of ``advance`` (deadlines up to
``w``, then asks the clock once), then applies the effects through the very methods the single
process uses (:meth:`Replayer._rule_alert`, ``_hazard``, ``_changes``). An ``observe`` the parent
skips is one that cannot raise the clock: a worker's highest device time is never above the
parent's, since every value it accepted the parent also saw.

Two barriers make the end the same: after reading, each worker says the wall of its last message,
and the parent answers with the fleet's (so a worker whose units fell silent early still runs its
ticks up to the last message of any unit, where the single process ran them); after the messages,
the parent computes where the clocks run to (the window's end on the wall, which depends on the
incidents) and the workers run their ticks up to it.

What stays single-process: ``--speed`` (pacing and the progress line). Where replay can differ from
live is unchanged (``replay/__init__.py``); ``tests/test_replay.py`` checks ``--jobs 1`` and
``--jobs 2`` give byte-identical ``alerts.jsonl``, ``hazards.jsonl`` and ``timeline.jsonl``.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import multiprocessing
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from alerts.incidents import Incident
from rules import RuleEngine
from sesmon.contract.archive import (
    ArchiveCorrupt,
    ArchivedMessage,
    ReadStats,
    iter_archive,
    partition_bytes,
)
from sesmon.contract.registry import Registry
from sesmon.contract.schemas import Alert, Receiver
from sesmon.runtime.settings import Settings

from .engine import CatalogueSchedule, Replayer, ReplayResult, timeline_entry
from .window import Target, Window

log = logging.getLogger("sesmon.replay")

MESSAGE = 1  # the flag of a message event; ticks are 0 (before the messages of their due) or 2 (after)
BATCH = 1024  # events per pipe write
#: below this many archive bytes a replay runs in one process: starting workers costs more
MIN_PARALLEL_BYTES = 512 * 1024


def default_jobs() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_units(sizes: dict[str, int], jobs: int) -> list[list[str]]:
    """``jobs`` shares of the units, about equal in archive bytes (largest first onto the lightest)."""
    shares: list[tuple[int, int, list[str]]] = [(0, n, []) for n in range(jobs)]
    for device_id in sorted(sizes, key=lambda d: (-sizes[d], d)):
        total, n, units = heapq.heappop(shares)
        units.append(device_id)
        heapq.heappush(shares, (total + sizes[device_id], n, units))
    return [sorted(units) for _total, _n, units in sorted(shares, key=lambda s: s[1]) if units]


# --------------------------------------------------------------------------- the worker


class WorkerReplayer(Replayer):
    """A :class:`Replayer` over a share of the units that streams, instead of deciding, what the
    shared part (clock, response loop, output order) needs; its own clock only tracks the highest
    device time it has seen (which decides whether a reading's time is worth sending)."""

    def __init__(self, *args: Any, send: Callable[[bytes], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send = send
        self._events: list[list[Any]] = []
        self._fx: list[tuple[str, Any]] = []
        self._force = False  # the catalogue switched at this message: the parent must see its wall
        self._entry_wall = self.wall
        self.first_signal: dict[str, list[Any]] = {}  # device -> the key of its first plotted reading

    # the shared part's inputs, collected as effects of the message or tick being handled

    def _timeline(self, at: int, source: str, what: str, **fields: Any) -> None:
        self._fx.append(("t", timeline_entry(at, source, what, fields)))

    def _rule_alert(self, alert: Alert, unit: Any, record: dict[str, Any] | None = None) -> None:
        self._fx.append(("a", alert.model_dump(mode="json")))
        self.clock.observe(alert.changed_at)  # as the parent will: the high only goes up

    def _hazard(self, hazard: dict[str, Any]) -> None:
        self._fx.append(("h", hazard))

    def _note(self, text: str) -> None:
        self._fx.append(("n", text))

    def _switched(self, engine: RuleEngine, wall: int) -> None:
        self._force = True  # the parent notes the switch at the first wall any process reached

    def _take_snapshot(self) -> None:
        if not self.snapshot_taken and self.snapshot_names:
            super()._take_snapshot()
        self.snapshot_taken = True

    def advance(self, wall: int) -> None:
        self._entry_wall = self.wall
        super().advance(wall)

    def _tick(self, device_id: str, now_ms: int) -> None:
        super()._tick(device_id, now_ms)
        fx, self._fx = self._fx, []
        self._event([now_ms, 2 if now_ms == self._entry_wall else 0, device_id, fx])

    def _event(self, event: list[Any]) -> None:
        events = self._events
        events.append(event)
        if len(events) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._events:
            self._send(orjson.dumps(["ev", self._events]))
            self._events = []

    # the runs

    def run_messages(self, messages: Iterable[ArchivedMessage], wall_end: int) -> None:
        """The messages in receive order, then the ticks up to the fleet's last message."""
        clock, advance, handle, signals = self.clock, self.advance, self.handle, self.result.signals
        event = self._event
        for msg in messages:
            received_ms = msg.received_ms
            if received_ms > self.wall:
                advance(received_ms)
            high, plotted = clock.high, len(signals)
            handle(msg)
            if len(signals) != plotted:
                self.first_signal[next(reversed(signals))] = [self.wall, MESSAGE, *msg[:3]]
            fx = self._fx
            raised = clock.high != high
            if fx:
                if raised:
                    fx.append(("o", clock.high))
                self._fx = []
                event([self.wall, MESSAGE, received_ms, msg.seq, msg.writer, fx])
            elif raised:  # the usual reading: only its device time
                events = self._events
                last = events[-1] if events else None
                if last is not None and last[0] == self.wall and type(last[-1]) is int and last[1] == MESSAGE:
                    last[5] = clock.high  # the reading before, at this wall: one observe of the higher
                else:
                    event([self.wall, MESSAGE, received_ms, msg.seq, msg.writer, clock.high])
            elif self._force:
                event([self.wall, MESSAGE, received_ms, msg.seq, msg.writer, []])
            self._force = False
        self.advance(wall_end)
        self.flush()

    def run_final(self, final_wall: int) -> None:
        self.advance(final_wall)
        self.flush()
        self._take_snapshot()


@dataclass
class WorkerSetup:
    """What a worker needs (pickled once at its start; the stream itself is orjson)."""

    settings: Settings
    target: Target
    window: Window
    registry: Registry | None
    data_dir: Path
    archive_dir: Path
    devices: list[str]
    snapshot_names: list[str]
    keep_signals: bool
    strict: bool


def _worker_main(conn: Connection, setup: WorkerSetup) -> None:
    """A worker process: read, replay, stream; any failure goes to the parent as an ``error``."""
    try:
        _work(conn, setup)
    except BaseException as exc:  # reported to the parent, which raises it
        with contextlib.suppress(OSError):
            conn.send_bytes(orjson.dumps(["error", type(exc).__name__, str(exc), traceback.format_exc()]))
    finally:
        conn.close()


def _work(conn: Connection, setup: WorkerSetup) -> None:
    window = setup.window
    worker = WorkerReplayer(
        setup.settings,
        target=setup.target,
        window=window,
        registry=setup.registry,
        catalogues=CatalogueSchedule.load(setup.data_dir),
        devices=frozenset(setup.devices),
        keep_signals=setup.keep_signals,
        send=conn.send_bytes,
    )
    worker.snapshot_names = setup.snapshot_names
    read = ReadStats()
    messages = list(
        iter_archive(
            setup.archive_dir,
            start_ms=window.warmup_ms,
            end_ms=window.cap_ms,
            devices=set(setup.devices),
            include_dispatch=False,
            include_reports=False,
            include_unknown=False,
            strict=setup.strict,
            stats=read,
        )
    )
    last_wall = max(window.warmup_ms, messages[-1].received_ms) if messages else window.warmup_ms
    conn.send_bytes(orjson.dumps(["read", last_wall]))
    worker.run_messages(messages, orjson.loads(conn.recv_bytes()))
    del messages
    conn.send_bytes(orjson.dumps(["end1"]))
    worker.run_final(orjson.loads(conn.recv_bytes()))
    result = worker.result
    result.stats["messages"] = worker._messages
    summary = {
        "stats": dict(result.stats),
        "readings": result.readings,
        "signals": [[worker.first_signal[d], d, samples] for d, samples in result.signals.items()],
        "snapshots": result.snapshots,
        "read": asdict(read),
        "cpu_s": time.process_time(),
    }
    conn.send_bytes(orjson.dumps(["end2", summary]))


# --------------------------------------------------------------------------- the parent


class SharedReplayer(Replayer):
    """The parent: the clock, the response loop and the outputs, fed the workers' merged events."""

    def _take_snapshot(self) -> None:
        self.snapshot_taken = True  # the workers hold the units' states: they take it

    def _apply(self, effects: list[Any]) -> None:
        """A message's or tick's effects, through the methods the single process runs them by."""
        result = self.result
        for tag, value in effects:
            if tag == "o":
                self.clock.observe(value)
            elif tag == "t":
                result.timeline.append(value)
            elif tag == "a":
                alert = Alert.model_validate(value)
                self._rule_alert(alert, self._unit(alert.device_id), value)
            elif tag == "h":
                self._hazard(value)
            else:
                result.notes.append(value)

    def _tick_event(self, due: int, effects: list[Any]) -> None:
        """One iteration of the single process's ``advance`` loop that ran a tick (in a worker)."""
        loop, clock = self.loop, self.clock
        while True:  # the clock deadlines the wall reaches before the tick (a tie goes to the tick)
            t_clock = self._clock_wall(loop.next_due())
            if t_clock >= due:
                break
            self._move(t_clock)
            self._changes(loop.on_clock(clock.now()))
        self._move(due)
        if effects:
            self._apply(effects)
        self._changes(loop.on_clock(clock.now()))

    def run_events(self, events: Iterable[list[Any]], wall_end: int) -> None:
        """Phase one: every message and the ticks between them, in the single process's order."""
        clock, handle, apply, tick = self.clock, self.handle, self._apply, self._tick_event
        advanced = self.wall
        for event in events:
            if event[1] == MESSAGE:
                wall = event[0]
                if wall > advanced:
                    advanced = wall
                    self._advance(wall)
                effects = event[5]
                if type(effects) is int:  # the usual reading: only its device time
                    if clock.high is None or effects > clock.high:
                        clock.observe(effects)
                elif type(effects) is list:
                    apply(effects)
                else:
                    handle(effects)  # the parent's own message (dispatch, a unit-less report)
            else:
                tick(event[0], event[3])
        if wall_end > advanced:  # the fleet's last message was one with nothing to send
            self._advance(wall_end)

    def run_final(self, final_wall: int, ticks: Iterable[list[Any]]) -> None:
        """Phase two: the clocks and the workers' ticks run to the final wall."""
        start = self.wall
        for event in ticks:
            self._tick_event(event[0], event[3])
        if final_wall > start:
            self._advance(final_wall)


def _stream(conn: Connection, until: str, summaries: dict[str, Any]) -> Iterator[list[Any]]:
    """A worker's events up to the ``until`` marker (its payload goes to ``summaries``)."""
    while True:
        message = _next(conn)
        tag = message[0]
        if tag == "ev":
            yield from message[1]
        elif tag == until:
            summaries[until] = message[1] if len(message) > 1 else None
            return
        elif tag == "error":
            _raise(message)
        else:
            raise RuntimeError(f"a replay worker said {tag!r} where {until!r} was expected")


def _raise(message: list[Any]) -> None:
    _tag, kind, text, trace = message
    log.error("replay worker failed:\n%s", trace)
    if kind == "ArchiveCorrupt":
        raise ArchiveCorrupt(text)
    raise RuntimeError(f"a replay worker failed: {kind}: {text}")


def _next(conn: Connection) -> list[Any]:
    """A worker's next message; a worker gone without one (killed, or it could not start) is said so."""
    try:
        return orjson.loads(conn.recv_bytes())
    except EOFError:
        raise RuntimeError("a replay worker ended without a word (killed, or it could not start)") from None


def _receive(conn: Connection, tag: str) -> Any:
    message = _next(conn)
    if message[0] == "error":
        _raise(message)
    if message[0] != tag:
        raise RuntimeError(f"a replay worker said {message[0]!r} where {tag!r} was expected")
    return message[1]


def _context() -> Any:
    """forkserver: no fork of a parent that may hold threads; the server imports the replay once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["replay.parallel"])
    return ctx


@dataclass
class ParallelRun:
    result: ReplayResult
    read: ReadStats
    worker_cpu_s: float  # CPU seconds of the workers (process_time of each, summed)
    jobs: int
    parent: SharedReplayer  # the clock and response loop's replayer (it parses, e.g. for signals_of)


def replay_parallel(
    settings: Settings,
    *,
    target: Target,
    window: Window,
    registry: Registry | None,
    data_dir: Path,
    archive_dir: Path,
    devices: frozenset[str],
    jobs: int,
    resolver: Callable[[Incident], list[Receiver]] | None = None,
    keep_signals: bool = True,
    strict: bool = True,
    sizes: dict[str, int] | None = None,
) -> ParallelRun:
    """The replay of ``devices`` over ``jobs`` worker processes; the result :meth:`Replayer.run` gives.
    ``sizes``: each unit's archive bytes in the window, when the caller has read them already."""
    parent = SharedReplayer(
        settings,
        target=target,
        window=window,
        registry=registry,
        catalogues=CatalogueSchedule.load(data_dir),
        resolver=resolver,
        devices=devices,
        keep_signals=keep_signals,
    )
    if sizes is None:
        sizes = partition_bytes(archive_dir, devices, start_ms=window.warmup_ms, end_ms=window.cap_ms)
    shares = split_units(sizes, jobs)
    names = parent.snapshot_names or []
    ctx = _context()
    conns: list[Connection] = []
    procs = []
    try:
        for share in shares:
            mine = set(share)
            setup = WorkerSetup(
                settings,
                target,
                window,
                registry,
                data_dir,
                archive_dir,
                share,
                [n for n in names if n in mine],
                keep_signals,
                strict,
            )
            ours, theirs = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_worker_main, args=(theirs, setup), name=f"sesmon-replay-{len(procs)}")
            proc.start()
            theirs.close()
            conns.append(ours)
            procs.append(proc)
        read = ReadStats()
        own = list(
            iter_archive(
                archive_dir,
                start_ms=window.warmup_ms,
                end_ms=window.cap_ms,
                devices=set(devices),
                include_units=False,
                strict=strict,
                stats=read,
            )
        )
        warmup = window.warmup_ms
        own_events = [[max(m.received_ms, warmup), MESSAGE, *m[:3], m] for m in own]
        wall_end = max([warmup] + [_receive(c, "read") for c in conns] + [e[0] for e in own_events[-1:]])
        for conn in conns:
            conn.send_bytes(orjson.dumps(wall_end))
        summaries: list[dict[str, Any]] = [{} for _ in conns]
        streams = [_stream(c, "end1", s) for c, s in zip(conns, summaries, strict=True)]
        parent.run_events(heapq.merge(own_events, *streams), wall_end)
        result = parent.result
        final_wall = parent.final_wall()
        for conn in conns:
            conn.send_bytes(orjson.dumps(final_wall))
        streams = [_stream(c, "end2", s) for c, s in zip(conns, summaries, strict=True)]
        parent.run_final(final_wall, heapq.merge(*streams))
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    cpu = _merge_summaries(parent, read, [s["end2"] for s in summaries])
    result.stats["messages"] += parent._messages
    parent.conclude()
    return ParallelRun(result, read, cpu, len(shares), parent)


def _merge_summaries(parent: SharedReplayer, read: ReadStats, summaries: list[dict[str, Any]]) -> float:
    """The workers' counters, plots, unit snapshots and read statistics into the parent's result."""
    result = parent.result
    stats: Counter[str] = Counter()
    signals: list[tuple[list[Any], str, list[Any]]] = []
    snapshots: dict[str, Any] = {}
    cpu = 0.0
    for summary in summaries:
        stats.update(summary["stats"])
        result.readings += summary["readings"]
        signals.extend((first, device, samples) for first, device, samples in summary["signals"])
        snapshots.update(summary["snapshots"])
        for name, value in summary["read"].items():
            if name == "problems":
                read.problems.extend(value[: max(0, 100 - len(read.problems))])
            else:
                setattr(read, name, getattr(read, name) + value)
        cpu += summary["cpu_s"]
    for name, value in stats.items():
        result.stats[name] += value
    signals.sort(key=lambda s: s[0])  # the order the single process first plotted each unit in
    for _first, device, samples in signals:
        result.signals[device] = [(ts, body) for ts, body in samples]
    names = parent.snapshot_names or sorted(snapshots)[:50]
    result.snapshots = {name: snapshots[name] for name in names if name in snapshots}
    return cpu


__all__ = [
    "ParallelRun",
    "SharedReplayer",
    "WorkerReplayer",
    "default_jobs",
    "replay_parallel",
    "split_units",
]
