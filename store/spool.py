"""Points InfluxDB could not take in time, on disk until it can: one file per batch.

A file is written to ``*.tmp``, fsynced and renamed, so after a crash a spool file is
either whole or absent (a leftover ``.tmp`` is the batch's Kafka records, which were not
committed and will be read again). Names sort in write order and carry the point count,
so a restarted sink knows what it owes without reading the files.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SpoolFile:
    path: Path
    points: int
    size: int


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._files: list[SpoolFile] = []
        self._points = self._bytes = 0  # running totals (the files may be many)
        for tmp in directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in sorted(directory.glob("*.lp")):
            try:
                points = int(path.stem.rsplit("-", 1)[1])
            except (IndexError, ValueError):
                continue
            self._add(SpoolFile(path, points, path.stat().st_size))

    def _add(self, spooled: SpoolFile) -> None:
        self._files.append(spooled)
        self._points += spooled.points
        self._bytes += spooled.size

    def put(self, body: bytes, points: int) -> SpoolFile:
        """Write one batch durably (fsync of the file and the directory)."""
        name = f"{time.time_ns():020d}-{next(self._seq):08d}-{points}.lp"
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        spooled = SpoolFile(path, points, len(body))
        with self._lock:
            self._add(spooled)
        return spooled

    def oldest(self) -> SpoolFile | None:
        with self._lock:
            return self._files[0] if self._files else None

    def read(self, spooled: SpoolFile) -> bytes:
        return spooled.path.read_bytes()

    def remove(self, spooled: SpoolFile) -> None:
        spooled.path.unlink(missing_ok=True)
        with self._lock:
            if spooled in self._files:
                self._files.remove(spooled)
                self._points -= spooled.points
                self._bytes -= spooled.size

    @property
    def points(self) -> int:
        return self._points

    @property
    def files(self) -> int:
        with self._lock:
            return len(self._files)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes
