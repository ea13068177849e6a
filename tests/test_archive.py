"""The raw archive (issue 12): format and reader (sesmon.contract.archive), ingest's writer (ingest.archive).

The reader tests write partition files and journal segments by the format's own functions; the
writer tests run a real ingest (mosquitto + Tansu) and check that every message it acked is in the
archive, also after a kill -9.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.archive import ArchiveJournal
from ingest.archive_folder import fold_journals
from ingest.bridge import IngestBridge
from ingest.mqtt_session import MqttSession
from sesmon.app.demo import wait_for_ingest
from sesmon.contract.archive import (
    DISPATCH,
    JOURNAL_DIR,
    REPORTS,
    UNKNOWN,
    ArchiveCorrupt,
    ArchivedMessage,
    ReadStats,
    archive_days,
    archive_line,
    day_name,
    default_archive_dir,
    device_partition,
    gzip_member,
    iter_archive,
    journal_segments,
    message_partition,
    partition_path,
    prune_archive,
    raw_journal_lines,
    read_partition,
)
from sesmon.contract.registry import Registry
from sesmon.contract.time import DAY_MS
from sesmon.runtime.kafka import ensure_topics
from sesmon.runtime.mqtt_wire import packet
from sesmon.runtime.settings import Settings
from tests.conftest import mqtt_client, publish_all, reading
from tests.pipeline_support import stage_env, wait_for

T0 = 1_795_300_000_000  # a fixed device clock
UNIT_A, UNIT_B = "44010600012019000001", "44010600012019000002"


def _line(seq: int, received_ms: int, topic: bytes, payload: bytes, **kw: object) -> bytes:
    return archive_line(
        received_ms=received_ms,
        seq=seq,
        writer=str(kw.pop("writer", "w1")),
        topic=topic,
        payload=payload,
        verdict=kw.pop("verdict", "ok"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _append(archive: Path, partition: str, lines: list[bytes]) -> Path:
    path = partition_path(archive, day_name(T0), partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(gzip_member(lines))
    return path


def test_round_trip_exact_bytes_valid_and_dead_letters(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    telemetry = f"sesmon/v1/elevator/{UNIT_A}/telemetry".encode()
    valid = b'{"device_id":"%s","ts":%d,"seq":1,"floor":3,"note":"\xe5\x9b\xb0\xe4\xba\xba"}' % (
        UNIT_A.encode(),
        T0,
    )
    not_utf8 = b"\xff\xfe\x00binary\x80"
    bad_topic = b"sesmon/v1/\xffbad"
    lines = [
        _line(1, T0, telemetry, valid, ts=T0),
        _line(2, T0 + 1, telemetry, not_utf8, verdict="deadletter", reason="not_json", detail="x"),
    ]
    _append(archive, UNIT_A, lines)
    _append(archive, UNKNOWN, [_line(3, T0 + 2, bad_topic, b"{}", verdict="deadletter", reason="bad_topic")])
    got = list(iter_archive(archive, start_ms=T0 - 1000, end_ms=T0 + 1000))
    assert [m.seq for m in got] == [1, 2, 3]
    assert got[0].payload_bytes == valid and not got[0].payload_b64 and got[0].ts == T0
    assert got[0].verdict == "ok" and got[0].reason is None
    assert got[1].payload_bytes == not_utf8 and got[1].payload_b64
    assert (got[1].verdict, got[1].reason, got[1].detail, got[1].ts) == ("deadletter", "not_json", "x", None)
    assert got[2].topic_bytes == bad_topic and got[2].topic_b64
    # the files are plain gzip of JSON lines: zcat and jq read them
    text = gzip.decompress(partition_path(archive, day_name(T0), UNIT_A).read_bytes()).decode()
    assert text.count("\n") == 2 and '"verdict":"deadletter"' in text
    # devices given: the unknown partition is not read
    assert [m.seq for m in iter_archive(archive, start_ms=T0, end_ms=T0 + 10, devices={UNIT_A})] == [1, 2]


def test_order_across_partitions_and_journal_without_duplicates(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    topic_a = f"sesmon/v1/elevator/{UNIT_A}/telemetry".encode()
    topic_b = f"sesmon/v1/boiler/{UNIT_B}/telemetry".encode()
    dispatch_a = f"sesmon/v1/dispatch/{UNIT_A}.trapped.{T0}".encode()
    dispatch_b = f"sesmon/v1/dispatch/{UNIT_B}.low_water.{T0}".encode()
    a = [_line(s, T0 + s // 2, topic_a, b"{}", ts=T0) for s in (1, 4, 5, 9)]
    b = [_line(s, T0 + s // 2, topic_b, b"{}", ts=T0) for s in (2, 3, 6)]
    d = [_line(7, T0 + 3, dispatch_a, b"{}", ts=T0), _line(8, T0 + 4, dispatch_b, b"{}", ts=T0)]
    _append(archive, UNIT_A, a[:2])
    _append(archive, UNIT_A, a[2:3])  # a second gzip member, as a later flush appends it
    _append(archive, UNIT_B, b)
    _append(archive, DISPATCH, d)
    # the journal holds a line also flushed (a crash between flush and delete) and one not yet flushed
    journal = archive / JOURNAL_DIR
    journal.mkdir()
    (journal / "w1.000001.jsonl").write_bytes(
        a[2] + b"\n" + a[3] + b"\n" + b[0][:10]  # an unfinished last line: being written, never acked
    )
    stats = ReadStats()
    got = list(iter_archive(archive, start_ms=T0, end_ms=T0 + 100, stats=stats))
    assert [m.seq for m in got] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert (stats.duplicates, stats.journal_partial, stats.corrupt) == (1, 1, 0)
    only_a = list(iter_archive(archive, start_ms=T0, end_ms=T0 + 100, devices={UNIT_A}))
    assert [m.seq for m in only_a] == [1, 4, 5, 7, 9]  # dispatch of A's alert, not of B's
    no_dispatch = iter_archive(
        archive, start_ms=T0, end_ms=T0 + 100, devices={UNIT_A}, include_dispatch=False
    )
    assert [m.seq for m in no_dispatch] == [1, 4, 5, 9]


def test_window_on_receive_and_device_time(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    topic = f"sesmon/v1/elevator/{UNIT_A}/telemetry".encode()
    lines = [
        _line(1, T0, topic, b"{}", ts=T0 - 5_000),  # device time before the window
        _line(2, T0 + 1, topic, b"{}", ts=T0 + 10),  # in
        _line(3, T0 + 600_000, topic, b"{}", ts=T0 + 20),  # late (buffered terminal) but in device time
        _line(4, T0 + 2, topic, b"x", verdict="deadletter", reason="not_json"),  # no ts: receive time
        _line(5, T0 + 200_000, topic, b"x", verdict="deadletter", reason="not_json"),  # received after
    ]
    _append(archive, UNIT_A, lines)
    got = iter_archive(archive, start_ms=T0, end_ms=T0 + 100_000)
    assert [m.seq for m in got] == [2, 4, 3]
    strict_slack = iter_archive(archive, start_ms=T0, end_ms=T0 + 100_000, slack_ms=1000)
    assert [m.seq for m in strict_slack] == [2, 4]


def test_reports_partition_filtered_by_unit(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    topic = b"sesmon/v1/reports/hazard"
    hz_a = f'{{"hazard_id":"HZ.{UNIT_A}.rule.1","action":"rectified","by":"x","ts":{T0}}}'.encode()
    hz_b = f'{{"hazard_id":"HZ.{UNIT_B}.rule.1","action":"rectified","by":"x","ts":{T0}}}'.encode()
    _append(archive, REPORTS, [_line(1, T0, topic, hz_a, ts=T0), _line(2, T0, topic, hz_b, ts=T0)])
    assert [m.seq for m in iter_archive(archive, start_ms=T0, end_ms=T0, devices={UNIT_B})] == [2]
    assert [m.seq for m in iter_archive(archive, start_ms=T0, end_ms=T0)] == [1, 2]
    assert list(iter_archive(archive, start_ms=T0, end_ms=T0, include_reports=False)) == []


def test_corrupt_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    topic = f"sesmon/v1/elevator/{UNIT_A}/telemetry".encode()
    good = _line(1, T0, topic, b"{}", ts=T0)
    extra = good[:-1] + b',"surprise":1}'
    path = _append(archive, UNIT_A, [good, extra, b"not json", _line(4, T0, topic, b"{}", ts=T0)])
    with pytest.raises(ArchiveCorrupt, match=rf"{path}:2: surprise"):
        list(iter_archive(archive, start_ms=T0, end_ms=T0))
    stats = ReadStats()
    got = list(iter_archive(archive, start_ms=T0, end_ms=T0, strict=False, stats=stats))
    assert [m.seq for m in got] == [1, 4]
    assert stats.corrupt == 2 and stats.problems[1].startswith(f"{path}:3:")
    # a torn gzip tail (a write cut short): the lines before it are read, the tail is a problem
    torn = gzip_member([_line(5, T0, topic, b"{}", ts=T0)])
    with path.open("ab") as out:  # cut inside the line's data (deflate may end in an empty block)
        out.write(torn[: len(torn) // 2])
    stats = ReadStats()
    assert [m.seq for m in read_partition(path, strict=False, stats=stats)] == [1, 4]
    assert stats.corrupt == 3 and "unreadable gzip data" in stats.problems[-1]


def test_model_refuses_dead_letter_without_reason_and_bad_base64() -> None:
    base = {"received_ms": 1, "seq": 1, "writer": "w", "topic": "t", "payload": "p"}
    with pytest.raises(ValueError, match="reason"):
        ArchivedMessage.model_validate({**base, "verdict": "deadletter"})
    with pytest.raises(ValueError, match="base64"):
        ArchivedMessage.model_validate({**base, "verdict": "ok", "payload": "!!", "payload_b64": True})


def test_partitions_of_messages() -> None:
    assert device_partition(UNIT_A) == UNIT_A
    assert device_partition("_dispatch") == "__dispatch" != DISPATCH
    tele = f"sesmon/v1/elevator/{UNIT_A}/telemetry".encode()
    assert message_partition(tele, b"{}", "ok") == UNIT_A
    assert message_partition(b"sesmon/v1/elevator/_dispatch/telemetry", b"{}", "ok") == "__dispatch"
    assert message_partition(f"gbt24476/v1/{UNIT_B}/status".encode(), b"{}", "ok") == UNIT_B
    assert message_partition(f"sesmon/v1/dispatch/{UNIT_A}.r.1/firm-1".encode(), b"{}", "ok") == DISPATCH
    hazard = f'{{"hazard_id":"HZ.{UNIT_B}.r.1"}}'.encode()
    assert message_partition(b"sesmon/v1/reports/hazard", hazard, "ok") == UNIT_B
    maintenance = f'{{"device_id":"{UNIT_A}"}}'.encode()
    assert message_partition(b"sesmon/v1/reports/maintenance/firm-1", maintenance, "ok") == UNIT_A
    assert message_partition(b"sesmon/v1/reports/hazard", b'{"hazard_id":"x"}', "deadletter", "x") == REPORTS
    assert message_partition(tele, b"x", "deadletter", "not_json") == UNIT_A
    assert message_partition(tele, b"x", "deadletter", "unknown_device") == UNKNOWN
    assert message_partition(b"sesmon/v1/elevator/a b/telemetry", b"x", "deadletter", "invalid") == UNKNOWN
    assert message_partition(b"\xff", b"x", "deadletter", "bad_topic") == UNKNOWN


def test_days_and_retention(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    for day in ("2025-10-01", "2025-10-02", "2026-11-22", "2026-11-23"):
        (archive / day).mkdir(parents=True)
        (archive / day / f"{UNIT_A}.jsonl.gz").write_bytes(gzip_member([b"{}"]))
    (archive / JOURNAL_DIR).mkdir()
    assert [d.isoformat() for d in archive_days(archive)] == [
        "2025-10-01",
        "2025-10-02",
        "2026-11-22",
        "2026-11-23",
    ]
    removed = prune_archive(archive, 400, today=date(2026, 11, 23))  # keeps 2025-10-19 and later
    assert [d.isoformat() for d in removed] == ["2025-10-01", "2025-10-02"]
    assert [d.isoformat() for d in archive_days(archive)] == ["2026-11-22", "2026-11-23"]
    assert (archive / JOURNAL_DIR).is_dir()
    assert prune_archive(archive, 1, today=date(2026, 11, 23)) == [date(2026, 11, 21)][:0]
    assert prune_archive(archive, 0, today=date(2030, 1, 1)) == []  # 0: keep everything


# --------------------------------------------------------------------------- the journal and the folder


def _publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH as the broker sends it."""
    return packet(0x32, len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + payload)


