"""The audit trail (issue 10): an append-only, hash-chained JSON-lines log under ``<data dir>/audit/``.

What goes in: every alert state change, escalation, SLA breach, accident, delivery attempt (MQTT
and webhook, with its outcome) and dispatch action (applied or refused) — one entry each.

Layout:

- daily files ``audit-YYYYMMDD.jsonl`` (the local date, UTC+8, of the entry's wall time): a day
  is one file to archive or hand to an inspector, and the chain runs on across files (the first
  entry of a day carries the hash of the last entry of the day before);
- one entry per line: ``{"seq", "at" (wall ms), "event_at" (device/event ms or null), "kind",
  "data", "prev", "hash"}``; ``prev`` is the previous entry's ``hash`` (64 zeros before the first,
  seq 0), ``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces; orjson) of the
  entry without ``hash``;
- ``HEAD.json``: ``{"seq", "hash", "file"}`` of the last entry made durable, rewritten (temp
  file, fsync, rename) at every :meth:`AuditLog.sync`. A hash chain alone cannot see its tail
  cut off; HEAD can: an entry HEAD counts must exist with that hash.

What :func:`verify` detects: an edited entry (its hash no longer matches), an inserted, removed
or reordered line (seq runs 0, 1, 2, ... and each ``prev`` must be the hash before it), removed
first files (the chain must start at seq 0 with the zero hash), removed last entries or files
(HEAD), and lines that are not entries. It names the first bad entry (file, line, seq, why).

Durability (the trade-off): each entry is one ``write(2)`` on an ``O_APPEND`` descriptor, so a
killed process loses nothing it appended (the kernel has it); ``fsync`` runs once per batch
(:meth:`AuditLog.sync`, which the stage calls where it commits a batch of work), because an fsync
per entry costs a disk flush each (milliseconds on real disks: hundreds of entries/s at most).
A power cut can therefore lose the entries since the last sync, and can leave a *torn* last line.

Torn tail (decided): the writer repairs it on open. A last line without its newline that is a
complete, valid next entry gets its newline; anything else is cut off with a logged warning, and
the cut is itself recorded as the next entry (``audit_torn_tail``: its length and SHA-256), so a
repair is on the chain, never silent. Before the writer reopens, :func:`verify` reports a torn
tail as ``torn_tail`` without failing, unless HEAD says that entry had been made durable (then
it is a removal: failure). A damaged complete line never stops the writer (paging matters more):
it continues after the last line it can read, and :func:`verify` fails on the damage.

One writer per directory (an exclusive ``flock`` on ``audit/.lock``); :func:`verify` only reads.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from sesmon.contract.time import end_of_day_ms, local_date

log = logging.getLogger("sesmon.alerts.audit")

GENESIS = "0" * 64
HEAD_FILE = "HEAD.json"
LOCK_FILE = ".lock"
FILE_RE = re.compile(r"^audit-(\d{8})\.jsonl$")
FIELDS = ("seq", "at", "event_at", "kind", "data", "prev", "hash")
_SORTED = orjson.OPT_SORT_KEYS


class AuditError(RuntimeError):
    """The audit log cannot be written (another writer holds it, or the disk refuses)."""


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers: sorted keys, no whitespace, without ``hash``."""
    return orjson.dumps({k: v for k, v in entry.items() if k != "hash"}, option=_SORTED)


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def audit_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "audit"


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if FILE_RE.match(p.name)) if directory.is_dir() else []


def _split_tail(handle: IO[bytes], block: int = 65536) -> tuple[int, bytes]:
    """(offset just past the last newline, the bytes after it: a torn line if not empty)."""
    handle.seek(0, os.SEEK_END)
    pos = handle.tell()
    while pos > 0:
        start = max(0, pos - block)
        handle.seek(start)
        cut = handle.read(pos - start).rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        pos = start
    else:
        end = 0
    handle.seek(end)
    return end, handle.read()


def _lines_backwards(handle: IO[bytes], end: int, block: int = 65536) -> Iterator[bytes]:
    """The complete lines of ``handle[:end]`` (each ends with a newline), last first, without it."""
    buf, buf_start = b"", end
    while end > 0:
        nl = buf.rfind(b"\n", 0, max(0, end - 1 - buf_start))
        while nl < 0 and buf_start > 0:
            start = max(0, buf_start - block)
            handle.seek(start)
            buf = handle.read(buf_start - start) + buf
            buf_start = start
            nl = buf.rfind(b"\n", 0, end - 1 - buf_start)
        line_start = buf_start + nl + 1
        yield buf[line_start - buf_start : end - 1 - buf_start]
        buf, end = buf[: line_start - buf_start], line_start


def _parse(line: bytes) -> dict[str, Any] | None:
    """An entry with every field of the right type, or None."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or set(entry) != set(FIELDS):
        return None
    if (
        not isinstance(entry["seq"], int)
        or not isinstance(entry["hash"], str)
        or not isinstance(entry["prev"], str)
    ):
        return None
    return entry


class AuditLog:
    """The writer: appends entries, continues the chain after a restart, repairs a torn tail.

    Thread-safe: the stage's main loop, the paho network thread (MQTT acknowledgements) and the
    webhook workers (attempt outcomes) all append.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] = (self.dir / LOCK_FILE).open("ab")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise AuditError(f"another process writes the audit log in {self.dir}") from None
        self.next_seq = 0
        self.prev = GENESIS
        self.appended = 0  # entries appended by this writer
        self._fd: int | None = None
        self._day = ""
        self._day_end_ms = 0  # entries at or past this wall time go to the next day's file
        self._file = ""
        self._new_file = False  # a file was created since the last sync (fsync the directory)
        self._unsynced = False
        torn = self._resume()
        if torn is not None:
            self.append("audit_torn_tail", torn)
        self.sync()

    # ------------------------------------------------------------------ resume
    def _resume(self) -> dict[str, Any] | None:
        """Continue after the last entry on disk; repair a torn last line (see the module doc)."""
        last: dict[str, Any] | None = None
        last_path: Path | None = None
        newest: Path | None = None  # the newest file with any bytes: the only one a crash can tear
        fragment = b""
        for path in reversed(_files(self.dir)):
            if path.stat().st_size == 0:
                continue
            with path.open("rb") as handle:
                end, tail = _split_tail(handle)
                if newest is None:
                    newest, fragment = path, tail
                skipped = 0
                for line in _lines_backwards(handle, end):
                    last = _parse(line)
                    if last is not None:
                        break
                    skipped += 1
            if skipped:
                log.error(
                    "audit: %d unreadable line(s) at the end of %s; continuing after", skipped, path.name
                )
            if last is not None:
                last_path = path
                break
        torn = None
        if fragment and newest is not None:
            torn = self._repair_tail(newest, fragment, last)
            if torn is None:  # a complete entry that only lacked its newline: now the last one
                last, last_path = _parse(fragment), newest
        if last is not None and last_path is not None:
            self.next_seq, self.prev = last["seq"] + 1, last["hash"]
            self._day = FILE_RE.match(last_path.name).group(1)  # type: ignore[union-attr]
        return torn

    def _repair_tail(self, path: Path, fragment: bytes, last: dict[str, Any] | None) -> dict[str, Any] | None:
        want_seq, want_prev = (last["seq"] + 1, last["hash"]) if last else (0, GENESIS)
        if _is_next(_parse(fragment), want_seq, want_prev):
            with path.open("ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            log.warning(
                "audit: %s ended without its newline after entry %d; completed it", path.name, want_seq
            )
            return None
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.truncate(size - len(fragment))
            f.flush()
            os.fsync(f.fileno())
        log.warning(
            "audit: torn last line in %s (%d bytes after entry %d, a crash while writing): cut off",
            path.name,
            len(fragment),
            want_seq - 1,
        )
        return {
            "file": path.name,
            "bytes": len(fragment),
            "sha256": hashlib.sha256(fragment).hexdigest(),
            "after_seq": want_seq - 1,
        }

    # ------------------------------------------------------------------ writing
    def append(self, kind: str, data: Mapping[str, Any], *, event_at: int | None = None) -> dict[str, Any]:
        """One entry, written (one ``write(2)``) before this returns; durable at the next :meth:`sync`."""
        with self._lock:
            at = self.wall_ms()
            entry = {
                "seq": self.next_seq,
                "at": at,
                "event_at": event_at,
                "kind": kind,
                "data": data,
                "prev": self.prev,
            }
            body = orjson.dumps(entry, option=_SORTED)
            digest = hashlib.sha256(body).hexdigest()
            line = body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
            fd = self._fd_for(at)
            written = os.write(fd, line)
            if written != len(line):  # disk full: the tail is torn; the next open repairs it
                raise AuditError(f"audit: short write ({written} of {len(line)} bytes)")
            self.next_seq += 1
            self.prev = digest
            self.appended += 1
            self._unsynced = True
            entry["hash"] = digest
            return entry

    def append_many(self, items: Iterable[tuple[str, Mapping[str, Any], int | None]]) -> None:
        """(kind, data, event_at) entries, then one :meth:`sync`."""
        for kind, data, event_at in items:
            self.append(kind, data, event_at=event_at)
        self.sync()

    def append_batch(self, items: Iterable[tuple[str, Mapping[str, Any], int | None]]) -> None:
        """(kind, data, event_at) entries, chained exactly as :meth:`append` does, written with one
        ``write(2)`` per file: the stage's delivery entries come in bursts, and every system call
        costs a thread its turn at the GIL. Durable at the next :meth:`sync`."""
        with self._lock:
            chunks: list[bytes] = []
            for kind, data, event_at in items:
                at = self.wall_ms()
                if chunks and self._fd is not None and at >= self._day_end_ms:  # the day's file ends
                    self._write(self._fd, b"".join(chunks))
                    chunks = []
                self._fd_for(at)
                entry = {"seq": self.next_seq, "at": at, "event_at": event_at, "kind": kind, "data": data}
                entry["prev"] = self.prev
                body = orjson.dumps(entry, option=_SORTED)
                digest = hashlib.sha256(body).hexdigest()
                chunks.append(body[:-1] + b',"hash":"' + digest.encode() + b'"}\n')
                self.next_seq += 1
                self.prev = digest
                self.appended += 1
            if chunks and self._fd is not None:
                self._write(self._fd, b"".join(chunks))
                self._unsynced = True

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        written = os.write(fd, data)
        if written != len(data):  # disk full: the tail is torn; the next open repairs it
            raise AuditError(f"audit: short write ({written} of {len(data)} bytes)")

    def _fd_for(self, at: int) -> int:
        if self._fd is not None and at < self._day_end_ms:  # the common case: no date arithmetic
            return self._fd
        day = local_date(at).strftime("%Y%m%d")
        if self._fd is None or day > self._day:  # a clock stepping back stays in today's file
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
            day = max(day, self._day)
            self._file = f"audit-{day}.jsonl"
            path = self.dir / self._file
            self._new_file = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._day = day
        # the file of a local day (UTC+8) ends at that day's local midnight
        self._day_end_ms = end_of_day_ms(datetime.strptime(self._day, "%Y%m%d").date())
        return self._fd

    def sync(self) -> None:
        """Make every entry appended so far durable (fsync) and record it in HEAD."""
        with self._lock:
            if self._fd is not None and self._unsynced:
                os.fsync(self._fd)
            if self._new_file:
                dir_fd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                self._new_file = False
            self._unsynced = False
            head = {"seq": self.next_seq - 1, "hash": self.prev, "file": self._file or None}
            tmp = self.dir / (HEAD_FILE + ".tmp")
            with tmp.open("wb") as f:
                f.write(orjson.dumps(head))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / HEAD_FILE)

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- what the stage records

#: audit kind of each incident change (IncidentChange.what up to its colon)
CHANGE_KINDS = {
    "opened": "alert_change",
    "resolved": "alert_change",
    "escalation": "escalation",
    "sla_breach": "sla_breach",
    "accident": "accident",
    "dispatch": "dispatch",
}


def change_entry(change: Any) -> tuple[str, dict[str, Any], int]:
    """(kind, data, event_at) for an :class:`alerts.incidents.IncidentChange`: the change, whom it
    pages and the incident's flags, not its whole timeline (that is in the incident store; one
    entry per change keeps the log linear in the number of changes)."""
    incident = change.incident
    timeline = incident.get("timeline") or [{}]
    data = {
        "change_id": change.change_id,
        "alert_id": change.alert_id,
        "what": change.what,
        "entry": timeline[-1],
        "rule": incident.get("rule"),
        "device_id": incident.get("device_id"),
        "state": incident.get("state"),
        "alert_state": incident.get("alert_state"),
        "escalation": incident.get("escalation"),
        "sla_breach": incident.get("sla_breach"),
        "accident": incident.get("accident"),
        "receivers": [f"{r.kind}/{r.id}" for r in change.receivers],
        "regulator_suppressed": change.regulator_suppressed,
    }
    return CHANGE_KINDS.get(change.what.split(":", 1)[0], "change"), data, change.at


