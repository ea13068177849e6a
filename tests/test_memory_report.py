"""The diagnostics switch: off by default; on, a report names the line whose allocations grew."""

from __future__ import annotations

import tracemalloc

from sesmon.runtime.memory_report import MemoryReport, start_memory_report
from sesmon.runtime.settings import Settings


def test_off_unless_switched_on() -> None:
    assert start_memory_report("ingest", Settings()) is None
    assert not tracemalloc.is_tracing()


def test_a_report_names_what_grew_and_the_heap_totals() -> None:
    report = MemoryReport("test", every_s=3600)
    tracemalloc.start()
    try:
        first = report.report()
        grown = [bytearray(1000) for _ in range(2000)]  # ≈2 MB on this line
        second = report.report()
    finally:
        tracemalloc.stop()
    assert "memory report #1 of test" in first and "RSS" in first
    assert "memory report #2 of test" in second and "Python traced" in second
    top = second.split("top growth since the first report:\n", 1)[1].splitlines()[0]
    assert "test_memory_report.py" in top and "KiB" in top, second
    assert len(grown) == 2000