class _Receiver:
    """The MQTT session's receive path over a journal, without a broker: chunks in, messages out."""

    def __init__(self, journal: ArchiveJournal, on_message: Any) -> None:
        self.session = MqttSession(Settings(), "test", [], on_message, journal=journal)
        self.pending = b""
        journal.connected()

    def feed(self, stream: bytes, chunk: int) -> None:
        for at in range(0, len(stream), chunk):
            self.pending = self.session._take(stream[at : at + chunk], self.pending)


def _everything(archive: Path, start_ms: int = T0, end_ms: int | None = None) -> list[ArchivedMessage]:
    wall = int(time.time() * 1000)
    end = max(end_ms or start_ms, wall)
    return list(iter_archive(archive, start_ms=start_ms - DAY_MS, end_ms=end + DAY_MS, slack_ms=2 * DAY_MS))


def _telemetry(count: int, unit: str = UNIT_A) -> list[tuple[bytes, bytes]]:
    topic = f"sesmon/v1/elevator/{unit}/telemetry".encode()
    return [(topic, b'{"device_id":"%s","ts":%d,"n":%d}' % (unit.encode(), T0 + i, i)) for i in range(count)]


def test_journal_of_received_bytes_becomes_the_archive_lines(tmp_path: Path) -> None:
    """Chunks cut packets anywhere; notes say what is not a valid reading; the folder makes the lines."""
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, known_device={UNIT_A, UNIT_B}.__contains__, folder=False).start()
    dispatch = f"sesmon/v1/dispatch/{UNIT_A}.trapped.{T0}/firm-7".encode()
    boiler = f"sesmon/v1/boiler/{UNIT_B}/telemetry".encode()
    stranger = b"sesmon/v1/elevator/NOT-OURS/telemetry"
    messages = [
        *_telemetry(300),
        (dispatch, b"{}"),
        (b"sesmon/v1/reports/hazard", b"{}"),
        (boiler, b'{"ts":%d,"x":[]}' % (T0 + 5)),
        (stranger, b"\xff"),
        (b"sesmon/v1/alerts/x", b"our own output"),
        (b"\xfe/bad", b"{}"),
    ]
    seen: list[tuple[bytes, bytes, int]] = []

    def on_message(topic: bytes, payload: bytes, _mid: int, _qos: int) -> None:
        seq = journal_mark.seq
        seen.append((topic, payload, seq))
        if topic == dispatch:
            journal.note_valid(seq, topic, T0, "dispatch")
        elif topic == b"sesmon/v1/reports/hazard":
            journal.note_valid(seq, topic, T0, "report")
        elif topic == boiler:
            journal.note_dead(seq, topic, payload, "invalid", "ts: bad")
        elif topic == stranger:
            journal.note_dead(seq, topic, payload, "not_json", None)
        elif topic.startswith(b"sesmon/v1/alerts/"):
            journal.note_skip(seq)
        elif topic == b"\xfe/bad":
            journal.note_dead(seq, topic, payload, "bad_topic", "not UTF-8")

    receiver = _Receiver(journal, on_message)
    journal_mark = receiver.session.mark
    stream = b"".join(_publish_packet(t, p, i % 65535 + 1) for i, (t, p) in enumerate(messages))
    receiver.feed(stream, 777)  # every chunk boundary in the middle of some packet
    assert [(t, p) for t, p, _ in seen] == messages
    mark = journal.write_pending()  # the bridge's part, before it produces a Kafka record
    assert journal.covers(mark) and journal.counters["notes"] == 6
    journal.close()
    archived = [m for m in messages if not m[0].startswith(b"sesmon/v1/alerts/")]
    assert fold_journals(archive) == len(archived)
    assert list((archive / JOURNAL_DIR).iterdir()) == []
    got = _everything(archive)
    assert [(m.topic_bytes, m.payload_bytes) for m in got] == archived
    assert [m.seq for m in got] == [seq for t, _p, seq in seen if not t.startswith(b"sesmon/v1/alerts/")]
    assert [m.ts for m in got[:300]] == [T0 + i for i in range(300)]
    by_topic = {m.topic_bytes: m for m in got}
    assert by_topic[dispatch].publisher == "firm-7" and by_topic[dispatch].ts == T0
    assert (
        by_topic[boiler].verdict,
        by_topic[boiler].reason,
        by_topic[boiler].detail,
        by_topic[boiler].ts,
    ) == (
        "deadletter",
        "invalid",
        "ts: bad",
        T0 + 5,
    )
    day = day_name(got[0].received_ms)
    names = sorted(p.name for p in (archive / day).iterdir())
    assert names == sorted(f"{n}.jsonl.gz" for n in (UNIT_A, UNIT_B, DISPATCH, REPORTS, UNKNOWN))
    # a reading's line, made without archive_line, is the format's own byte for byte
    raw_lines = gzip.decompress(partition_path(archive, day, UNIT_A).read_bytes()).splitlines()
    assert len(raw_lines) == 300
    for raw, m in zip(raw_lines, got, strict=False):
        fields = {"received_ms": m.received_ms, "seq": m.seq, "writer": m.writer, "ts": m.ts}
        assert raw == archive_line(topic=m.topic_bytes, payload=m.payload_bytes, verdict="ok", **fields)


