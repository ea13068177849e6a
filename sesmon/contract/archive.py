"""The durable raw archive: what ingest received, byte for byte, for inspectors' replay (issue 12).

Ingest writes it (``ingest/archive.py``), ``sesmon replay`` reads it; stages do not import each
other, so the format and the reader live here. Kafka is no archive: the embedded broker keeps
nothing across a restart and a production one has retention.

Layout under ``<data dir>/archive/`` (format version :data:`FORMAT_VERSION`)::

    2026-11-23/                           local (Guangzhou, UTC+8) day of the receive time
        44010600012019000123.jsonl.gz     one unit: every message about it, valid and dead-lettered
        _dispatch.jsonl.gz                dispatch actions (keyed by alert_id), valid or not
        _reports.jsonl.gz                 reports that name no unit (a unit's go to its file, a hazard's too)
        _unknown.jsonl.gz                 messages of no known unit (bad topic, unknown device, ...)
    _journal/<writer>.<segment>.mqtt      raw journal of the running (or a crashed) ingest
    FORMAT                                "sesmon-archive 1"

A partition file is a gzip stream of members appended one per flush (concatenated members are a
valid gzip file: ``zcat`` reads it); each line is one JSON object (:class:`ArchivedMessage`). A
device id that starts with ``_`` gets one more ``_`` (:func:`device_partition`), so no unit can
write into the special partitions; which partition a message belongs to is
:func:`message_partition` (ingest also sends dead letters of units not in the registry to
``_unknown``, so junk device ids cannot make a file each).

A journal segment holds what ingest's MQTT session received, as received, and a note for each
message that is not a valid device reading (the raw journal, described below
:func:`journal_lines`): ingest appends there before it acknowledges a message (one ``write`` per
Kafka record, every few ms), and its folder process (``ingest/archive_folder.py``) turns each
finished segment into lines appended to the partition files, then deletes it: 10,000 units must
not mean 10,000 file appends a second, nor ingest's CPU. Readers read the journal segments too,
so the archive is complete at any moment, and a line found in both places is yielded once (key
``(received_ms, seq, writer)``). Segments of JSON lines (``.jsonl``, written by ingest before the
raw journal) are still read and folded.

Ordering: ``seq`` grows with the receive order within one ingest process (the raw journal's
chunk number and offset) and ``writer`` names the process, so ``(received_ms, seq, writer)``
restores the order in which ingest received the messages (across processes: by receive time).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import re
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import islice
from operator import itemgetter, ne
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
from isal import isal_zlib

from sesmon.contract.gbt24476 import VENDOR_ROOT
from sesmon.contract.schemas import hazard_device_id
from sesmon.contract.time import DAY_MS, LOCAL_TZ, local_date, start_of_day_ms

log = logging.getLogger("sesmon.archive")

FORMAT_VERSION = 1
FORMAT_FILE, FORMAT_TEXT = "FORMAT", b"sesmon-archive 1\n"
PARTITION_SUFFIX = ".jsonl.gz"
JOURNAL_DIR = "_journal"
JOURNAL_SUFFIX = ".jsonl"
DISPATCH = "_dispatch"
REPORTS = "_reports"
UNKNOWN = "_unknown"
SPECIAL_PARTITIONS = frozenset({DISPATCH, REPORTS, UNKNOWN})
#: how much later than a window's end a reading may arrive and still be looked for (buffered 4G/NB-IoT
#: terminals send late); a reading of device time inside the window received later than this is not read
DEFAULT_SLACK_MS = 3_600_000
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEAD_TS_MAX_BYTES = 64 * 1024  # a device time is looked for in bodies up to this size
DAY_DIR = re.compile(r"\d{4}-\d{2}-\d{2}")


class ArchiveCorrupt(ValueError):
    """A line or gzip member that cannot be read: names the file and line, never skipped silently."""


class ArchiveLineError(ValueError):
    """An archive line that is not a valid :class:`ArchivedMessage`: ``field: what is wrong``."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what}")
        self.field, self.what = field, what


class ArchivedMessage(NamedTuple):
    """One message ingest received, as archived: the raw bytes and what ingest decided.

    ``payload`` (and ``topic``) hold the bytes as text when they are valid UTF-8, else base64
    with ``payload_b64`` (``topic_b64``) set; :attr:`payload_bytes` / :attr:`topic_bytes` give the
    exact bytes back either way. ``ts`` is the device (or reporter) time in epoch ms when the
    payload gave one, else None; ``received_ms`` is ingest's clock.

    A tuple, not a pydantic model: a replay reads every line of a window (millions), and a
    checked tuple costs ~1 µs a line where ``model_validate_json`` cost ~9 µs (issue 12's
    50,000 readings/s). Build one from JSON with :meth:`model_validate` /
    :meth:`model_validate_json`, which check every field (:func:`_message`); the first three
    fields are the receive order, so ``msg[:3]`` is :attr:`order_key`.
    """

    received_ms: int
    seq: int
    writer: str
    topic: str
    payload: str
    verdict: Literal["ok", "deadletter"]
    ts: int | None = None
    reason: str | None = None  # dead letters: the dead-letter reason (ingest/README.md)
    detail: str | None = None  # dead letters: what exactly was wrong
    publisher: str | None = None  # the MQTT username, where the topic names it (identity topics)
    payload_b64: bool = False
    topic_b64: bool = False

    @classmethod
    def model_validate(cls, data: Any) -> ArchivedMessage:
        """A checked message from a decoded line; :class:`ArchiveLineError` names the bad field."""
        return _message(data)

    @classmethod
    def model_validate_json(cls, raw: bytes | str) -> ArchivedMessage:
        """A checked message from one JSON line."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ArchiveLineError("line", f"invalid JSON ({exc})") from None
        return _message(data)

    @property
    def payload_bytes(self) -> bytes:
        return base64.b64decode(self.payload, validate=True) if self.payload_b64 else self.payload.encode()

    @property
    def topic_bytes(self) -> bytes:
        return base64.b64decode(self.topic, validate=True) if self.topic_b64 else self.topic.encode()

    @property
    def order_key(self) -> tuple[int, int, str]:
        """Receive order: ``(received_ms, seq, writer)``; equal keys are the same message."""
        return (self.received_ms, self.seq, self.writer)


_FIELDS = frozenset(ArchivedMessage._fields)
_new_message = tuple.__new__
#: (field, JSON types it takes, required) in field order: what :func:`_explain` checks one by one
_FIELD_TYPES: tuple[tuple[str, tuple[type, ...], bool], ...] = (
    ("received_ms", (int,), True),
    ("seq", (int,), True),
    ("writer", (str,), True),
    ("topic", (str,), True),
    ("payload", (str,), True),
    ("verdict", (str,), True),
    ("ts", (int, type(None)), False),
    ("reason", (str, type(None)), False),
    ("detail", (str, type(None)), False),
    ("publisher", (str, type(None)), False),
    ("payload_b64", (bool,), False),
    ("topic_b64", (bool,), False),
)


def _message(data: Any) -> ArchivedMessage:
    """A decoded line as an :class:`ArchivedMessage`, every field checked (exact JSON types, no
    unknown field, a reason exactly for dead letters, valid base64 where flagged), else
    :class:`ArchiveLineError`. One straight condition for a good line; :func:`_explain` says what
    is wrong with a bad one."""
    if type(data) is dict and data.keys() <= _FIELDS:
        get = data.get
        received_ms, seq, writer, topic = get("received_ms"), get("seq"), get("writer"), get("topic")
        payload, verdict, ts, reason = get("payload"), get("verdict"), get("ts"), get("reason")
        detail, publisher = get("detail"), get("publisher")
        payload_b64, topic_b64 = get("payload_b64", False), get("topic_b64", False)
        if (
            type(received_ms) is int
            and type(seq) is int
            and type(writer) is str
            and type(topic) is str
            and type(payload) is str
            and (ts is None or type(ts) is int)
            and (
                (verdict == "ok" and reason is None)
                or (verdict == "deadletter" and type(reason) is str and reason != "")
            )
            and (detail is None or type(detail) is str)
            and (publisher is None or type(publisher) is str)
            and payload_b64 is False
            and topic_b64 is False
        ):
            return _new_message(  # type: ignore[no-any-return]
                ArchivedMessage,
                (
                    received_ms,
                    seq,
                    writer,
                    topic,
                    payload,
                    verdict,
                    ts,
                    reason,
                    detail,
                    publisher,
                    False,
                    False,
                ),
            )
    return _explain(data)


def _explain(data: Any) -> ArchivedMessage:
    """The slow check: raises naming the first bad field, or builds a message with base64 flags."""
    if type(data) is not dict:
        raise ArchiveLineError("line", f"a JSON object expected, not {type(data).__name__}")
    for name in data:
        if name not in _FIELDS:
            raise ArchiveLineError(name, "unknown field (extra inputs are not permitted)")
    values = []
    for name, types_, required in _FIELD_TYPES:
        if name not in data:
            if required:
                raise ArchiveLineError(name, "field required")
            values.append(False if name.endswith("_b64") else None)
            continue
        value = data[name]
        if type(value) not in types_:
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types_)
            raise ArchiveLineError(name, f"{wanted} expected, not {type(value).__name__}")
        values.append(value)
    msg = ArchivedMessage(*values)
    if msg.verdict not in ("ok", "deadletter"):
        raise ArchiveLineError("verdict", f"'ok' or 'deadletter' expected, not {msg.verdict!r}")
    if msg.verdict == "deadletter" and not msg.reason:
        raise ArchiveLineError("reason", "a dead letter needs its reason")
    if msg.verdict == "ok" and msg.reason is not None:
        raise ArchiveLineError("reason", "a valid message has no dead-letter reason")
    for flag, name in ((msg.payload_b64, "payload"), (msg.topic_b64, "topic")):
        if flag:  # rare (non-UTF-8 bytes): checked here so that payload_bytes cannot fail later
            try:
                base64.b64decode(getattr(msg, name), validate=True)
            except binascii.Error as exc:
                raise ArchiveLineError(name, f"bad base64: {exc}") from None
    return msg


# --------------------------------------------------------------------------- writing lines


def _text(data: bytes) -> tuple[str, bool]:
    """UTF-8 text as it is, anything else as base64 (flag True): exact bytes either way."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def archive_line(
    *,
    received_ms: int,
    seq: int,
    writer: str,
    topic: bytes,
    payload: bytes,
    verdict: Literal["ok", "deadletter"],
    ts: int | None = None,
    reason: str | None = None,
    detail: str | None = None,
    publisher: str | None = None,
) -> bytes:
    """One archive line (JSON, no newline): the one definition of the format the writer uses."""
    payload_text, payload_b64 = _text(payload)
    topic_text, topic_b64 = _text(topic)
    line: dict[str, Any] = {
        "received_ms": received_ms,
        "seq": seq,
        "writer": writer,
        "topic": topic_text,
        "ts": ts,
        "verdict": verdict,
        "payload": payload_text,
    }
    # what is usually absent is left out: smaller lines, less to format per message
    if reason is not None:
        line["reason"] = reason
    if detail is not None:
        line["detail"] = detail
    if publisher is not None:
        line["publisher"] = publisher
    if payload_b64:
        line["payload_b64"] = True
    if topic_b64:
        line["topic_b64"] = True
    return orjson.dumps(line)


def default_archive_dir(data_dir: Path | str) -> Path:
    """Where the archive is when ``SESMON_ARCHIVE_DIR`` is unset: ``<data dir>/archive``."""
    return Path(data_dir) / "archive"


def device_partition(device_id: str) -> str:
    """The partition (file stem) of a unit: its id, with one more ``_`` if it starts with ``_``."""
    return "_" + device_id if device_id.startswith("_") else device_id


#: dead-letter reasons that say the topic names no unit of ours
NO_UNIT_REASONS = frozenset({"bad_topic", "vendor_bad_topic", "unknown_device"})
_VENDOR_PARTS = VENDOR_ROOT.split("/")


def message_partition(topic: bytes, payload: bytes, verdict: str, reason: str | None = None) -> str:
    """The partition of a message: its unit (from the topic; a report's from its body), ``_dispatch``,
    ``_reports`` (a report naming no unit) or ``_unknown`` (no unit, or a dead letter saying so)."""
    try:
        parts = topic.decode("utf-8").split("/")
    except UnicodeDecodeError:
        return UNKNOWN
    if verdict != "ok" and reason in NO_UNIT_REASONS:
        return UNKNOWN
    device_id = None
    if len(parts) >= 3 and parts[0] == "sesmon" and parts[1] == "v1":
        if parts[2] == "dispatch":
            return DISPATCH
        if parts[2] == "reports":
            return _report_partition(payload)
        if len(parts) == 5:
            device_id = parts[3]
    elif len(parts) == 4 and parts[:2] == _VENDOR_PARTS:
        device_id = parts[2]
    if device_id is None or not DEVICE_ID.fullmatch(device_id):
        return UNKNOWN
    return device_partition(device_id)


def _report_partition(payload: bytes) -> str:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return REPORTS
    if not isinstance(body, dict):
        return REPORTS
    device_id = body.get("device_id")
    if not isinstance(device_id, str):
        hazard_id = body.get("hazard_id")
        device_id = hazard_device_id(hazard_id) if isinstance(hazard_id, str) else None
    if isinstance(device_id, str) and DEVICE_ID.fullmatch(device_id):
        return device_partition(device_id)
    return REPORTS


def day_name(received_ms: int) -> str:
    """The day directory of a receive time: the local (Guangzhou) date, ``YYYY-MM-DD``."""
    return local_date(received_ms).isoformat()


def day_bounds(day: str) -> tuple[int, int]:
    """Epoch ms ``[start, end)`` of a day directory's name."""
    start = start_of_day_ms(date.fromisoformat(day), LOCAL_TZ)
    return start, start + DAY_MS


def partition_path(archive_dir: Path, day: str, partition: str) -> Path:
    return archive_dir / day / f"{partition}{PARTITION_SUFFIX}"


def gzip_member(lines: Iterable[bytes], level: int = 1) -> bytes:
    """One gzip member holding ``lines`` (each without its newline): what a flush appends to a file."""
    return gzip_block(b"\n".join(lines) + b"\n", level)


def gzip_block(data: bytes | bytearray, level: int = 1) -> bytes:
    """One gzip member of ``data`` (whole lines, each ending in a newline)."""
    # ISA-L's deflate (plain gzip, zcat reads it): level 1 costs ingest ~0.35 µs a line where zlib's
    # level 1 cost ~1.1 (issue 12: the archive's < 5 %), for ~27 bytes a line instead of ~25;
    # one-shot: a compressobj's set-up costs more than compressing a few dozen lines; wbits 31 = gzip
    return isal_zlib.compress(data, level, 31)


# --------------------------------------------------------------------------- reading


@dataclass
class ReadStats:
    """What a read saw: files, lines, and what it skipped (corrupt only with ``strict=False``)."""

    files: int = 0
    lines: int = 0
    yielded: int = 0
    duplicates: int = 0  # the same message in a journal and in a partition file (a crash between the two)
    corrupt: int = 0  # lines or gzip tails skipped with strict=False
    journal_partial: int = 0  # a journal's unfinished last line (being written, or cut before its ack)
    problems: list[str] = field(default_factory=list)  # file:line: what, the first 100


def _problem(stats: ReadStats, strict: bool, where: str, what: str) -> None:
    message = f"{where}: {what}"
    if strict:
        raise ArchiveCorrupt(message)
    stats.corrupt += 1
    if len(stats.problems) < 100:
        stats.problems.append(message)
    log.warning("archive: skipping %s", message)


def _parse(raw: bytes, where: str, stats: ReadStats, strict: bool) -> ArchivedMessage | None:
    try:
        return _message(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        _problem(stats, strict, where, f"line: invalid JSON ({exc})")
    except ArchiveLineError as exc:
        _problem(stats, strict, where, str(exc))
    return None


def _partition_lines(path: Path, stats: ReadStats, strict: bool) -> Iterable[tuple[int, bytes]]:
    """(line number, line) of a partition file, empty lines included (the caller skips them); a
    torn or corrupt gzip tail is a problem at its line."""
    try:  # whole: 6x faster than gzip's readline; a file of one unit and day fits in memory
        whole = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error):
        return _partition_lines_streamed(path, stats, strict)  # to find the line where it breaks
    return enumerate(whole.split(b"\n"), 1)


def _partition_lines_streamed(path: Path, stats: ReadStats, strict: bool) -> Iterator[tuple[int, bytes]]:
    number = 0
    try:
        with gzip.open(path, "rb") as stream:
            for number, raw in enumerate(stream, 1):
                yield number, raw
    except (OSError, EOFError, zlib.error) as exc:
        _problem(stats, strict, f"{path}:{number + 1}", f"unreadable gzip data ({exc})")


def _wanted_record(
    msg: ArchivedMessage,
    partition: str,
    start_ms: int,
    end_ms: int,
    low_ms: int,
    high_ms: int,
    devices: set[str] | None,
) -> bool:
    if not low_ms <= msg.received_ms <= high_ms:
        return False
    if msg.ts is not None:
        if not start_ms <= msg.ts <= end_ms:
            return False
    elif not start_ms <= msg.received_ms <= end_ms:
        return False
    if devices is None or partition not in (DISPATCH, REPORTS):
        return True
    return _names_a_device(msg, partition, devices)


def _names_a_device(msg: ArchivedMessage, partition: str, devices: set[str]) -> bool:
    """Dispatch: the alert's unit (alert ids are ``{device_id}.{rule}.{opened_ms}``); reports: the
    ``device_id`` or hazard unit (``HZ.{unit}.…``) in the body; kept when neither can be told."""
    if msg.topic_b64:
        return True
    parts = msg.topic.split("/")
    if partition == DISPATCH:
        return len(parts) < 4 or parts[3].split(".", 1)[0] in devices
    try:
        body = orjson.loads(msg.payload_bytes)
    except orjson.JSONDecodeError:
        return True
    if not isinstance(body, dict):
        return True
    device_id = body.get("device_id")
    if isinstance(device_id, str):
        return device_id in devices
    hazard_id = body.get("hazard_id")
    if isinstance(hazard_id, str) and hazard_id.startswith("HZ."):
        return hazard_id.split(".")[1] in devices
    return True


def _file_records(
    path: Path,
    partition: str,
    window: tuple[int, int, int, int],
    devices: set[str] | None,
    stats: ReadStats,
    strict: bool,
) -> list[ArchivedMessage]:
    """The wanted records of one partition file (iter_archive puts everything in order).

    The replay's hot loop (every line of every unit in the window): the common line is decoded,
    checked and filtered inline; anything else goes through :func:`_parse` for its error."""
    stats.files += 1
    start_ms, end_ms, low_ms, high_ms = window
    filtered = devices is not None and partition in (DISPATCH, REPORTS)
    found: list[ArchivedMessage] = []
    append = found.append
    loads, message, decode_error = orjson.loads, _message, orjson.JSONDecodeError
    lines = 0
    for number, raw in _partition_lines(path, stats, strict):
        if not raw:
            continue
        lines += 1
        try:
            msg = message(loads(raw))
        except (decode_error, ArchiveLineError):
            _parse(raw, f"{path}:{number}", stats, strict)  # raises (strict) or counts the problem
            continue
        received_ms, ts = msg[0], msg[6]
        if not low_ms <= received_ms <= high_ms:
            continue
        if ts is not None:
            if not start_ms <= ts <= end_ms:
                continue
        elif not start_ms <= received_ms <= end_ms:
            continue
        if filtered and not _names_a_device(msg, partition, devices):  # type: ignore[arg-type]
            continue
        append(msg)
    stats.lines += lines
    return found


#: receive order: (received_ms, seq, writer), the first three fields, in C (a key function in Python
#: costs more than the sort)
_order = itemgetter(0, 1, 2)


def journal_segments(archive_dir: Path) -> list[Path]:
    """The journal segments present, oldest name first (``<writer>.<n>.mqtt``; ``.jsonl``: format 1's)."""
    journal = Path(archive_dir) / JOURNAL_DIR
    if not journal.is_dir():
        return []
    return sorted(p for p in journal.iterdir() if p.suffix in (RAW_JOURNAL_SUFFIX, JOURNAL_SUFFIX))


def journal_lines(path: Path, stats: ReadStats, strict: bool = True) -> Iterator[tuple[int, bytes]]:
    """(number, archive line) of a journal segment, raw (``.mqtt``) or of JSON lines (``.jsonl``).

    Its end may be unfinished (being written, cut by a crash before ingest acked it, or a packet
    the next segment carries): counted in ``stats.journal_partial``, not an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # folded into the partitions and deleted since it was listed
        return
    if path.suffix == RAW_JOURNAL_SUFFIX:
        for number, (_day, _partition, line) in enumerate(raw_journal_lines(data, path, stats, strict), 1):
            yield number, line
        return
    lines = data.split(b"\n")
    if lines and lines[-1]:
        stats.journal_partial += 1
    for number, raw in enumerate(lines[:-1], 1):
        if raw:
            yield number, raw


# --------------------------------------------------------------------------- the raw journal
#
# What ingest writes on its hot path (ingest/archive.py): the bytes its MQTT session received, as
# received, plus a note for each message that is not a valid device reading. Everything an archive
# line says is derived from these here, off the hot path (ingest's folder process, or a reader).
#
# A segment is a sequence of records, each RAW_RECORD (kind, body length, receive time in epoch ms,
# number) then the body:
#   CHUNK   the bytes of one recv() (or one message, paho's path), numbered 1, 2, ... per writer:
#           MQTT packets, the first and the last possibly cut (continued by the next chunk)
#   CARRY   the first record of a segment when a packet was cut at its start: that packet's head
#   CONNECT a new connection: what an earlier chunk left unfinished is dropped (the broker resends it)
#   NOTE    JSON: ``seq``, ``verdict`` ("ok", "deadletter", "skip": not archived, e.g. our own
#           output), and ``ts``, ``reason``, ``detail``, ``publisher``, ``partition`` as they apply
# A PUBLISH packet completed by chunk N at offset P of (carried bytes + chunk) is the message of seq
# ``N << SEQ_SHIFT | P``, received at chunk N's time. A message without a note is a valid
# telemetry, event or status reading (ingest's fast path): its ``ts`` is the body's.

RAW_JOURNAL_SUFFIX = ".mqtt"
RAW_RECORD = struct.Struct("<cIqQ")
CHUNK, CARRY, CONNECT, NOTE = b"P", b"L", b"C", b"V"
RAW_KINDS = frozenset({CHUNK, CARRY, CONNECT, NOTE})
SEQ_SHIFT = 32
NOTE_FIELDS = frozenset({"seq", "verdict", "ts", "reason", "detail", "publisher", "partition"})
PLAIN_TOPIC = re.compile(rb'[^"\\\x00-\x1f]*')  # what orjson writes unescaped (UTF-8 is checked apart)


def raw_record(kind: bytes, received_ms: int, number: int, body: bytes | bytearray) -> bytes:
    """A raw journal record's header (the body follows it)."""
    return RAW_RECORD.pack(kind, len(body), received_ms, number)


