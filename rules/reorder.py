"""The per-unit reorder buffer: telemetry is evaluated in device-time order.

Readings are kept sorted by (ts, seq); one is released once the unit's newest ts is
``lateness_s`` past it, so arrival order within the bound never changes the result. A reading
older than the last released one cannot be evaluated in order: it is counted and handed back
in ``Outcome.late`` for the worker to record, never silently dropped. Duplicates (same ts and
seq) are counted and skipped.
"""

from __future__ import annotations

from typing import Any

from .compiled import Compiled, UnitCtx
from .conditions import evaluate
from .outcome import Outcome
from .state import UnitState


def note_mode(st: UnitState, ts: int, mode: str) -> None:
    """Newest service mode on arrival (events are not buffered and need it)."""
    if st.mode is None or ts >= st.mode_ts:
        st.mode_ts = ts
        st.mode = mode


def accept(st: UnitState, env: dict[str, Any], out: Outcome) -> None:
    """Put one telemetry reading into the buffer, in order (or count it late or duplicate)."""
    ts = env["ts"]
    seq = env.get("seq") or 0
    buf = st.reorder
    if (not buf or ts > buf[-1][0]) and ts > st.watermark_ts:  # in order, newer than anything seen
        body = env["body"]
        buf.append((ts, seq, body))
        mode = body.get("mode")
        if mode is not None:
            note_mode(st, ts, mode)
        return
    wm = st.watermark_ts
    if ts < wm or (ts == wm and seq <= st.watermark_seq):
        if ts == wm and seq == st.watermark_seq:
            out.duplicates += 1
            return
        st.late_count += 1
        out.late_dropped += 1
        out.late.append({"device_id": st.device_id, "ts": ts, "seq": seq, "watermark": wm})
        return
    body = env["body"]
    mode = body.get("mode")
    if mode is not None:
        note_mode(st, ts, mode)
    item = (ts, seq, body)
    if not buf or ts > buf[-1][0] or (ts == buf[-1][0] and seq > buf[-1][1]):
        buf.append(item)
        return
    for i, (other_ts, other_seq, _) in enumerate(buf):
        if other_ts == ts and other_seq == seq:
            out.duplicates += 1
            return
        if other_ts > ts or (other_ts == ts and other_seq > seq):
            buf.insert(i, item)
            return
    buf.append(item)


def release(cfg: Compiled, st: UnitState, limit: int, ctx: UnitCtx, out: Outcome) -> None:
    """Evaluate, in order, every buffered reading at or before ``limit``."""
    buf = st.reorder
    while buf and buf[0][0] <= limit:
        ts, seq, body = buf.pop(0)
        st.watermark_ts = ts
        st.watermark_seq = seq
        evaluate(cfg, st, ts, seq, body, ctx, out)
