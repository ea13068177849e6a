"""What grows in a stage's memory: a diagnostics switch, off unless ``SESMON_TRACEMALLOC=1``.

Why: a stage whose RSS creeps up over minutes (issue 9's flat-memory criterion) gives no hint
of what holds the memory. With the switch on, the stage starts :mod:`tracemalloc` and a thread
logs, every ``SESMON_TRACEMALLOC_EVERY_S`` and on SIGUSR2:

- RSS, what Python's allocators hold (tracemalloc's traced total) and what glibc holds in its
  arenas but has free (``mallinfo2``): RSS growing while the traced total stays flat points
  outside the Python heap (RocksDB, librdkafka, fragmentation), not at a Python structure;
- the source lines whose allocations grew most since the first report (``compare_to``; with
  ``SESMON_TRACEMALLOC_FRAMES`` > 1 the traceback of the biggest), and since the last report;
- the gc-tracked object types whose counts grew most.

``SESMON_TRACEMALLOC_TRIM=1`` also calls ``malloc_trim(0)`` before each report and logs what it
gave back: memory glibc held free (fragmentation), not memory anything still uses.

tracemalloc costs CPU and ~40 bytes per live block: compare growths within one switched-on
run, not against runs without it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("sesmon.memory")

MIB = 1024 * 1024
#: allocations of the report itself, not of the stage
_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, __file__),
)


def rss_bytes() -> int:
    """Resident set size of this process (``VmRSS``), 0 where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # non-mmapped bytes taken from the OS
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # mmapped bytes
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # bytes free in the arenas (held, not returned)
            "keepcost",
        )
    ]


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC = _libc()


def glibc_heap() -> dict[str, int] | None:
    """glibc's own view of its heap (``mallinfo2``, glibc ≥ 2.33); None elsewhere."""
    func = getattr(_LIBC, "mallinfo2", None)
    if func is None:
        return None
    func.restype = _MallInfo2
    info = func()
    return {"arena": info.arena, "mmapped": info.hblkhd, "in_use": info.uordblks, "free": info.fordblks}


def malloc_trim() -> bool:
    """Give glibc's free arena memory back to the OS; False where there is no glibc."""
    func = getattr(_LIBC, "malloc_trim", None)
    if func is None:
        return False
    func.argtypes = [ctypes.c_size_t]
    func(0)
    return True


def type_counts() -> collections.Counter[str]:
    """gc-tracked objects by type name (containers and instances; not str, bytes or ints)."""
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def top_growth(
    new: tracemalloc.Snapshot, old: tracemalloc.Snapshot, key: str = "lineno", limit: int = 15
) -> list[tracemalloc.StatisticDiff]:
    """The allocation sites whose size grew most from ``old`` to ``new`` (largest first)."""
    diffs = new.compare_to(old, key)
    return [d for d in diffs if d.size_diff > 0][:limit]


def _short(filename: str) -> str:
    """A file name without the site-packages or checkout prefix: lines stay readable."""
    for marker in ("site-packages/", "lib/python3."):
        if marker in filename:
            return filename.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(filename).relative_to(Path.cwd()))
    return filename


def _site(stat: tracemalloc.Statistic | tracemalloc.StatisticDiff) -> str:
    frame = stat.traceback[0]
    return f"{_short(frame.filename)}:{frame.lineno}"


@dataclass
class _Point:
    at: float
    rss: int
    traced: int
    snapshot: tracemalloc.Snapshot
    types: collections.Counter[str]