def plain_line_format(writer: str) -> bytes:
    """``%``-format of a valid reading's line (received_ms, seq, topic, ts, payload as JSON): byte for
    byte :func:`archive_line`'s (a test checks it), for a topic :data:`PLAIN_TOPIC` matches."""
    return (
        b'{"received_ms":%d,"seq":%d,"writer":' + orjson.dumps(writer) + b',"topic":"%s","ts":%d,'
        b'"verdict":"ok","payload":%s}'
    )


def device_time(payload: bytes) -> int | None:
    """The device time of a body, when it is a JSON object with a usable ``ts`` (epoch ms or RFC 3339
    text with an offset): a valid reading's ``ts``, or what a dead letter's body claims."""
    if len(payload) > DEAD_TS_MAX_BYTES:
        return None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    ts = body.get("ts") if type(body) is dict else None
    if type(ts) is int and 0 < ts < 10**14:
        return ts
    if type(ts) is str:
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            return None
        if when.tzinfo is not None:
            return int(when.timestamp() * 1000)
    return None


def _plain_topic(topic: bytes, plain: set[bytes]) -> bool:
    """Does JSON write ``topic`` as it is (valid UTF-8, no quote, backslash or control byte)? Remembered."""
    if PLAIN_TOPIC.fullmatch(topic) is None:
        return False
    try:
        topic.decode()
    except UnicodeDecodeError:
        return False
    plain.add(topic)
    return True


class RawJournalError(ValueError):
    """A raw journal that does not follow its format: where and what."""


def remaining_length(buf: bytes, at: int) -> tuple[int, int]:
    """MQTT's base-128 remaining length at ``at``: (length, where the packet's body starts), or
    (-1, 0) when ``buf`` ends inside it; ValueError past 4 bytes (the protocol's limit). The one
    decoder of ingest's MQTT session and of the raw journal's reader."""
    length = 0
    for shift in (0, 7, 14, 21):
        if at >= len(buf):
            return -1, 0
        byte = buf[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, at
    raise ValueError("remaining length longer than 4 bytes")


def _publishes(buf: bytes) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """(offset, topic, payload) of each whole PUBLISH in ``buf``, and where the unfinished rest starts."""
    found = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        header = buf[pos]
        try:
            length, at = remaining_length(buf, pos + 1)
        except ValueError as exc:
            raise RawJournalError(f"offset {pos}: {exc}") from None
        if length < 0:
            break  # the length itself is cut
        stop = at + length
        if stop > end:
            break
        if header >> 4 == 3:
            qos = (header >> 1) & 0x03
            if length < 2 or qos > 1:
                raise RawJournalError(f"offset {pos}: not a PUBLISH ingest takes (QoS {qos}, {length} bytes)")
            topic_end = at + 2 + ((buf[at] << 8) | buf[at + 1])
            body = topic_end + 2 * qos
            if body > stop:
                raise RawJournalError(f"offset {pos}: PUBLISH topic longer than the packet")
            found.append((pos, buf[at + 2 : topic_end], buf[body:stop]))
        pos = stop
    return found, pos


def raw_journal_lines(
    data: bytes, where: Path | str, stats: ReadStats, strict: bool = True
) -> Iterator[tuple[str, str, bytes]]:
    """(day, partition, archive line) of every message of a raw journal segment, in receive order.

    ``where``: the segment's path, whose name gives the writer (``<writer>.<n>.mqtt``)."""
    writer = Path(where).name.split(".", 1)[0]
    size = RAW_RECORD.size
    records = []
    notes: dict[int, dict[str, Any]] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < size:
            stats.journal_partial += 1
            break
        kind, length, received_ms, number = RAW_RECORD.unpack_from(data, pos)
        body_end = pos + size + length
        if kind not in RAW_KINDS:
            _problem(stats, strict, f"{where}@{pos}", f"unknown journal record {kind!r}")
            break
        if body_end > end:
            stats.journal_partial += 1
            break
        body = data[pos + size : body_end]
        if kind == NOTE:
            try:
                note = orjson.loads(body)
                if (
                    type(note) is not dict
                    or not note.keys() <= NOTE_FIELDS
                    or type(note.get("seq")) is not int
                ):
                    raise ValueError("not a note")
                notes[note.pop("seq")] = note
            except ValueError as exc:
                _problem(stats, strict, f"{where}@{pos}", f"bad note ({exc})")
        else:
            records.append((kind, received_ms, number, body))
        pos = body_end
    line_of, dumps = plain_line_format(writer), orjson.dumps
    plain: set[bytes] = set()
    partitions: dict[bytes, str] = {}
    buf = b""
    day, start, stop = "", 0, 0
    for kind, received_ms, number, body in records:
        if kind == CONNECT:
            buf = b""
            continue
        if kind == CARRY:
            buf = body
            continue
        buf = buf + body if buf else body
        try:
            found, rest = _publishes(buf)
        except RawJournalError as exc:
            _problem(stats, strict, f"{where}#{number}", str(exc))
            buf = b""
            continue
        buf = buf[rest:]
        if not start <= received_ms < stop:
            day = day_name(received_ms)
            start, stop = day_bounds(day)
        base = number << SEQ_SHIFT
        for offset, topic, payload in found:
            seq = base | offset
            note = notes.pop(seq, None)
            if note is None:  # a valid reading (ingest's fast path): its topic names its unit
                partition = partitions.get(topic)
                if partition is None:
                    partition = partitions[topic] = message_partition(topic, payload, "ok")
                ts = device_time(payload)
                if ts is not None and (topic in plain or _plain_topic(topic, plain)):
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:  # not UTF-8: archive_line writes it as base64
                        pass
                    else:
                        yield day, partition, line_of % (received_ms, seq, topic, ts, dumps(text))
                        continue
                note = {"verdict": "ok", "ts": ts}
            elif note["verdict"] == "skip":
                continue
            else:
                partition = note.pop("partition", None) or message_partition(
                    topic, payload, note["verdict"], note.get("reason")
                )
            line = archive_line(
                received_ms=received_ms, seq=seq, writer=writer, topic=topic, payload=payload, **note
            )
            yield day, partition, line
    if buf:
        stats.journal_partial += 1  # a packet the next segment carries (or one a crash cut)


def _journal_records(
    archive_dir: Path,
    partitions: set[str] | None,
    excluded: frozenset[str],
    days: set[str],
    window: tuple[int, int, int, int],
    devices: set[str] | None,
    stats: ReadStats,
    strict: bool,
) -> list[ArchivedMessage]:
    found = []
    for path in journal_segments(archive_dir):
        stats.files += 1
        for number, raw in journal_lines(path, stats, strict):
            stats.lines += 1
            msg = _parse(raw, f"{path}:{number}", stats, strict)
            # the window first: a running ingest's journal is mostly of now, not of the window
            if msg is None or not _wanted_record(msg, "", *window, None):
                continue
            if day_name(msg.received_ms) not in days:
                continue
            partition = message_partition(msg.topic_bytes, msg.payload_bytes, msg.verdict, msg.reason)
            if partition in excluded or (partitions is not None and partition not in partitions):
                continue
            special = devices is not None and partition in (DISPATCH, REPORTS)
            if not special or _names_a_device(msg, partition, devices):  # type: ignore[arg-type]
                found.append(msg)
    found.sort(key=_order)
    return found


def _days_between(low_ms: int, high_ms: int) -> list[str]:
    first, last = local_date(low_ms), local_date(high_ms)
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def iter_archive(
    archive_dir: Path | str,
    *,
    start_ms: int,
    end_ms: int,
    devices: set[str] | None = None,
    include_dispatch: bool = True,
    include_reports: bool = True,
    include_unknown: bool | None = None,
    include_units: bool = True,
    slack_ms: int = DEFAULT_SLACK_MS,
    strict: bool = True,
    stats: ReadStats | None = None,
) -> Iterator[ArchivedMessage]:
    """The archived messages of a window, in receive order ``(received_ms, seq, writer)``.

    A message is in the window when it was received within ``[start_ms - slack_ms, end_ms +
    slack_ms]`` and its device time ``ts`` is within ``[start_ms, end_ms]``; one without a device
    time (most dead letters) when it was received within ``[start_ms, end_ms]``. ``devices``
    limits the units (None: every partition); dispatch actions are then those of alerts on these
    units, reports those naming them (or naming no unit). ``include_unknown`` (default: when
    ``devices`` is None) adds the ``_unknown`` partition. ``include_units=False`` reads only those
    special partitions (still filtered by ``devices``): a parallel replay's parent reads them while
    its workers read the units (``replay.parallel``). Partition files and journal segments are
    merged, each message yielded once.

    ``strict`` (default): a corrupt line raises :class:`ArchiveCorrupt` naming ``file:line``.
    ``strict=False`` skips it, counts it in ``stats.corrupt`` and logs it.
    """
    archive_dir = Path(archive_dir)
    stats = stats if stats is not None else ReadStats()
    low_ms, high_ms = start_ms - slack_ms, end_ms + slack_ms
    window = (start_ms, end_ms, low_ms, high_ms)
    if include_unknown is None:
        include_unknown = devices is None
    wanted: set[str] | None = None
    if devices is not None:
        wanted = {device_partition(d) for d in devices}
    if not include_units:
        wanted = set()
    extras = {
        name
        for name, on in ((DISPATCH, include_dispatch), (REPORTS, include_reports), (UNKNOWN, include_unknown))
        if on
    }
    excluded = SPECIAL_PARTITIONS - extras
    days = _days_between(low_ms, high_ms)
    sources: list[list[ArchivedMessage]] = []
    for day in days:
        folder = archive_dir / day
        if not folder.is_dir():
            continue
        if wanted is None:
            names = [p.name[: -len(PARTITION_SUFFIX)] for p in sorted(folder.glob(f"*{PARTITION_SUFFIX}"))]
            names = [n for n in names if n not in excluded]
        else:
            names = sorted(wanted | extras)
        for name in names:
            path = partition_path(archive_dir, day, name)
            if path.is_file():
                sources.append(_file_records(path, name, window, devices, stats, strict))
    partitions = None if wanted is None else wanted | extras
    journal = _journal_records(archive_dir, partitions, excluded, set(days), window, devices, stats, strict)
    sources.append(journal)
    # every source is already in memory (a file is read whole): one sort in C beats a k-way merge in
    # Python (2,000 unit files: 31,000 messages/s merged, ~5x that sorted)
    found = [msg for source in sources for msg in source]
    found.sort(key=_order)
    keys = list(map(_order, found))
    if all(map(ne, keys, islice(keys, 1, None))):  # no duplicate (the usual case), checked in C
        stats.yielded += len(found)
        yield from found
        return
    last: tuple[int, int, str] | None = None
    for msg in found:
        key = _order(msg)
        if key == last:
            stats.duplicates += 1
            continue
        last = key
        stats.yielded += 1
        yield msg


def partition_bytes(
    archive_dir: Path | str,
    devices: Iterable[str],
    *,
    start_ms: int,
    end_ms: int,
    slack_ms: int = DEFAULT_SLACK_MS,
) -> dict[str, int]:
    """Compressed bytes of each unit's partition files over the days :func:`iter_archive` would read
    for this window: a cheap measure of each unit's share of a replay's work (``replay.parallel``)."""
    archive_dir = Path(archive_dir)
    days = _days_between(start_ms - slack_ms, end_ms + slack_ms)
    sizes: dict[str, int] = {}
    for device_id in devices:
        total = 0
        for day in days:
            try:
                total += partition_path(archive_dir, day, device_partition(device_id)).stat().st_size
            except OSError:
                continue
        sizes[device_id] = total
    return sizes


# --------------------------------------------------------------------------- days and retention


def archive_days(archive_dir: Path | str) -> list[date]:
    """The local days that have archive data, oldest first."""
    archive_dir = Path(archive_dir)
    if not archive_dir.is_dir():
        return []
    days = []
    for entry in archive_dir.iterdir():
        if entry.is_dir() and DAY_DIR.fullmatch(entry.name):
            try:
                days.append(date.fromisoformat(entry.name))
            except ValueError:
                continue
    return sorted(days)


def prune_archive(archive_dir: Path | str, retention_days: int, today: date | None = None) -> list[date]:
    """Delete the days older than ``retention_days`` before ``today`` (local); returns the days removed.

    ``today`` defaults to the local date now; the day ``today - retention_days`` is kept.
    """
    if retention_days <= 0:
        return []
    if today is None:
        today = local_date(int(time.time() * 1000))
    oldest_kept = today - timedelta(days=retention_days)
    removed = []
    for day in archive_days(archive_dir):
        if day < oldest_kept:
            shutil.rmtree(Path(archive_dir) / day.isoformat(), ignore_errors=True)
            removed.append(day)
    if removed:
        log.info("archive: pruned %d day(s) older than %s", len(removed), oldest_kept)
    return removed


def read_partition(
    path: Path | str, *, strict: bool = True, stats: ReadStats | None = None
) -> list[ArchivedMessage]:
    """Every record of one partition file, in file order (tools and tests)."""
    stats = stats if stats is not None else ReadStats()
    out = []
    for number, raw in _partition_lines(Path(path), stats, strict):
        if not raw:
            continue
        msg = _parse(raw, f"{path}:{number}", stats, strict)
        if msg is not None:
            out.append(msg)
    return out


__all__ = [
    "DEFAULT_SLACK_MS",
    "DISPATCH",
    "FORMAT_VERSION",
    "REPORTS",
    "UNKNOWN",
    "ArchiveCorrupt",
    "ArchiveLineError",
    "ArchivedMessage",
    "ReadStats",
    "archive_days",
    "archive_line",
    "day_bounds",
    "day_name",
    "default_archive_dir",
    "device_partition",
    "device_time",
    "gzip_block",
    "gzip_member",
    "iter_archive",
    "journal_lines",
    "journal_segments",
    "message_partition",
    "partition_bytes",
    "partition_path",
    "plain_line_format",
    "prune_archive",
    "raw_journal_lines",
    "raw_record",
    "read_partition",
    "remaining_length",
]