def test_a_new_segment_repeats_the_packet_the_last_one_cut(tmp_path: Path) -> None:
    """Segments rotate at a chunk's start, mid-packet: each reads alone, every message once."""
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, folder=False, max_segment_bytes=1000).start()
    messages = _telemetry(200)
    receiver = _Receiver(journal, lambda *_args: None)
    receiver.feed(b"".join(_publish_packet(t, p, i + 1) for i, (t, p) in enumerate(messages)), 301)
    journal.close()
    segments = journal_segments(archive)
    assert len(segments) > 10 and journal.counters["segments"] == len(segments)
    each = [list(raw_journal_lines(s.read_bytes(), s, ReadStats())) for s in segments]
    assert sum(map(len, each)) == len(messages)  # no segment repeats a message the cut packet held
    assert fold_journals(archive) == len(messages)
    assert [(m.topic_bytes, m.payload_bytes) for m in _everything(archive)] == messages


def test_several_threads_write_and_each_mark_is_covered(tmp_path: Path) -> None:
    """The bridge's MQTT and poll threads both write the journal before producing: one may find the
    queue emptied by the other; whatever was queued before a mark is written when it returns."""
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, folder=False).start()
    messages = _telemetry(3000)
    uncovered: list[int] = []
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            mark = journal.write_pending()
            if not journal.covers(mark):
                uncovered.append(mark)

    writers = [threading.Thread(target=write) for _ in range(3)]
    for writer in writers:
        writer.start()
    receiver = _Receiver(journal, lambda *_args: None)
    receiver.feed(b"".join(_publish_packet(t, p, i % 65535 + 1) for i, (t, p) in enumerate(messages)), 97)
    done.set()
    for writer in writers:
        writer.join(60)
    journal.close()
    assert uncovered == []
    fold_journals(archive)
    assert [(m.topic_bytes, m.payload_bytes) for m in _everything(archive)] == messages


