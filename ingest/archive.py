"""Ingest's archive writer: every message received, valid or dead-lettered, into the raw archive.

Format, layout and reader: :mod:`sesmon.contract.archive`. Why it is built this way:

- Journalled before it is produced, by the thread that produces it. The MQTT thread only appends
  ``(seq, topic, payload, record)`` to a deque (:meth:`ArchiveWriter.add`, ~0.3 µs); the bridge calls
  :meth:`ArchiveWriter.write_pending` just before it hands a Kafka record over (a full group from
  the MQTT thread, the groups that waited out the linger from the poll thread), which formats
  everything queued in one pass and appends it to the write-ahead journal with one ``write`` (in
  the OS page cache when it returns: a kill -9 of ingest loses none of it). So a record's messages
  are in the journal before Kafka can even confirm it, and acks never wait for the archive.
  Measured (issue 12, README): with a writer thread of its own, woken by the poll thread, the
  archive added 16-30 % to ingest's CPU per reading for ~4 µs of its own work a reading; inline,
  just before the produce, 7-13 % (its own work, ~3.5-4.7 µs at load). What went with the
  thread: its wake-ups, the GIL handed between three busy threads, and acks that waited a poll
  round for the writer (the poll thread then ran every 2 ms). A journal write that fails (disk
  full) leaves the messages queued: the record is produced anyway, its acks wait
  (:attr:`ArchiveWriter.written_seq` does not cover it) and the poll thread tries the write again
  every round (``archive_ack_waits``).
- One pass, little Python per message: the common message (valid device stream, a topic JSON
  needs no escape for) is one %-format of a prepared template (a test checks it is
  ``archive_line``'s output byte for byte) and two list appends (journal batch, its unit's lines);
  anything else takes ``archive_line``, the format's one definition.
- Few file appends, cheap compression. Lines are kept per partition (day, unit) and appended to the
  partition files as one gzip member each (ISA-L's deflate, level 1: a third of zlib's CPU for
  a few % more bytes; kept-open descriptors) at a checkpoint (the ``archive-checkpoint`` thread:
  every ``flush_s``, early when the buffers hold ``max_buffered_bytes``). After a checkpoint the
  journal segment it covered is deleted. 10,000 units cost one append per unit per checkpoint,
  not 10,000 a second.
- Bounded memory: the deque holds only messages not yet journalled (at most those of one Kafka
  record, or while writes fail those not acked: ``ingest_max_unacked``), the partition buffers by
  ``max_buffered_bytes`` (past twice that, while a checkpoint is behind, nothing more is journalled,
  acks wait and the MQTT thread stops taking messages at ``ingest_max_unacked``: back-pressure).
- Crash recovery: a journal segment no live process holds (``flock``) belongs to a crashed ingest;
  the next start folds it into the partition files and deletes it. A line that reached both
  (a crash during a checkpoint) is read once: the reader drops duplicates.
- Retention: days older than ``retention_days`` are deleted at start and when the local day changes.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import logging
import os
import re
import resource
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from sesmon.contract.archive import (
    FORMAT_FILE,
    FORMAT_TEXT,
    JOURNAL_DIR,
    JOURNAL_SUFFIX,
    SPECIAL_PARTITIONS,
    UNKNOWN,
    ReadStats,
    archive_line,
    day_bounds,
    day_name,
    device_partition,
    gzip_block,
    gzip_member,
    journal_lines,
    journal_segments,
    message_partition,
    partition_path,
    prune_archive,
)
from sesmon.contract.time import local_date
from sesmon.runtime.kafka import exact_bytes
from sesmon.runtime.retry import Stopping, call_with_retry

log = logging.getLogger("sesmon.ingest.archive")

FLUSH_S = 30.0  # partition files are appended at most this often (plus the early flushes below)
MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # all partitions together: a checkpoint when they hold this much
OPEN_FILES_MAX = 4096  # partition files kept open between appends (at most half the process's fd limit)
PRUNE_CHECK_S = 60.0  # how often the writer looks whether the local day changed (retention)
DEAD_TS_MAX_BYTES = 64 * 1024  # dead letters: a device time is looked for in bodies up to this size
NO_TS_REASONS = frozenset({"oversize", "too_deep", "not_json", "bad_topic"})
DETAIL_HEADER = "detail"
PLAIN_TOPIC = re.compile(rb'[^"\\\x00-\x1f]*')  # what orjson writes unescaped (and UTF-8 is checked)
PLAIN_TOPICS_MAX = 200_000  # topics known to be plain (a unit has a few)
COUNTERS = (
    "lines",  # messages written to the journal
    "dead_letters",
    "journal_bytes",
    "appends",  # gzip members appended to partition files
    "bytes",  # compressed bytes appended
    "opens",  # partition files opened
    "checkpoints",
    "recovered_lines",  # lines of crashed writers' journals folded in at start
    "pruned_days",
    "write_errors",  # journal writes that failed (retried at the next round; acks wait)
    "format_errors",  # messages the archive could not format (a bug): archived as internal_error
)
DEVICE_STREAMS = frozenset({"telemetry", "event", "status"})  # their key is the device id of the topic


class Archivable(Protocol):
    """What the writer reads of the bridge's record of a message (``ingest.bridge._Record``)."""

    topic: str  # Kafka topic: says the stream of a valid message
    key: bytes  # device id (device streams)
    headers: list[tuple[str, bytes]] | None  # dead letters: reason, detail, ...
    timestamp: int  # device time (valid messages)
    outcome: str  # "produced" or "dead_lettered"
    received_ms: int
    reason: str | None


