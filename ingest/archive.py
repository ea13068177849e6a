"""Ingest's raw archive, hot path: what the MQTT session received, as received, into the journal.

Format, layout and reader: :mod:`sesmon.contract.archive` (the raw journal is described there);
the partition files are written by another process, ``ingest/archive_folder.py``. Why:

- Issue 12 asks the archive to add < 5 % to ingest's cost per reading: under ~0.8 µs of ~16 µs,
  less than any Python step per message. A formatted line was 2.4-3 µs (+17-18 %), and even one
  list append and one JSON frame per message measured 1.1 µs (+6.5 %). So ingest journals per
  *chunk*, not per message: every ``recv`` of its MQTT session (up to 256 KiB, hundreds of
  readings under load) is appended as it is (:meth:`ArchiveJournal.add_chunk`: a header and a
  list append), and a message that is not a valid device reading gets a small note (the dead
  letters, reports, dispatch, vendor frames: slow paths already). The bytes of a PUBLISH, its
  receive time, the connection's order and the notes are all an archive line needs; the folder
  derives the lines, so the parsing, formatting and compression run outside ingest's process.
- Journalled before it is produced: the bridge calls :meth:`ArchiveJournal.write_pending`
  just before it hands a Kafka record over, which appends every chunk and note queued with one
  ``write`` (in the OS page cache when it returns: a kill -9 of ingest loses none of it); a
  message's chunk is queued before the message is even parsed. So acks do not wait for the
  archive. A write that fails (disk full) leaves the records queued; the record is produced
  anyway and its acks wait (:meth:`covers`) while the poll thread retries.
- Segments: a new one every ``flush_s`` or ``MAX_SEGMENT_BYTES``, on the MQTT thread at a chunk's
  start; a packet the old segment ends in the middle of is repeated at the new one's start
  (``CARRY``), so every segment reads on its own. The open segment is ``flock``-ed; the folder
  takes a segment as soon as no process holds it (rotated, or of a crashed ingest), appends its
  lines to the partition files and deletes it.
- The folder is a child process (:class:`FolderProcess`), at a lower CPU priority: if it falls
  behind or dies, the journal waits on disk (the bridge restarts it); a reader reads the journal
  segments too, so the archive is complete at any moment.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sesmon.contract.archive import (
    CARRY,
    CHUNK,
    CONNECT,
    FORMAT_FILE,
    FORMAT_TEXT,
    JOURNAL_DIR,
    NOTE,
    RAW_JOURNAL_SUFFIX,
    SEQ_SHIFT,
    SPECIAL_PARTITIONS,
    UNKNOWN,
    device_time,
    gzip_member,
    message_partition,
    raw_record,
)
from sesmon.runtime.mqtt_wire import packet

log = logging.getLogger("sesmon.ingest.archive")

FLUSH_S = 30.0  # a new journal segment (and the folder's turn) at least this often
MAX_SEGMENT_BYTES = 64 * 1024 * 1024  # ... or when a segment holds this much
NO_TS_REASONS = frozenset({"oversize", "too_deep", "not_json", "bad_topic"})
FOLDER_STOP_S = 60.0  # close(): how long the folder may take to fold the last segment
FOLDER_RESTART_S = 10.0  # a folder that died is started again at most this often
#: what ingest writes to the folder's stdin before closing it at a clean stop (its segment is closed
#: by then); an end of stdin without it means ingest died
FOLDER_STOP_WORD = b"stop\n"
COUNTERS = (
    "notes",  # messages noted (anything but a valid device reading)
    "journal_bytes",
    "segments",  # journal segments opened
    "write_errors",  # journal writes that failed (retried at the next round; acks wait)
    "folder_starts",
    "folder_exits",  # the folder process ended other than at close(): restarted
)


class ReceiveMark:
    """Where the message being delivered is: its chunk's receive time and its seq in the journal.

    Filled by whoever receives (the MQTT session per chunk and packet, the bridge for paho and
    ``handle_raw``), read by the bridge's receive path: the envelope's ``received_ms`` and the
    archive's are then the same number."""

    __slots__ = ("received_ms", "seq")

    def __init__(self) -> None:
        self.received_ms = 0
        self.seq = 0


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


class ArchiveJournal:
    """The raw journal of one ingest process, and the folder process that turns it into partitions.

    :meth:`connected`, :meth:`add_chunk` and the notes from the thread that receives (one at a
    time); :meth:`write_pending` from whichever thread is about to produce a Kafka record (and
    the poll thread while acks wait); :meth:`watch` from the poll thread.
    """

    def __init__(
        self,
        archive_dir: Path,
        *,
        known_device: Callable[[str], Any] | None = None,
        retention_days: int = 400,
        flush_s: float = FLUSH_S,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
        folder: bool = True,
    ) -> None:
        """``known_device`` (the registry's ``kind_of``): a dead letter goes to its unit's partition only
        when the unit is registered, so junk device ids cannot make a file each. ``folder=False``:
        no folder process (tests fold with :func:`ingest.archive_folder.fold_journals`)."""
        self.archive_dir = Path(archive_dir)
        self.writer = writer_name()
        # every key present from the start: the poll thread copies the counters while others count
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._known = known_device
        self._flush_s = flush_s
        self._max_segment = max_segment_bytes
        self._lock = threading.Lock()  # the queue, the counts and the segment
        self._queue: list[bytes] = []  # record headers and bodies not yet written
        self._queued = 0  # records queued so far (the mark write_pending hands out)
        self._written = 0  # every record up to this one is in the journal (OS page cache)
        self._chunk_no = 0
        self._fd = -1
        self._path: Path | None = None
        self._segment_no = 0
        self._segment_bytes = 0
        self._rotate_at = 0.0
        self._closed = False
        self._log_errors = 0.0  # monotonic time of the last logged write error (rate limit)
        self.folder = FolderProcess(self.archive_dir, retention_days, min(1.0, flush_s)) if folder else None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ArchiveJournal:
        """Open our first segment and start the folder (which first folds crashed writers' journals)."""
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        (self.archive_dir / JOURNAL_DIR).mkdir(exist_ok=True)
        marker = self.archive_dir / FORMAT_FILE
        if not marker.is_file():
            marker.write_bytes(FORMAT_TEXT)
        with self._lock:
            self._open_segment()
        if self.folder is not None:
            self.folder.start()
            self.counters["folder_starts"] += 1
        return self

    def close(self, timeout: float = FOLDER_STOP_S) -> None:
        """Write what is queued, close the segment and let the folder fold it (a clean stop leaves
        no journal). Call it once nothing is received any more."""
        with self._lock:
            self._write_queued()
            self._close_segment()
            self._closed = True
        if self.folder is not None:
            self.folder.stop(timeout)

    def abort(self) -> None:
        """Stop as a killed host would: nothing more written, the journal left for the next start."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._close_segment()
        if self.folder is not None:
            self.folder.kill()

    def watch(self) -> None:
        """Poll thread: a folder that died is started again (the journal waited for it on disk)."""
        if self.folder is not None and not self._closed and self.folder.restart_if_dead():
            self.counters["folder_exits"] += 1
            self.counters["folder_starts"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            **{f"archive_{name}": value for name, value in self.counters.items()},
            "archive_chunks": self._chunk_no,  # receive chunks journalled (or queued for it)
            "archive_queue": self._queued - self._written,  # records not yet written
            "archive_folder_pid": self.folder.pid if self.folder is not None else None,
        }

    # ------------------------------------------------------------------ receiving thread
    def connected(self) -> None:
        """A new connection: what the last one left unfinished is not a message (it comes again)."""
        with self._lock:
            if not self._closed:
                self._queue += (raw_record(CONNECT, 0, 0, b""),)
                self._queued += 1

    def add_chunk(self, received_ms: int, data: bytes, carried: bytes = b"") -> int:
        """Queue the bytes of one receive; returns the chunk's number (its messages' seq is
        ``number << SEQ_SHIFT | offset``). ``carried``: the unfinished packet the receiver holds
        from earlier chunks, repeated at a new segment's start."""
        with self._lock:
            if time.monotonic() >= self._rotate_at or self._segment_bytes >= self._max_segment:
                self._rotate(received_ms, carried)
            self._chunk_no = number = self._chunk_no + 1
            if self._closed:
                return number  # received while stopping: not acked, the broker resends it
            self._queue += (raw_record(CHUNK, received_ms, number, data), data)
            self._queued += 1
            self._segment_bytes += len(data)
        return number

    def add_message(self, received_ms: int, topic: bytes, payload: bytes) -> int:
        """A message that came without its packet (paho's receive path, ``handle_raw``): journalled as a
        QoS 0 PUBLISH of its own; returns its seq (0: a topic no MQTT packet can hold, not archived)."""
        if len(topic) > 0xFFFF:
            return 0
        publish = packet(0x30, len(topic).to_bytes(2, "big") + topic + payload)
        return self.add_chunk(received_ms, publish) << SEQ_SHIFT

    def note_skip(self, seq: int) -> None:
        """A message ingest did not take (our own output coming back, a stop under way): not archived."""
        self._note({"seq": seq, "verdict": "skip"})

    def note_valid(self, seq: int, topic: bytes, ts: int, stream: str) -> None:
        """A valid message off the fast path (RFC 3339 times, vendor frames, reports, dispatch)."""
        note: dict[str, Any] = {"seq": seq, "verdict": "ok", "ts": ts}
        if stream in ("report", "dispatch"):
            note["publisher"] = _publisher(topic)
        self._note(note)

    def note_dead(self, seq: int, topic: bytes, payload: bytes, reason: str, detail: str | None) -> None:
        """A dead letter: its reason, and its partition as live decides it (:func:`known_unit_partition`)."""
        partition = message_partition(topic, payload, "deadletter", reason)
        self._note(
            {
                "seq": seq,
                "verdict": "deadletter",
                "ts": None if reason in NO_TS_REASONS else device_time(payload),
                "reason": reason,
                "detail": detail,
                "publisher": _publisher(topic),
                "partition": known_unit_partition(partition, self._known),
            }
        )

    def _note(self, note: dict[str, Any]) -> None:
        body = orjson.dumps({k: v for k, v in note.items() if v is not None})
        with self._lock:
            if self._closed:
                return
            self._queue += (raw_record(NOTE, 0, 0, body), body)
            self._queued += 1
            self.counters["notes"] += 1

    # ------------------------------------------------------------------ any thread
    def write_pending(self) -> int:
        """Append everything queued to the journal (one write); returns the mark :meth:`covers` takes
        for what is produced now. Never raises: a failed write leaves it queued for the next call."""
        with self._lock:
            mark = self._queued
            if self._queue:
                self._write_queued()
            return mark

    def covers(self, mark: int) -> bool:
        """Is everything queued before ``mark`` in the journal (and so survives a kill of this process)?"""
        return self._written >= mark

    # ------------------------------------------------------------------ under the lock
    def _write_queued(self) -> None:
        if self._fd < 0 or not self._queue:
            return
        data = b"".join(self._queue)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self.counters["write_errors"] += 1
            if time.monotonic() - self._log_errors > 10:
                self._log_errors = time.monotonic()
                log.error("archive: cannot write the journal (%s); acks wait until it can", exc)
            return
        self._queue.clear()
        self._written = self._queued
        self.counters["journal_bytes"] += len(data)

    def _rotate(self, received_ms: int, carried: bytes) -> None:
        """A new segment: the old one written whole and released to the folder; the unfinished packet
        it ends in repeated at the new one's start."""
        if self._closed or self._fd < 0:
            return
        self._write_queued()
        if self._queue:
            self._rotate_at = time.monotonic() + 1.0  # the disk refuses: keep this segment, try later
            return
        self._close_segment()
        self._open_segment()
        if carried:
            self._queue += (raw_record(CARRY, received_ms, 0, carried), carried)
            self._queued += 1

    def _open_segment(self) -> None:
        self._segment_no += 1
        path = self.archive_dir / JOURNAL_DIR / f"{self.writer}.{self._segment_no:06d}{RAW_JOURNAL_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we live: the folder leaves it alone
        self._fd, self._path = fd, path
        self._segment_bytes = 0
        self._rotate_at = time.monotonic() + self._flush_s
        self.counters["segments"] += 1

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock: the folder takes the segment
            self._fd = -1
        if self._path is not None and self._path.stat().st_size == 0:
            self._path.unlink(missing_ok=True)  # nothing in it
        self._path = None


def _publisher(topic: bytes) -> str | None:
    """The username an identity topic names (``sesmon/v1/reports/{report}/{username}``, dispatch alike)."""
    parts = topic.split(b"/")
    if len(parts) == 5 and parts[0] == b"sesmon" and parts[2] in (b"reports", b"dispatch") and parts[4]:
        try:
            return parts[4].decode()
        except UnicodeDecodeError:
            return None
    return None


class FolderProcess:
    """The folder (``python -m ingest.archive_folder``), a child of ingest at a lower CPU priority."""

    def __init__(self, archive_dir: Path, retention_days: int, poll_s: float) -> None:
        self.archive_dir = archive_dir
        self.retention_days = retention_days
        self.poll_s = poll_s
        self.process: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ingest.archive_folder",
                str(self.archive_dir),
                "--retention-days",
                str(self.retention_days),
                "--poll-s",
                str(self.poll_s),
            ],
            stdin=subprocess.PIPE,  # its end (EOF) says stop: at close(), or when ingest dies
            # its own process group: a signal to ingest's group (a supervisor's SIGTERM, a terminal's
            # Ctrl-C) must not end it before ingest's last segment is closed; ingest stops it after that
            start_new_session=True,
        )

    def restart_if_dead(self) -> bool:
        process = self.process
        if process is None or process.poll() is None or time.monotonic() - self._started < FOLDER_RESTART_S:
            return False
        log.error(
            "archive: the folder process ended (status %s); starting it again (the journal waited)",
            process.returncode,
        )
        self.kill()  # already ended: this closes our end of its stdin
        self.start()
        return True

    def stop(self, timeout: float) -> None:
        """Its stdin closed: it folds what no live writer holds, then ends. Not a signal: one that came
        before its handler was set (a stop right after a start) would end it without that fold."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.write(FOLDER_STOP_WORD)
                process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("archive: the folder took over %.0f s to end; killed (its journal stays)", timeout)
            self.kill()

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


__all__ = [
    "ArchiveJournal",
    "FolderProcess",
    "ReceiveMark",
    "append_member",
    "known_unit_partition",
    "writer_name",
]