def test_a_message_that_came_without_its_packet_is_journalled_as_one(tmp_path: Path) -> None:
    """paho's receive path and ``handle_raw`` hand over topic and payload: journalled as a PUBLISH."""
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, folder=False).start()
    messages = [*_telemetry(2), (b"sesmon/v1/elevator/" + b"x" * 300 + b"/telemetry", b"y" * 70_000)]
    now = int(time.time() * 1000)
    seqs = [journal.add_message(now, topic, payload) for topic, payload in messages]
    journal.note_dead(seqs[2], *messages[2], "oversize", "70000 bytes")
    assert journal.add_message(now, b"t" * 70_000, b"{}") == 0  # no MQTT packet holds that topic
    journal.close()
    assert fold_journals(archive) == 3
    got = _everything(archive)
    assert [(m.topic_bytes, m.payload_bytes) for m in got] == messages
    assert [m.seq for m in got] == seqs and got[2].reason == "oversize" and got[2].ts is None


def test_crashed_writers_journal_is_read_then_folded_in(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, folder=False).start()
    messages = _telemetry(50)
    _Receiver(journal, lambda *_args: None).feed(
        b"".join(_publish_packet(t, p, i + 1) for i, (t, p) in enumerate(messages)), 4096
    )
    journal.write_pending()
    journal.abort()  # as kill -9: the messages are only in the journal
    assert not (archive / day_name(int(time.time() * 1000))).exists()
    assert [(m.topic_bytes, m.payload_bytes) for m in _everything(archive)] == messages  # readers read it
    assert fold_journals(archive) == 50
    assert list((archive / JOURNAL_DIR).iterdir()) == []
    assert [(m.topic_bytes, m.payload_bytes) for m in _everything(archive)] == messages
    # a live writer's journal is not taken for a crashed one
    live = ArchiveJournal(archive, folder=False).start()
    _Receiver(live, lambda *_args: None).feed(_publish_packet(*_telemetry(51)[-1], 1), 4096)
    live.write_pending()
    assert fold_journals(archive) == 0
    live.close()
    assert fold_journals(archive) == 1
    assert len(_everything(archive)) == 51


def test_dead_letters_go_where_the_registry_says_also_after_a_crash(tmp_path: Path) -> None:
    """A dead letter of an unregistered unit goes to ``_unknown`` (junk ids make no file each)."""
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, folder=False, known_device={UNIT_A}.__contains__).start()

    def on_message(topic: bytes, payload: bytes, _mid: int, _qos: int) -> None:
        journal.note_dead(receiver.session.mark.seq, topic, payload, "not_json", None)

    receiver = _Receiver(journal, on_message)
    topics = [f"sesmon/v1/elevator/{unit}/telemetry".encode() for unit in (UNIT_A, "GZE9999999")]
    receiver.feed(b"".join(_publish_packet(t, b"{", 1) for t in topics), 4096)
    journal.write_pending()
    journal.abort()
    assert fold_journals(archive) == 2
    day = day_name(int(time.time() * 1000))
    assert {p.name.split(".")[0] for p in (archive / day).iterdir()} == {UNIT_A, UNKNOWN}


def test_an_older_ingests_journal_of_json_lines_is_still_read_and_folded(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / JOURNAL_DIR).mkdir(parents=True)
    lines = [_line(i + 1, T0 + i, *_telemetry(3)[i]) for i in range(3)]
    (archive / JOURNAL_DIR / "host-1-2.000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert [m.seq for m in _everything(archive)] == [1, 2, 3]
    assert fold_journals(archive) == 3
    assert read_partition(partition_path(archive, day_name(T0), UNIT_A))[2].seq == 3


def test_the_folder_process_folds_rotated_segments_and_ends_with_close(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive, max_segment_bytes=1000).start()  # segments by size, not by time
    receiver = _Receiver(journal, lambda *_args: None)
    messages = _telemetry(40)
    packets = [_publish_packet(t, p, i + 1) for i, (t, p) in enumerate(messages)]
    folder = journal.folder
    assert folder is not None and folder.process is not None
    receiver.feed(b"".join(packets[:30]), 400)  # rotates several times: those segments are released
    journal.write_pending()
    # a rotated segment folded while "ingest" runs (the folder is another process: no event to wait on)
    wait_for(lambda: any(archive.glob("*/*.jsonl.gz")), 60, "the folder to fold a rotated segment")
    assert journal.counters["segments"] > 1
    receiver.feed(b"".join(packets[30:]), 400)
    journal.close()  # stdin closed: the folder folds the last segment, then ends
    assert folder.process.returncode == 0
    assert list((archive / JOURNAL_DIR).iterdir()) == []
    assert [(m.topic_bytes, m.payload_bytes) for m in _everything(archive)] == messages


# --------------------------------------------------------------------------- a real ingest

NOW = 1_795_299_000_000  # fixed device time: nothing here depends on the clock
FATALS: list[str] = []


def test_ingest_archives_every_message_it_acks_valid_and_dead(
    settings: Settings, fleet_registry: Registry
) -> None:
    elevators = [u.device_id for u in fleet_registry if u.kind == "elevator"][:5]
    bridge = IngestBridge(settings, fleet_registry, on_fatal=FATALS.append).start()
    assert bridge.wait_connected()
    good = [reading(elevators[i % 5], i, NOW + i, moving=False) for i in range(500)]
    alert_id = f"{elevators[0]}.trapped.{NOW}"
    others = [
        (f"sesmon/v1/elevator/{elevators[1]}/telemetry", b"{not json"),
        (f"sesmon/v1/elevator/{elevators[2]}/telemetry", b"\xff\xfe not utf-8 \x80"),
        (
            "sesmon/v1/elevator/NOT-REGISTERED/telemetry",
            b'{"device_id":"NOT-REGISTERED","ts":%d,"seq":1}' % NOW,
        ),
        ("sesmon/v1/lift/x/telemetry", b"{}"),
        (
            f"sesmon/v1/dispatch/{alert_id}",
            orjson.dumps({"alert_id": alert_id, "action": "ack", "by": "op", "ts": NOW + 1}),
        ),
        (
            "sesmon/v1/reports/hazard",
            orjson.dumps(
                {"hazard_id": f"HZ.{elevators[0]}.r.1", "action": "rectified", "by": "x", "ts": NOW}
            ),
        ),
    ]
    messages = good[:250] + others + good[250:]
    client = mqtt_client(settings)
    publish_all(client, messages)
    assert bridge.wait_until(lambda b: b.counters["produced"] + b.counters["dead_lettered"] == len(messages))
    snapshot = bridge.snapshot()
    bridge.stop()
    client.disconnect()
    assert FATALS == []
    archive = default_archive_dir(settings.data_dir)
    got = _everything(archive, NOW)
    # every message, once, in the order received (one publisher: the order published), exact bytes
    assert [(m.topic, m.payload_bytes) for m in got] == [(t, p) for t, p in messages]
    verdicts = {m.topic: (m.verdict, m.reason) for m in got if m.verdict == "deadletter"}
    assert verdicts == {
        f"sesmon/v1/elevator/{elevators[1]}/telemetry": ("deadletter", "not_json"),
        f"sesmon/v1/elevator/{elevators[2]}/telemetry": ("deadletter", "not_json"),
        "sesmon/v1/elevator/NOT-REGISTERED/telemetry": ("deadletter", "unknown_device"),
        "sesmon/v1/lift/x/telemetry": ("deadletter", "bad_topic"),
    }
    valid_readings = [m for m in got if m.topic.endswith("telemetry") and m.verdict == "ok"]
    assert [m.ts for m in valid_readings] == [NOW + i for i in range(len(good))]
    assert {m.ts for m in got if m.reason == "unknown_device"} == {NOW}  # a dead letter's device time
    day = day_name(got[0].received_ms)
    names = {p.name.split(".")[0] for p in (archive / day).iterdir()}
    assert {DISPATCH, UNKNOWN, *elevators} == names  # the hazard's report went to its unit
    # received now, at device time NOW: a slack reaching the receive times (not the wall clock's date)
    slack_ms = max(m.received_ms for m in got) - NOW + DAY_MS
    window = {"start_ms": NOW, "end_ms": NOW + 1000, "slack_ms": slack_ms}
    only_unit = list(iter_archive(archive, devices={elevators[0]}, **window))
    assert {m.topic.split("/")[2] for m in only_unit} == {"elevator", "dispatch", "reports"}
    assert snapshot["archive_notes"] == len(others)  # the readings' bytes say all: no note
    assert snapshot.get("archive_ack_waits", 0) == 0  # journalled before produced: no ack waited


def test_acks_wait_while_the_journal_cannot_be_written(settings: Settings, fleet_registry: Registry) -> None:
    """A journal write that fails (disk full): the records still go to Kafka, but no message is acked
    (nor counted produced) until a later poll round writes it; then every message is archived once."""
    elevators = [u.device_id for u in fleet_registry if u.kind == "elevator"][:3]
    bridge = IngestBridge(settings, fleet_registry, on_fatal=FATALS.append).start()
    archive = bridge.archive
    assert archive is not None and bridge.wait_connected()
    read_only = os.open(os.devnull, os.O_RDONLY)  # every write to it fails (EBADF)
    with archive._lock:
        journal_fd, archive._fd = archive._fd, read_only
    messages = [reading(elevators[i % 3], i, NOW + i, moving=False) for i in range(200)]
    client = mqtt_client(settings)
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1)
        wait_for(lambda: bridge.counters["archive_ack_waits"] > 0, 60, "a delivered record whose acks wait")
        wait_for(lambda: archive.counters["write_errors"] > 1, 60, "the poll thread to try the write again")
        assert bridge.counters["produced"] == 0 and archive._written == 0
        with archive._lock:
            archive._fd = journal_fd
        assert bridge.wait_until(lambda b: b.counters["produced"] == len(messages), 60)
        assert bridge.snapshot()["archive_waiting_records"] == 0
    finally:
        with archive._lock:
            archive._fd = journal_fd
        os.close(read_only)
        bridge.stop()
        client.disconnect()
    assert FATALS == []
    got = _everything(default_archive_dir(settings.data_dir), NOW)
    assert [(m.topic, m.payload_bytes) for m in got] == messages