class MemoryReport:
    """tracemalloc on, and a thread that logs what grew (see the module doc)."""

    def __init__(
        self, stage: str, every_s: float = 60.0, frames: int = 1, trim: bool = False, limit: int = 15
    ) -> None:
        self.stage = stage
        self.every_s = every_s
        self.frames = max(1, frames)
        self.trim = trim
        self.limit = limit
        self.reports = 0
        self._first: _Point | None = None
        self._last: _Point | None = None
        self._requested = False  # set by SIGUSR2: a plain attribute (sesmon.runtime.signals)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-report", daemon=True)

    def start(self) -> MemoryReport:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGUSR2, self._on_signal)
        self._thread.start()
        log.warning(
            "%s: tracemalloc on (%d frame(s)); memory report every %.0f s and on SIGUSR2 (pid %s)",
            self.stage,
            self.frames,
            self.every_s,
            os.getpid(),
        )
        return self

    def stop(self) -> None:
        self._stop.set()

    def request(self) -> None:
        """Report at once (from a signal handler or an event loop's signal callback)."""
        self._requested = True

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.request()

    def _run(self) -> None:
        next_at = time.monotonic() + self.every_s
        while not self._stop.wait(0.5):
            if self._requested or time.monotonic() >= next_at:
                self._requested = False
                next_at = time.monotonic() + self.every_s
                try:
                    self.report()
                except Exception:  # a diagnostic must never take the stage down
                    log.exception("memory report failed")

    def report(self) -> str:
        """Take a snapshot, log what grew, and return the text logged."""
        trimmed = ""
        if self.trim:
            before = rss_bytes()
            if malloc_trim():
                trimmed = f", malloc_trim gave back {(before - rss_bytes()) / MIB:.1f} MB"
        snapshot = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        traced, peak = tracemalloc.get_traced_memory()
        point = _Point(time.monotonic(), rss_bytes(), traced, snapshot, type_counts())
        first, last = self._first or point, self._last or point
        self.reports += 1
        lines = [
            f"memory report #{self.reports} of {self.stage} after {point.at - first.at:.0f} s: "
            f"RSS {point.rss / MIB:.1f} MB ({(point.rss - first.rss) / MIB:+.1f} since the first report, "
            f"{(point.rss - last.rss) / MIB:+.1f} since the last); Python traced {traced / MIB:.1f} MB "
            f"({(traced - first.traced) / MIB:+.1f}, {(traced - last.traced) / MIB:+.1f}; peak "
            f"{peak / MIB:.1f}); tracemalloc itself {tracemalloc.get_tracemalloc_memory() / MIB:.1f} MB"
            + trimmed
        ]
        heap = glibc_heap()
        if heap is not None:
            lines.append(
                "  glibc heap: arena {arena:.1f} MB, mmapped {mmapped:.1f} MB, in use {in_use:.1f} MB, "
                "free in arenas {free:.1f} MB".format(**{k: v / MIB for k, v in heap.items()})
            )
        key = "traceback" if self.frames > 1 else "lineno"
        for title, old in (("since the first report", first), ("since the last report", last)):
            if old is point:
                continue
            growth = top_growth(snapshot, old.snapshot, key, self.limit)
            lines.append(f"  top growth {title}:")
            lines += [
                f"    {d.size_diff / 1024:+10.1f} KiB {d.count_diff:+8d} blocks  now {d.size / 1024:9.1f} KiB"
                f"  {_site(d)}"
                for d in growth
            ]
            if key == "traceback" and growth:
                lines.append("    traceback of the largest:")
                lines += [f"      {line}" for line in growth[0].traceback.format()]
        if last is not point:
            types = (point.types - first.types).most_common(self.limit)
            lines.append(
                "  gc-tracked object types grown since the first report: "
                + ", ".join(f"{name} +{n:,} (now {point.types[name]:,})" for name, n in types)
                if types
                else "  no gc-tracked object type grew since the first report"
            )
        else:
            lines.append(
                "  largest now: "
                + "; ".join(
                    f"{s.size / MIB:.1f} MB {_site(s)}"
                    for s in snapshot.statistics("lineno")[: self.limit // 2]
                )
            )
        if self._first is None:
            self._first = point
        self._last = point
        text = "\n".join(lines)
        log.warning("%s", text)
        return text


def start_memory_report(stage: str, settings: Any) -> MemoryReport | None:
    """The one line a stage calls at start: a running report when ``SESMON_TRACEMALLOC`` is on."""
    if not getattr(settings, "tracemalloc", False):
        return None
    return MemoryReport(
        stage,
        every_s=settings.tracemalloc_every_s,
        frames=settings.tracemalloc_frames,
        trim=settings.tracemalloc_trim,
    ).start()
