"""The raw archive's folder: ingest's journal segments into the day/unit partition files.

Run by ingest as a child process (``ingest.archive.FolderProcess``), so that parsing the
received bytes, formatting the lines and compressing them costs ingest's process nothing
(issue 12: the archive may add < 5 % to ingest's cost per reading). It takes every segment no
live process holds (``flock``): rotated ones of the running ingest, and those of a crashed one,
appends each partition's lines as one gzip member and deletes the segment. A crash in between
leaves lines in both places; readers drop the repeat (``sesmon.contract.archive``).

It ends after a last pass when its stdin ends: ingest closes it at a clean stop (no journal
left), and the kernel does when ingest dies (a kill: the segment it held is folded too). Days
older than the retention are deleted at its start and when the local day changes.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

from ingest.archive import FOLDER_STOP_WORD, append_member
from sesmon.contract.archive import (
    RAW_JOURNAL_SUFFIX,
    ArchivedMessage,
    ReadStats,
    day_name,
    journal_lines,
    journal_segments,
    message_partition,
    partition_path,
    prune_archive,
    raw_journal_lines,
)
from sesmon.contract.time import local_date

log = logging.getLogger("sesmon.ingest.archive_folder")

NICE = 10  # below the stages: the journal can wait, a reading cannot
PARENT_EXIT_WAIT_S = 30.0  # ingest died: how long the last pass waits for its exit to complete


def fold_journals(archive_dir: Path) -> int:
    """Fold every journal segment no live writer holds into the partition files; returns lines folded.

    A segment whose ``flock`` is held belongs to a live writer and is left alone. A segment with an
    unreadable part is renamed ``.bad`` after folding the rest (kept for a human).
    """
    folded = 0
    for path in journal_segments(archive_dir):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's (or another folder's)
            if not path.exists():
                continue  # folded and deleted by another folder meanwhile
            stats = ReadStats()
            if path.suffix == RAW_JOURNAL_SUFFIX:
                by_partition = _raw_partitions(path, stats)
            else:
                by_partition = _line_partitions(path, stats)
            for (day, partition), lines in by_partition.items():
                target = partition_path(archive_dir, day, partition)
                target.parent.mkdir(parents=True, exist_ok=True)
                append_member(target, lines)
            lines_folded = sum(map(len, by_partition.values()))
            folded += lines_folded
            if stats.corrupt:
                log.error("archive: %s has unreadable parts (%s); kept as .bad", path, stats.problems[:3])
                os.replace(path, path.with_suffix(".bad"))
            else:
                os.unlink(path)
            log.debug("archive: folded %s (%d lines)", path.name, lines_folded)
        finally:
            os.close(fd)
    return folded


def _raw_partitions(path: Path, stats: ReadStats) -> dict[tuple[str, str], list[bytes]]:
    by_partition: dict[tuple[str, str], list[bytes]] = {}
    for day, partition, line in raw_journal_lines(path.read_bytes(), path, stats, strict=False):
        kept = by_partition.get((day, partition))
        if kept is None:
            kept = by_partition[(day, partition)] = []
        kept.append(line)
    return by_partition


def _line_partitions(path: Path, stats: ReadStats) -> dict[tuple[str, str], list[bytes]]:
    """A format-1 segment (JSON lines, written by an ingest before the raw journal). Its dead letters
    carry no partition and the folder has no registry: a unit's go to that unit's file."""
    by_partition: dict[tuple[str, str], list[bytes]] = {}
    for number, line in journal_lines(path, stats, strict=False):
        try:
            msg = ArchivedMessage.model_validate_json(line)
            partition = message_partition(msg.topic_bytes, msg.payload_bytes, msg.verdict, msg.reason)
            where = (day_name(msg.received_ms), partition)
        except ValueError:  # ArchiveLineError is one
            stats.corrupt += 1
            stats.problems.append(f"{path}:{number}")
            continue
        by_partition.setdefault(where, []).append(line)
    return by_partition


def run(archive_dir: Path, *, retention_days: int, poll_s: float) -> None:
    """Fold until stdin ends (ingest closed it, or ingest is gone) or SIGTERM, then fold once more."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.pidfd_open(os.getppid())  # readable once ingest has exited (Linux 5.3)

    def wait_for_stop() -> None:
        said = sys.stdin.buffer.read()  # ingest holds the other end: EOF when it closes it or dies
        if said != FOLDER_STOP_WORD:
            # ingest died: the kernel closes this pipe before it releases the journal segment's
            # lock, so the last pass waits until ingest has exited (or it would skip that segment)
            select.select([parent], [], [], PARENT_EXIT_WAIT_S)
        stop.set()

    threading.Thread(target=wait_for_stop, name="parent-watch", daemon=True).start()
    today = None
    while True:
        now_day = local_date(int(time.time() * 1000))
        if now_day != today:
            today = now_day
            prune_archive(archive_dir, retention_days, today=today)
        last = stop.is_set()
        try:
            fold_journals(archive_dir)
        except OSError as exc:  # a full disk: the journal waits, the next pass tries again
            log.error("archive: folding failed (%s); trying again", exc)
        if last:
            return
        stop.wait(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingest.archive_folder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("archive_dir", type=Path)
    parser.add_argument("--retention-days", type=int, default=400)
    parser.add_argument("--poll-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.nice(NICE)
    run(args.archive_dir, retention_days=args.retention_days, poll_s=args.poll_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