def test_kill_9_of_ingest_loses_no_acked_message(
    settings: Settings, fleet_registry: Registry, tmp_path: Path
) -> None:
    """kill -9 while readings flow: every message ingest acked is in the archive (its journal), and what it
    did not ack the broker still holds for its session; together they are every message published."""
    total = 3000
    own = settings.model_copy(update={"mqtt_client_id": f"{settings.mqtt_client_id}-kill"})
    ensure_topics(own)
    env = {**os.environ, **stage_env(own, fleet_registry), "SESMON_ARCHIVE_FLUSH_S": "0.5"}
    archive = default_archive_dir(own.data_dir)
    devices = [u.device_id for u in fleet_registry if u.kind == "elevator"][:10]
    messages = [reading(devices[i % 10], i, NOW + i) for i in range(total)]
    stderr_path = tmp_path / "ingest.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sesmon.app.cli", "ingest"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        assert wait_for_ingest(own, 60), stderr_path.read_text()[-2000:]
        client = mqtt_client(own)
        stop = threading.Event()
        infos: list[mqtt.MQTTMessageInfo] = []

        def publish_steadily() -> None:
            for topic, payload in messages:
                infos.append(client.publish(topic, payload, qos=1))
                if stop.wait(0.0005):
                    return

        publisher = threading.Thread(target=publish_steadily, daemon=True)
        publisher.start()
        deadline = time.monotonic() + 60
        while len(_everything(archive, NOW)) < total // 3:  # archived while the readings flow
            assert time.monotonic() < deadline and proc.poll() is None, stderr_path.read_text()[-2000:]
            stop.wait(0.02)
        proc.kill()  # SIGKILL: no flush, no checkpoint, no DISCONNECT
        proc.wait(10)
        publisher.join(60)
        for info in infos:  # the broker has them all, in ingest's session or acked by it
            info.wait_for_publish(30)
        client.disconnect()
        archived = {m.payload_bytes for m in _everything(archive, NOW)}  # partition files and journal

        # what ingest did not ack, its persistent session still holds: take it over and drain it
        redelivered: set[bytes] = set()
        everything = {payload for _topic, payload in messages}
        got_all = threading.Event()
        lock = threading.Lock()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with lock:
                redelivered.add(msg.payload)
                if archived | redelivered >= everything:
                    got_all.set()

        session = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=own.mqtt_client_id, clean_session=False
        )
        session.on_message = on_message
        session.connect(*own.mqtt_host_port)
        session.loop_start()
        try:
            if archived >= everything:
                got_all.set()
            assert got_all.wait(60), (
                f"{len(everything - archived - redelivered)} acked messages are in no archive file "
                f"(archived {len(archived)}, redelivered {len(redelivered)})"
            )
        finally:
            session.disconnect()
            session.loop_stop()
        acked = everything - redelivered
        assert len(acked) >= total // 10, "too little acked before the kill for the test to mean anything"
        assert acked <= archived
        # the killed ingest's folder (its child, now an orphan) folds the journal it left, then ends
        wait_for(
            lambda: not list((archive / JOURNAL_DIR).iterdir()), 60, "the orphaned folder to fold the journal"
        )
        assert {m.payload_bytes for m in _everything(archive, NOW)} == archived
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_stop_right_after_the_start_still_folds_everything(tmp_path: Path) -> None:
    """close() while the folder is still starting (importing): it must fold, not just die (CI saw a
    SIGTERM end a folder before its handler was set, leaving the journal of a clean stop)."""
    archive = tmp_path / "archive"
    journal = ArchiveJournal(archive).start()
    messages = _telemetry(20)
    _Receiver(journal, lambda *_args: None).feed(
        b"".join(_publish_packet(t, p, i + 1) for i, (t, p) in enumerate(messages)), 4096
    )
    journal.close()
    assert journal.folder is not None and journal.folder.process is not None
    assert journal.folder.process.returncode == 0
    assert list((archive / JOURNAL_DIR).iterdir()) == []
    assert [(m.topic_bytes, m.payload_bytes) for m in _everything(archive)] == messages