def writer_name() -> str:
    """This process's name in every line: host, pid and start time (unique across restarts)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}-{int(time.time() * 1000)}"


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte; on an error the part already written is cut off again (no torn gzip member)."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, view[done:])
    except OSError:
        if done:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, os.fstat(fd).st_size - done)
        raise


def append_member(path: Path, lines: list[bytes], level: int = 1) -> int:
    """Append ``lines`` to a partition file as one gzip member (opening and closing it)."""
    data = gzip_member(lines, level)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    return len(data)


def known_unit_partition(partition: str, known_device: Callable[[str], Any] | None) -> str:
    """A dead letter's partition: its unit's only when the registry knows the unit, else ``_unknown``
    (junk device ids cannot make a file each). The live writer and crash recovery both decide here."""
    if known_device is None or partition in SPECIAL_PARTITIONS:
        return partition
    unit = partition[1:] if partition.startswith("__") else partition  # see device_partition
    try:
        known = known_device(unit)
    except Exception:  # a registry that cannot answer must not stop the archive
        known = None
    return partition if known else UNKNOWN


def recover_journals(
    archive_dir: Path, *, keep: Path | None = None, known_device: Callable[[str], Any] | None = None
) -> int:
    """Fold the journal segments of crashed writers into the partition files; returns lines folded.

    A segment whose ``flock`` is held belongs to a live writer and is left alone (``keep``: ours).
    A segment with an unreadable line is renamed ``.bad`` after folding the rest (kept for a human).
    ``known_device``: as the live writer's, so a dead letter lands in the partition live would give it.
    """
    folded = 0
    for path in journal_segments(archive_dir):
        if keep is not None and path == keep:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's
            bad = 0
            by_partition: dict[tuple[str, str], list[bytes]] = {}
            for number, line in journal_lines(path, ReadStats()):
                try:
                    msg = orjson.loads(line)
                    topic = base64.b64decode(msg["topic"]) if msg.get("topic_b64") else msg["topic"].encode()
                    body = (
                        base64.b64decode(msg["payload"])
                        if msg.get("payload_b64")
                        else msg["payload"].encode()
                    )
                    partition = message_partition(topic, body, msg["verdict"], msg.get("reason"))
                    if msg["verdict"] != "ok":
                        partition = known_unit_partition(partition, known_device)
                    where = (day_name(msg["received_ms"]), partition)
                except ValueError:  # pydantic's ValidationError is one
                    log.error("archive: %s:%d is unreadable; the segment is kept as .bad", path, number)
                    bad += 1
                    continue
                by_partition.setdefault(where, []).append(line)
            for (day, partition), lines in by_partition.items():
                target = partition_path(archive_dir, day, partition)
                target.parent.mkdir(parents=True, exist_ok=True)
                append_member(target, lines)
                folded += len(lines)
            if bad:
                os.replace(path, path.with_suffix(".bad"))
            else:
                os.unlink(path)
            log.info("archive: folded a crashed writer's journal %s into the partition files", path.name)
        finally:
            os.close(fd)
    return folded


class ArchiveWriter:
    """The archive of one ingest process.

    :meth:`add` from the MQTT thread (cheap); :meth:`write_pending` from whichever thread is about
    to produce a Kafka record (and from the poll thread while acks wait); checkpoints in the
    ``archive-checkpoint`` thread, which wakes every ``flush_s`` or when the buffers fill.
    """

    def __init__(
        self,
        archive_dir: Path,
        *,
        stream_of_topic: dict[str, str],
        known_device: Callable[[str], Any] | None = None,
        retention_days: int = 400,
        flush_s: float = FLUSH_S,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        """``stream_of_topic``: Kafka topic -> envelope type (``telemetry``, ``report``, ``dispatch``...).

        ``known_device`` (the registry's ``kind_of``): a dead letter goes to its unit's partition only
        when the unit is registered, so junk device ids cannot make a file each.
        """
        self.archive_dir = Path(archive_dir)
        self.writer = writer_name()
        # every key present from the start: the poll thread copies the counters while others count
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.written_seq = 0  # every message with seq <= this is in the journal (OS page cache)
        self._stream_of_topic = stream_of_topic
        self._device_topics = frozenset(t for t, kind in stream_of_topic.items() if kind in DEVICE_STREAMS)
        self._known = known_device
        self._retention_days = retention_days
        self._flush_s = flush_s
        self._max_buffered = max_buffered_bytes
        self._on_fatal = on_fatal
        self._queue: deque[tuple[int, bytes, bytes, Archivable]] = deque()
        self._seq = itertools.count(1)
        self._add_lock = threading.Lock()  # seq order = queue order, whichever thread adds
        self._lock = threading.Lock()  # the journal and the buffers: write_pending vs. the checkpoint swap
        self._checkpoint_now = threading.Event()
        self._abort = threading.Event()  # crash(): stop at once, leave the journal as a kill would
        self._log_errors = 0.0  # monotonic time of the last logged write error (rate limit)
        # lines kept per (day, partition) until a checkpoint, joined then: an exact-size bytes each (a
        # bytes object from orjson.dumps keeps its ~4 KiB buffer, 10x the line: those are copied)
        self._buffers: dict[tuple[str, str], list[bytes]] = {}
        self._by_key: dict[bytes, list[bytes]] = {}  # device id -> its lines of the current day
        # the common line by %-formatting: 1 µs a message less than orjson of a dict (a test checks that
        # it is archive_line's output byte for byte); the topic is one known to need no JSON escape
        self._line_format = (
            b'{"received_ms":%d,"seq":%d,"writer":' + orjson.dumps(self.writer) + b',"topic":"%s","ts":%d,'
            b'"verdict":"ok","payload":%s}'
        )
        self._plain_topics: set[bytes] = set()
        self._buffered = 0
        self._flushing = 0  # bytes the checkpoint thread is appending (still in memory)
        self._day = ("", 0, 0)  # (name, start ms, end ms) of the day being written
        self._dirs: set[str] = set()
        self._files: OrderedDict[tuple[str, str], int] = OrderedDict()  # open partition files, LRU
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._files_max = max(16, min(OPEN_FILES_MAX, soft_limit // 2))
        self._segment_no = 0
        self._journal_fd = -1
        self._journal_path: Path | None = None
        self._journal_dir = self.archive_dir / JOURNAL_DIR
        self._today: date | None = None
        self._segment_lines_mark = 0  # lines written when the current journal segment was opened
        self._final = threading.Event()  # close(): the last checkpoint
        self.thread = threading.Thread(target=self._run, name="archive-checkpoint", daemon=True)

    # ------------------------------------------------------------------ MQTT thread
    def add(self, topic: bytes, payload: bytes, record: Archivable) -> int:
        """Queue one message (any thread; cheap); returns its seq, which the ack waits for."""
        with self._add_lock:
            seq = next(self._seq)
            self._queue.append((seq, topic, payload, record))
        return seq

    def covers(self, seq: int) -> bool:
        """Is message ``seq`` in the journal (and so survives a kill of this process)?"""
        return seq <= self.written_seq

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ArchiveWriter:
        """Prune, open our journal segment, fold in crashed writers' journals, start checkpointing."""
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        self._journal_dir.mkdir(exist_ok=True)
        marker = self.archive_dir / FORMAT_FILE
        if not marker.is_file():
            marker.write_bytes(FORMAT_TEXT)
        self._prune()
        self._open_segment()  # before recovery: ours is locked, so it is not taken for a crashed one
        self.counters["recovered_lines"] += recover_journals(
            self.archive_dir, keep=self._journal_path, known_device=self._known
        )
        self.thread.start()
        return self

    @property
    def threads(self) -> dict[str, threading.Thread]:
        """The threads a stage's health watches: if one dies, the stage must end."""
        return {"archive-checkpoint": self.thread}

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, append every partition and delete the journal (a clean stop).

        Call it once nothing adds any more (the bridge: after its MQTT and poll threads stopped).
        """
        self.write_pending()
        self._final.set()
        self._checkpoint_now.set()
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def abort(self) -> None:
        """Stop as a killed process would: nothing more written, the journal left for recovery."""
        self._abort.set()
        self._checkpoint_now.set()
        if self.thread.ident is not None:
            self.thread.join(5)
        with self._lock:
            self._close_files()
            if self._journal_fd >= 0:
                os.close(self._journal_fd)  # releases the flock: the segment now looks crashed
                self._journal_fd = -1

    def snapshot(self) -> dict[str, Any]:
        return {
            **{f"archive_{name}": value for name, value in self.counters.items()},
            "archive_queue": len(self._queue),
            "archive_buffered_bytes": self._buffered + self._flushing,
        }

    # ------------------------------------------------------------------ the writer
    def write_pending(self) -> None:
        """Format what is queued, append it to the journal (one write), keep it per partition.

        Any thread (several at once: they take turns, and one may find that another took its
        messages); the bridge calls it before it produces a Kafka record, so the record's messages
        are journalled before Kafka can confirm it. Never raises and never blocks on a retry: a
        failed write (disk full) leaves the messages queued for the next call, and their acks wait
        (the stage's stall watchdog ends a process that stays stuck); a bug ends the stage
        (``on_fatal``), whose unacked messages the broker redelivers.
        """
        if not self._queue or self._abort.is_set():
            return
        if self._buffered + self._flushing >= 2 * self._max_buffered:
            self._checkpoint_now.set()
            return  # the checkpoint is behind: take no more (acks wait: back-pressure), memory stays bounded
        try:
            with self._lock:
                if self._journal_fd < 0 or not self._queue:
                    return  # closed, or another thread wrote what was queued meanwhile
                self._write_batch()
        except Exception as exc:
            log.exception("archive: the journal write failed")
            if self._on_fatal is not None:
                self._on_fatal(f"the archive writer failed: {type(exc).__name__}: {exc}")
            return
        if self._buffered >= self._max_buffered:
            self._checkpoint_now.set()

    def _write_batch(self) -> None:
        queue = self._queue
        popleft = queue.popleft
        items = [popleft() for _ in range(len(queue))]
        lines: list[bytes] = []
        add_line = lines.append
        # the common message inline (a call per message costs more than the formatting; so does a
        # second pass): formatted, appended to its unit's buffer, listed for the journal. The rest by
        # archive_line, the format's one definition, which this must (and a test does) match byte for byte.
        dumps, device_topics, line_of = orjson.dumps, self._device_topics, self._line_format
        plain_topics = self._plain_topics
        by_key = self._by_key
        day, start, end = self._day
        for seq, topic, payload, record in items:
            received_ms = record.received_ms
            if not start <= received_ms < end:
                day = day_name(received_ms)
                start, end = day_bounds(day)
                self._day = (day, start, end)
                by_key = self._by_key = {}  # buffers of another day
            # a valid telemetry, event or status message on a topic JSON needs no escapes for
            if record.topic in device_topics and (topic in plain_topics or self._plain(topic)):
                try:
                    line = line_of % (received_ms, seq, topic, record.timestamp, dumps(payload.decode()))
                except (UnicodeDecodeError, TypeError):  # not UTF-8 (or a bug): the careful way
                    line = self._other(day, seq, topic, payload, record)
                else:
                    kept = by_key.get(record.key)
                    if kept is None:
                        kept = by_key[record.key] = self._buffer(day, device_partition(record.key.decode()))
                    kept.append(line)
            else:
                line = self._other(day, seq, topic, payload, record)
            add_line(line)
        add_line(b"")
        data = b"\n".join(lines)
        # the lines are in the buffers before the journal has them: if this write fails, the next
        # round formats the same messages again under the same seq, and readers drop the repeat
        try:
            _write_all(self._journal_fd, data)
        except OSError as exc:
            queue.extendleft(reversed(items))  # again at the next call, in order
            self.counters["write_errors"] += 1
            if time.monotonic() - self._log_errors > 10:
                self._log_errors = time.monotonic()
                log.error("archive: cannot write the journal (%s); acks wait until it can", exc)
            return
        self.written_seq = items[-1][0]
        self.counters["lines"] += len(items)
        self.counters["journal_bytes"] += len(data)
        self._buffered += len(data)

    def _plain(self, topic: bytes) -> bool:
        """Is ``topic`` written by JSON as it is (no quote, backslash or control byte, valid UTF-8)?"""
        if PLAIN_TOPIC.fullmatch(topic) is None:
            return False
        try:
            topic.decode()
        except UnicodeDecodeError:
            return False
        if len(self._plain_topics) >= PLAIN_TOPICS_MAX:
            self._plain_topics.clear()
        self._plain_topics.add(topic)
        return True

    def _buffer(self, day: str, partition: str) -> list[bytes]:
        """The lines of a (day, partition) kept until the next checkpoint (see ``_buffers``)."""
        kept = self._buffers.get((day, partition))
        if kept is None:
            kept = self._buffers[(day, partition)] = []
        return kept

    def _other(self, day: str, seq: int, topic: bytes, payload: bytes, record: Archivable) -> bytes:
        """Anything but a valid UTF-8 device-stream message: formatted in full and kept."""
        try:
            partition, line = self._format(seq, topic, payload, record)
        except Exception as exc:  # a bug must not stop the archive (nor the poll thread it runs in)
            self.counters["format_errors"] += 1
            log.exception("archive: cannot format a message from %r; archived as internal_error", topic[:200])
            partition = UNKNOWN
            line = archive_line(
                received_ms=record.received_ms,
                seq=seq,
                writer=self.writer,
                topic=topic,
                payload=payload,
                verdict="deadletter",
                reason="internal_error",
                detail=f"archive: {type(exc).__name__}: {exc}"[:1000],
            )
        self._buffer(day, partition).append(exact_bytes(line))  # kept until the checkpoint (see _buffers)
        return line

    def _format(self, seq: int, topic: bytes, payload: bytes, record: Archivable) -> tuple[str, bytes]:
        """Partition and line of anything but a valid UTF-8 device-stream message."""
        if record.outcome == "produced":
            stream = self._stream_of_topic.get(record.topic, "")
            line = archive_line(
                received_ms=record.received_ms,
                seq=seq,
                writer=self.writer,
                topic=topic,
                payload=payload,
                verdict="ok",
                ts=record.timestamp,
                publisher=_publisher(topic) if stream in ("report", "dispatch") else None,
            )
            return message_partition(topic, payload, "ok"), line
        reason = record.reason or "unknown"
        detail = None
        for name, value in record.headers or ():
            if name == DETAIL_HEADER:
                detail = value.decode("utf-8", "replace")
        line = archive_line(
            received_ms=record.received_ms,
            seq=seq,
            writer=self.writer,
            topic=topic,
            payload=payload,
            verdict="deadletter",
            ts=None if reason in NO_TS_REASONS else _device_time(payload),
            reason=reason,
            detail=detail,
            publisher=_publisher(topic),
        )
        self.counters["dead_letters"] += 1
        partition = message_partition(topic, payload, "deadletter", reason)
        return known_unit_partition(partition, self._known), line

    # ------------------------------------------------------------------ checkpoint thread
    def _run(self) -> None:
        try:
            next_prune = time.monotonic() + PRUNE_CHECK_S
            while not self._abort.is_set():
                self._checkpoint_now.wait(self._flush_s)
                self._checkpoint_now.clear()
                if self._abort.is_set():
                    return
                last = self._final.is_set()
                self._checkpoint(last=last)
                if last:
                    return
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_CHECK_S
                    self._prune_if_new_day()
        except Stopping:
            return
        except BaseException as exc:  # the thread is watched: the stage ends and is restarted
            log.exception("archive: the checkpoint thread failed")
            if self._on_fatal is not None:
                self._on_fatal(f"the archive checkpoint failed: {type(exc).__name__}: {exc}")
            raise

    def _checkpoint(self, last: bool = False) -> None:
        """Take the buffers and start a new journal segment (under the lock), append every partition,
        then delete the old segment: all it held is in partition files now."""
        with self._lock:
            if not last and self.counters["lines"] == self._segment_lines_mark:
                return  # nothing written since the last checkpoint: keep the segment
            buffers, self._buffers, self._by_key = self._buffers, {}, {}
            self._flushing, self._buffered = self._buffered, 0
            old_fd, old_path = self._journal_fd, self._journal_path
            if last:
                self._journal_fd, self._journal_path = -1, None
            else:
                self._open_segment()
            day_now = self._day[0]
        for where, kept in buffers.items():
            self._flushing -= self._flush_partition(where, kept)
        self._flushing = 0
        if old_fd >= 0:
            os.close(old_fd)
        if old_path is not None:
            old_path.unlink(missing_ok=True)
        for where in [w for w in self._files if last or w[0] != day_now]:
            os.close(self._files.pop(where))  # the earlier days' files are done
        self.counters["checkpoints"] += 1

    def _file(self, where: tuple[str, str]) -> int:
        """The partition file's descriptor, kept open (LRU) so an append costs one write."""
        files = self._files
        fd = files.get(where)
        if fd is not None:
            files.move_to_end(where)
            return fd
        day, partition = where
        if day not in self._dirs:
            (self.archive_dir / day).mkdir(parents=True, exist_ok=True)
            self._dirs.add(day)
        path = partition_path(self.archive_dir, day, partition)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        files[where] = fd
        self.counters["opens"] += 1
        while len(files) > self._files_max:
            os.close(files.popitem(last=False)[1])
        return fd

    def _close_files(self) -> None:
        while self._files:
            with contextlib.suppress(OSError):
                os.close(self._files.popitem()[1])

    def _flush_partition(self, where: tuple[str, str], kept: list[bytes]) -> int:
        """Append one partition's lines as a gzip member (retried: the journal still holds them);
        returns the bytes of the lines."""
        kept.append(b"")  # the last line's newline
        lines = b"\n".join(kept)
        kept.clear()  # the lines are freed as the partitions are appended, not at the end
        data = gzip_block(lines)

        def append() -> None:
            try:
                _write_all(self._file(where), data)
            except OSError:
                fd = self._files.pop(where, None)  # a fresh descriptor for the retry
                if fd is not None:
                    os.close(fd)
                raise

        try:
            append()
        except OSError:  # retried with the shared policy; the abort event ends it (a crash)
            call_with_retry(append, self._abort, on=OSError, what="archive partition append")
        self.counters["appends"] += 1
        self.counters["bytes"] += len(data)
        return len(lines)

    def _open_segment(self) -> None:
        self._segment_no += 1
        path = self._journal_dir / f"{self.writer}.{self._segment_no:06d}{JOURNAL_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we live: recovery skips it
        self._journal_fd, self._journal_path = fd, path
        self._segment_lines_mark = self.counters["lines"]

    def _prune(self) -> None:
        self._today = local_date(int(time.time() * 1000))
        removed = prune_archive(self.archive_dir, self._retention_days, today=self._today)
        self.counters["pruned_days"] += len(removed)

    def _prune_if_new_day(self) -> None:
        if local_date(int(time.time() * 1000)) != self._today:
            self._prune()


def _publisher(topic: bytes) -> str | None:
    """The username an identity topic names (``sesmon/v1/reports/{report}/{username}``, dispatch alike)."""
    parts = topic.split(b"/")
    if len(parts) == 5 and parts[0] == b"sesmon" and parts[2] in (b"reports", b"dispatch") and parts[4]:
        try:
            return parts[4].decode()
        except UnicodeDecodeError:
            return None
    return None


def _device_time(payload: bytes) -> int | None:
    """A dead letter's device time, when its body is a JSON object with a usable ``ts``."""
    if len(payload) > DEAD_TS_MAX_BYTES:
        return None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    ts = body.get("ts") if isinstance(body, dict) else None
    if isinstance(ts, int) and not isinstance(ts, bool) and 0 < ts < 10**14:
        return ts
    if isinstance(ts, str):
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            return None
        if when.tzinfo is not None:
            return int(when.timestamp() * 1000)
    return None


__all__ = ["ArchiveWriter", "append_member", "known_unit_partition", "recover_journals", "writer_name"]
