"""What a replay writes: canonical JSON lines and the replay_* InfluxDB points.

Canonical means byte-identical for the same input: keys sorted (orjson ``OPT_SORT_KEYS``), no
time of the run in any line, items in the order the replay decided them. Only what falls in the
window is written (the warm-up builds state, it is not evidence).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from influxdb_client import Point, WritePrecision

from .engine import ReplayResult

ALERTS_FILE, HAZARDS_FILE, TIMELINE_FILE = "alerts.jsonl", "hazards.jsonl", "timeline.jsonl"


def canonical_line(item: Mapping[str, Any]) -> bytes:
    """One JSON line with sorted keys: the same item always gives the same bytes."""
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS) + b"\n"


def canonical_lines(items: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(canonical_line(item) for item in items)


def write_atomically(path: Path, data: bytes) -> None:
    """Write-to-temp and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
        out.write(data)
    os.chmod(out.name, 0o644)  # NamedTemporaryFile makes it 0600: an inspector's colleague reads it too
    os.replace(out.name, path)


def in_window(
    result: ReplayResult,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(alert pages, hazard changes, timeline entries) of the window, in decision order."""
    start, end = result.window.start_ms, result.end_ms
    pages = [p for p in result.pages if start <= _page_at(p) <= end]
    hazards = [h for h in result.hazards if start <= int(h.get("updated_at") or 0) <= end]
    timeline = [t for t in result.timeline if start <= t["at"] <= end]
    return pages, hazards, timeline


def _page_at(page: Mapping[str, Any]) -> int:
    """A page's change time: its last timeline entry (the change it reports)."""
    timeline = page.get("timeline") or []
    return int(timeline[-1]["at"]) if timeline else int(page.get("changed_at") or 0)


def write_jsonl(result: ReplayResult, out_dir: Path) -> dict[str, int]:
    """``alerts.jsonl``, ``hazards.jsonl``, ``timeline.jsonl`` under ``out_dir``; returns line counts."""
    pages, hazards, timeline = in_window(result)
    for name, items in ((ALERTS_FILE, pages), (HAZARDS_FILE, hazards), (TIMELINE_FILE, timeline)):
        write_atomically(out_dir / name, canonical_lines(items))
    return {ALERTS_FILE: len(pages), HAZARDS_FILE: len(hazards), TIMELINE_FILE: len(timeline)}


# --------------------------------------------------------------------------- InfluxDB


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


class _Instants:
    """Distinct millisecond times per measurement: InfluxDB keeps one point per series and time, and
    a page and a dispatch step often share their millisecond. A repeat moves to the next free
    millisecond (the store's wires write with ms precision); the JSONL files keep the exact times."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def __call__(self, at_ms: int) -> int:
        while at_ms in self.used:
            at_ms += 1
        self.used.add(at_ms)
        return at_ms


def replay_points(result: ReplayResult, run: str) -> Iterator[Point]:
    """The replay board's points (grafana/): replay_signal, replay_alert, replay_timeline, tag ``run``."""
    start, end = result.window.start_ms, result.end_ms
    for device_id, samples in result.signals.items():
        for ts, body in samples:
            if not start <= ts <= end:
                continue
            for name, value in body.items():
                number = _number(value)
                if number is None or name in ("ts", "seq"):
                    continue
                yield (
                    Point("replay_signal")
                    .tag("run", run)
                    .tag("device_id", device_id)
                    .tag("signal", name)
                    .field("value", number)
                    .time(ts, WritePrecision.MS)
                )
    pages, _hazards, timeline = in_window(result)
    instant = _Instants()
    for page in pages:
        yield (
            Point("replay_alert")
            .tag("run", run)
            .tag("rule", str(page.get("rule", "")))
            .tag("level", str(page.get("level", "")))
            .tag("state", str(page.get("state", "")))
            .field("alert_id", str(page.get("alert_id", "")))
            .field("escalation", int(page.get("escalation") or 0))
            .time(instant(_page_at(page)), WritePrecision.MS)
        )
    instant = _Instants()
    for entry in timeline:
        yield (
            Point("replay_timeline")
            .tag("run", run)
            .tag("what", entry["what"])
            .tag("by", str(entry.get("by", "")) or "-")
            .field("alert_id", str(entry.get("alert_id", "")))
            .time(instant(entry["at"]), WritePrecision.MS)
        )


def write_influx(result: ReplayResult, run: str, writer: Any, batch: int = 5000) -> int:
    """Write the points through a store wire (``store.wire.InfluxWriter``); returns points written."""
    lines: list[str] = []
    written = 0
    for point in replay_points(result, run):
        lines.append(point.to_line_protocol())
        if len(lines) >= batch:
            writer.write(("\n".join(lines) + "\n").encode())
            written += len(lines)
            lines.clear()
    if lines:
        writer.write(("\n".join(lines) + "\n").encode())
        written += len(lines)
    return written


__all__ = [
    "ALERTS_FILE",
    "HAZARDS_FILE",
    "TIMELINE_FILE",
    "canonical_line",
    "canonical_lines",
    "in_window",
    "replay_points",
    "write_influx",
    "write_jsonl",
]
