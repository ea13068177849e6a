"""The audit trail (alerts/audit.py): a hash chain that names the first bad entry after any edit,
insertion, removal or reordering, resumes after a restart and repairs a torn last line."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import orjson
import pytest

from alerts.audit import (
    GENESIS,
    HEAD_FILE,
    AuditError,
    AuditLog,
    change_entry,
    delivery_entry,
    dispatch_entry,
    entry_hash,
    main,
    verify,
    verify_command,
)
from alerts.incidents import ResponseLoop
from sesmon.contract.schemas import Alert, DispatchAction

DAY = 86_400_000
W0 = 1_795_300_000_000  # wall ms (injected): no test depends on today's date


class Wall:
    def __init__(self, ms: int = W0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        self.ms += 1
        return self.ms


def write_log(directory: Path, entries: int = 10, days: int = 1) -> list[Path]:
    """``entries`` per day over ``days`` daily files; returns the files, oldest first."""
    wall = Wall()
    with AuditLog(directory, wall_ms=wall) as log:
        for day in range(days):
            wall.ms = W0 + day * DAY
            for i in range(entries):
                log.append("alert_change", {"day": day, "i": i, "text": "困人 trapped"}, event_at=W0 + i)
            log.sync()
    return sorted(directory.glob("audit-*.jsonl"))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_an_intact_chain_passes_and_entries_are_what_the_doc_says(tmp_path: Path) -> None:
    (path,) = write_log(tmp_path, 25)
    result = verify(tmp_path)
    assert result.ok and result.entries == 25 and result.last_seq == 24 and result.first_bad is None
    first, second = (orjson.loads(line) for line in lines_of(path)[:2])
    assert set(first) == {"seq", "at", "event_at", "kind", "data", "prev", "hash"}
    assert first["seq"] == 0 and first["prev"] == GENESIS and second["prev"] == first["hash"]
    assert entry_hash(first) == first["hash"]
    assert orjson.loads((tmp_path / HEAD_FILE).read_bytes())["seq"] == 24


def tamper_cases() -> dict[str, tuple[object, int, str]]:
    """name -> (what to do to the lines of a 10-entry file, the line named, words in the reason)."""

    def edit_byte(lines: list[bytes]) -> list[bytes]:
        lines[4] = lines[4].replace(b'"i":4', b'"i":7')
        return lines

    def insert_copy(lines: list[bytes]) -> list[bytes]:
        return [*lines[:6], lines[2], *lines[6:]]

    def insert_forged(lines: list[bytes]) -> list[bytes]:
        # a forger who recomputes the hash still breaks the chain after it
        prev = orjson.loads(lines[5])
        forged = {
            "seq": 6,
            "at": prev["at"],
            "event_at": None,
            "kind": "dispatch",
            "data": {},
            "prev": prev["hash"],
        }
        forged["hash"] = entry_hash(forged)
        return [*lines[:6], orjson.dumps(forged) + b"\n", *lines[6:]]

    def delete(lines: list[bytes]) -> list[bytes]:
        del lines[3]
        return lines

    def swap(lines: list[bytes]) -> list[bytes]:
        lines[6], lines[7] = lines[7], lines[6]
        return lines

    def delete_first(lines: list[bytes]) -> list[bytes]:
        return lines[1:]

    def delete_last(lines: list[bytes]) -> list[bytes]:
        return lines[:-1]

    def blank(lines: list[bytes]) -> list[bytes]:
        return [*lines[:2], b"\n", *lines[2:]]

    return {
        "edit one byte": (edit_byte, 5, "edited"),
        "insert a copy of an earlier line": (insert_copy, 7, "inserted"),
        "insert a forged line with a right hash": (insert_forged, 8, "inserted"),
        "delete a line": (delete, 4, "removed"),
        "swap two lines": (swap, 7, "seq 7 where 6"),
        "delete the first line": (delete_first, 1, "starts at seq 1"),
        "delete the last line": (delete_last, 0, "HEAD records seq 9"),
        "a blank line": (blank, 3, "not an audit entry"),
    }


@pytest.mark.parametrize("name", list(tamper_cases()))
def test_tampering_is_detected_and_the_first_bad_entry_named(tmp_path: Path, name: str) -> None:
    change, line, words = tamper_cases()[name]
    (path,) = write_log(tmp_path, 10)
    path.write_bytes(b"".join(change(lines_of(path))))  # type: ignore[operator]
    result = verify(tmp_path)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.line == line, result.first_bad
    assert words in result.first_bad.reason
    expected_file = HEAD_FILE if line == 0 else path.name
    assert result.first_bad.file == expected_file


def test_daily_files_chain_on_and_a_removed_file_is_detected(tmp_path: Path) -> None:
    files = write_log(tmp_path, 5, days=3)
    assert len(files) == 3 and verify(tmp_path).entries == 15
    first_of_day_2 = orjson.loads(lines_of(files[1])[0])
    assert (
        first_of_day_2["seq"] == 5 and first_of_day_2["prev"] == orjson.loads(lines_of(files[0])[-1])["hash"]
    )

    saved = {p: p.read_bytes() for p in files}
    files[0].unlink()
    bad = verify(tmp_path).first_bad
    assert (
        bad is not None
        and (bad.file, bad.line, bad.seq) == (files[1].name, 1, 5)
        and "starts at seq 5" in bad.reason
    )

    files[0].write_bytes(saved[files[0]])
    files[1].unlink()
    bad = verify(tmp_path).first_bad
    assert bad is not None and (bad.file, bad.seq) == (files[2].name, 10) and "removed" in bad.reason

    files[1].write_bytes(saved[files[1]])
    files[2].unlink()
    bad = verify(tmp_path).first_bad
    assert bad is not None and bad.file == HEAD_FILE and "removed" in bad.reason

    files[2].write_bytes(saved[files[2]])
    assert verify(tmp_path).ok


def test_the_writer_resumes_the_chain_after_a_restart(tmp_path: Path) -> None:
    write_log(tmp_path, 4)
    with AuditLog(tmp_path, wall_ms=Wall(W0 + 10_000)) as log:
        entry = log.append("dispatch", {"n": 1})
    assert entry["seq"] == 4
    result = verify(tmp_path)
    assert result.ok and result.entries == 5 and result.last_hash == entry["hash"]


def test_a_torn_last_line_is_reported_then_cut_off_on_open_and_recorded(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    (path,) = write_log(audit, 6)
    # a crash in the middle of a write that had not been synced (HEAD still says seq 5)
    path.write_bytes(path.read_bytes() + b'{"at":1795300000100,"data":{"i":6},"ev')
    before = verify(audit)
    assert before.ok and before.entries == 6 and "unfinished" in before.torn_tail
    out = io.StringIO()
    assert verify_command(tmp_path, out) == 0 and "warning: torn tail" in out.getvalue()

    with AuditLog(audit, wall_ms=Wall(W0 + 10_000)) as log:
        log.append("dispatch", {"after": "restart"})
    after = verify(audit)
    assert after.ok and after.torn_tail == "" and after.entries == 8
    repair = orjson.loads(lines_of(path)[6])
    assert repair["kind"] == "audit_torn_tail" and repair["seq"] == 6
    assert (
        repair["data"]["bytes"] == len(b'{"at":1795300000100,"data":{"i":6},"ev')
        and repair["data"]["after_seq"] == 5
    )


def test_a_last_entry_that_only_lacks_its_newline_is_kept(tmp_path: Path) -> None:
    (path,) = write_log(tmp_path, 3)
    path.write_bytes(path.read_bytes()[:-1])  # the newline of seq 2 never reached the disk
    assert verify(tmp_path).torn_tail
    AuditLog(tmp_path, wall_ms=Wall(W0 + 10_000)).close()
    result = verify(tmp_path)
    assert result.ok and result.entries == 3 and not result.torn_tail


def test_an_unfinished_line_that_head_counts_is_a_removal(tmp_path: Path) -> None:
    (path,) = write_log(tmp_path, 3)
    path.write_bytes(path.read_bytes()[:-40])  # the synced last entry cut short
    result = verify(tmp_path)
    assert not result.ok and result.first_bad is not None and "HEAD says seq 2" in result.first_bad.reason


def test_a_damaged_line_never_stops_the_writer_but_verify_fails_on_it(tmp_path: Path) -> None:
    (path,) = write_log(tmp_path, 3)
    lines = lines_of(path)
    path.write_bytes(b"".join([*lines, b"garbage\n"]))
    with AuditLog(tmp_path, wall_ms=Wall(W0 + 10_000)) as log:
        assert log.append("dispatch", {})["seq"] == 3  # continues after the last readable entry
    bad = verify(tmp_path).first_bad
    assert bad is not None and bad.line == 4 and "not an audit entry" in bad.reason


def test_head_removed_or_forged_is_detected(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    head = tmp_path / HEAD_FILE
    head.write_bytes(orjson.dumps({"seq": 1, "hash": "f" * 64, "file": None}))
    bad = verify(tmp_path).first_bad
    assert bad is not None and bad.file == HEAD_FILE and "hash differs" in bad.reason
    head.unlink()
    bad = verify(tmp_path).first_bad
    assert bad is not None and bad.file == HEAD_FILE and "missing" in bad.reason


def test_one_writer_per_directory(tmp_path: Path) -> None:
    with AuditLog(tmp_path), pytest.raises(AuditError, match="another process"):
        AuditLog(tmp_path)
    AuditLog(tmp_path).close()  # free again once the first closed


def test_threads_append_one_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)

    def work(n: int) -> None:
        for i in range(300):
            log.append("delivery", {"thread": n, "i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = verify(tmp_path)
    assert result.ok and result.entries == 1200


def test_the_command_exit_status_and_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    out = io.StringIO()
    assert verify_command(data_dir, out) == 2 and "no audit log" in out.getvalue()
    (path,) = write_log(data_dir / "audit", 5)
    out = io.StringIO()
    assert verify_command(data_dir, out) == 0 and "intact: 5 entries" in out.getvalue()
    lines = lines_of(path)
    path.write_bytes(b"".join([*lines[:2], *lines[3:]]))
    out = io.StringIO()
    assert verify_command(data_dir, out) == 1
    assert f"{path.name}:3 (seq 3)" in out.getvalue() and "removed" in out.getvalue()
    assert main(["verify", "--data-dir", str(data_dir)]) == 1


def test_entries_for_changes_dispatches_and_deliveries(tmp_path: Path) -> None:
    loop = ResponseLoop()
    alert = Alert(
        alert_id="E1.elevator.trapped.1",
        rule="elevator.trapped",
        level="P1",  # type: ignore[arg-type]
        device_id="E1",
        kind="elevator",  # type: ignore[arg-type]
        district="天河",
        firm_id="F001",
        user_unit_id="U01",
        opened_at=W0,
        changed_at=W0,
        state="firing",
    )
    action = DispatchAction(alert_id=alert.alert_id, action="ack", by="firm-F001", ts=W0 + 1)  # type: ignore[arg-type]
    bad = DispatchAction(alert_id="nope", action="ack", by="firm-F001", ts=W0 + 2)  # type: ignore[arg-type]
    items = [change_entry(c) for c in loop.on_alert(alert)]
    result = loop.on_dispatch(action)
    items += [dispatch_entry(action, result.status)] + [change_entry(c) for c in result.changes]
    refused = loop.on_dispatch(bad)
    items.append(dispatch_entry(bad, refused.status, refused.reason, refused.detail))
    items += [change_entry(c) for c in loop.on_clock(W0 + 300_000)]
    items.append(delivery_entry("mqtt", "firm/F001", "E1.elevator.trapped.1|opened", "acked"))
    with AuditLog(tmp_path) as log:
        log.append_many(items)
    assert [kind for kind, _, _ in items] == [
        "alert_change",
        "dispatch",
        "dispatch",
        "dispatch_refused",
        "escalation",
        "delivery",
    ]
    assert items[3][1]["reason"] == "unknown_alert"
    assert items[4][1]["receivers"] == ["firm/F001", "user_unit/U01", "centre/96333", "rescue/district:天河"]
    assert verify(tmp_path).entries == 6