def dispatch_entry(
    action: Any, status: str, reason: str | None = None, detail: str = ""
) -> tuple[str, dict, int]:
    """(kind, data, event_at) for a dispatch action: ``dispatch`` (applied), ``dispatch_duplicate``,
    ``dispatch_refused`` (with the reason it was dead-lettered)."""
    kind = {"applied": "dispatch", "duplicate": "dispatch_duplicate"}.get(status, "dispatch_refused")
    data: dict[str, Any] = {
        "alert_id": action.alert_id,
        "action": action.action,
        "by": action.by,
        "ts": action.ts,
    }
    if reason:
        data |= {"reason": reason, "detail": detail}
    return kind, data, int(action.ts)


def delivery_entry(
    channel: str, receiver: str, key: str, outcome: str, *, attempt: int = 1, detail: str = ""
) -> tuple[str, dict[str, Any], None]:
    """(kind, data, event_at) for one delivery attempt: ``channel`` mqtt/webhook/log, ``receiver``
    "kind/id" or a URL, ``key`` the idempotency key, ``outcome`` acked/ok/failed/dead_letter/..."""
    data = {"channel": channel, "receiver": receiver, "key": key, "outcome": outcome, "attempt": attempt}
    if detail:
        data["detail"] = detail
    return "delivery", data, None


# ---------------------------------------------------------------------- verify


@dataclass(frozen=True)
class BadEntry:
    """The first entry that breaks the chain: where it is and why."""

    file: str
    line: int  # 1-based line in ``file`` (0: the file as a whole / HEAD)
    seq: int | None  # its seq when it could be read
    reason: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}{seq}: {self.reason}"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked good before the first bad one (all of them when ok)
    files: int
    last_seq: int | None = None
    last_hash: str | None = None
    first_bad: BadEntry | None = None
    torn_tail: str = ""  # a crash's unfinished last line (not a failure; the writer repairs it)


def verify(directory: Path | str) -> VerifyResult:
    """Check the whole chain in ``directory`` (``<data dir>/audit``); stop at the first bad entry."""
    directory = Path(directory)
    files = _files(directory)
    expected_seq, prev = 0, GENESIS
    entries = 0
    hashes_at_head: dict[int, str] = {}
    head = _read_head(directory)
    head_seq = head.get("seq") if isinstance(head, dict) else None
    torn = ""

    def fail(file: str, line: int, seq: int | None, reason: str) -> VerifyResult:
        bad = BadEntry(file, line, seq, reason)
        return VerifyResult(False, entries, len(files), expected_seq - 1 if entries else None, prev, bad)

    for index, path in enumerate(files):
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                complete = raw.endswith(b"\n")
                last_file = index == len(files) - 1
                if not complete and last_file and _is_next(_parse(raw), expected_seq, prev):
                    torn = f"{path.name}:{number}: the last entry lacks its newline (the writer adds it)"
                elif not complete:
                    if not last_file:
                        return fail(
                            path.name,
                            number,
                            None,
                            "a line without its newline in a file that is not the last",
                        )
                    if isinstance(head_seq, int) and head_seq >= expected_seq:
                        return fail(
                            path.name,
                            number,
                            None,
                            f"unfinished line, but HEAD says seq {head_seq} was written",
                        )
                    torn = f"{path.name}:{number}: {len(raw)} bytes unfinished after seq {expected_seq - 1}"
                    break
                entry = _parse(raw[:-1] if complete else raw)
                if entry is None:
                    return fail(path.name, number, None, "not an audit entry (unreadable, or fields missing)")
                seq = entry["seq"]
                if entry_hash(entry) != entry["hash"]:
                    return fail(
                        path.name, number, seq, "hash does not match its content: the entry was edited"
                    )
                if seq != expected_seq:
                    if entries == 0 and seq > 0:
                        why = f"the chain starts at seq {seq}, not 0: its first entries or files were removed"
                    elif seq > expected_seq:
                        why = f"seq {seq} where {expected_seq} was due: entries removed (or reordered)"
                    else:
                        why = f"seq {seq} where {expected_seq} was due: an entry inserted, repeated or moved"
                    return fail(path.name, number, seq, why)
                if entry["prev"] != prev:
                    return fail(
                        path.name, number, seq, "prev is not the previous entry's hash: the chain is broken"
                    )
                if seq == head_seq:
                    hashes_at_head[seq] = entry["hash"]
                prev, expected_seq = entry["hash"], seq + 1
                entries += 1
    if entries or files:
        if head is None:
            return fail(HEAD_FILE, 0, None, "missing or unreadable: the end of the log cannot be checked")
        if isinstance(head_seq, int) and head_seq >= expected_seq:
            return fail(
                HEAD_FILE,
                0,
                head_seq,
                f"HEAD records seq {head_seq} but the log ends at seq {expected_seq - 1}: "
                "its last entries or files were removed",
            )
        if isinstance(head_seq, int) and head_seq >= 0 and hashes_at_head.get(head_seq) != head.get("hash"):
            return fail(HEAD_FILE, 0, head_seq, "HEAD's hash differs from the entry it records")
    return VerifyResult(True, entries, len(files), expected_seq - 1 if entries else None, prev, None, torn)


def _is_next(entry: dict[str, Any] | None, seq: int, prev: str) -> bool:
    """Is ``entry`` a valid entry that continues the chain at ``seq`` after ``prev``?"""
    return (
        entry is not None
        and entry["seq"] == seq
        and entry["prev"] == prev
        and entry_hash(entry) == entry["hash"]
    )


def _read_head(directory: Path) -> dict[str, Any] | None:
    try:
        head = orjson.loads((directory / HEAD_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return head if isinstance(head, dict) else None


def verify_command(data_dir: Path | str, out: IO[str] | None = None) -> int:
    """``sesmon audit verify --data-dir DIR``: 0 on an intact chain, 1 naming the first bad entry,
    2 when there is no audit log at all."""
    out = out or sys.stdout
    directory = audit_dir(data_dir)
    if not directory.is_dir():
        print(f"no audit log in {directory}", file=out)
        return 2
    result = verify(directory)
    if not result.ok:
        print(f"audit chain BROKEN in {directory}: first bad entry {result.first_bad}", file=out)
        print(f"({result.entries} entries good before it)", file=out)
        return 1
    print(
        f"audit chain intact: {result.entries} entries in {result.files} file(s), last seq {result.last_seq}",
        file=out,
    )
    if result.torn_tail:
        print(
            f"warning: torn tail {result.torn_tail} (a crash; the writer repairs it on its next start)",
            file=out,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m alerts.audit verify --data-dir DIR``, the same as ``sesmon audit verify``."""
    parser = argparse.ArgumentParser(prog="sesmon audit", description="the alerts stage's audit trail")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check the hash chain under <data dir>/audit")
    check.add_argument("--data-dir", type=Path, default=None, help="SESMON_DATA_DIR (default .sesmon)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir
    if data_dir is None:
        from sesmon.runtime.settings import Settings

        data_dir = Settings().data_dir
    return verify_command(data_dir)


if __name__ == "__main__":
    raise SystemExit(main())
