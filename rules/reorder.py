"""The per-unit reorder buffer: telemetry is evaluated in device-time order.

Readings are kept sorted by (ts, seq). One is released at once when every message before it
has been seen: each device numbers its messages (``seq``, across telemetry, events and status),
and :func:`note_seq` keeps the lowest seq not seen yet, so a reading that arrives in sequence is
evaluated on arrival. Only a gap in ``seq`` makes the buffer wait, and then at most until the
unit's newest ts is ``lateness_s`` past the reading, so arrival order within the bound never
changes the result. A reading older than the last released one cannot be evaluated in order:
it is counted and handed back in ``Outcome.late`` for the worker to record, never silently
dropped. Duplicates (same ts and
seq) are counted and skipped.
"""

from __future__ import annotations

import bisect
from typing import Any

from .compiled import Compiled, UnitCtx
from .conditions import evaluate
from .outcome import Outcome
from .state import UnitState

#: seqs remembered beyond a gap; past this the oldest gap is given up (its message counts as lost)
SEQ_AHEAD_MAX = 64


def note_seq(st: UnitState, seq: int, ts: int) -> None:
    """Advance the unit's gap-free mark (``seq_next``) with one message's ``seq``.

    Until a reading has been released by the lateness bound the mark is unknown (0): the first
    message seen need not be the first sent, so a new unit waits out the bound once. Called
    before ``max_ts`` moves: a seq well below the mark on a message newer than anything seen is
    a device that restarted its count, and the mark is unknown again.
    """
    n = st.seq_next
    if n and seq < n - 1 and ts > st.max_ts:
        st.seq_next = n = 0
        st.seq_ahead = []
    if n and seq == n:
        _advance(st, n + 1)
    elif seq >= n:
        ahead = st.seq_ahead
        i = bisect.bisect_left(ahead, seq)
        if i == len(ahead) or ahead[i] != seq:
            ahead.insert(i, seq)
            if len(ahead) > SEQ_AHEAD_MAX:
                _advance(st, ahead[0])


def skip_gap(st: UnitState, seq: int) -> None:
    """A reading released by the lateness bound past a gap: whatever was missing is late now."""
    if seq >= st.seq_next:
        _advance(st, seq + 1)


def _advance(st: UnitState, n: int) -> None:
    ahead = st.seq_ahead
    while ahead and ahead[0] <= n:
        if ahead.pop(0) == n:
            n += 1
    st.seq_next = n


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
    """Evaluate, in order, every buffered reading at or before ``limit`` or in sequence."""
    buf = st.reorder
    while buf and (buf[0][0] <= limit or buf[0][1] < st.seq_next):
        ts, seq, body = buf.pop(0)
        if seq >= st.seq_next:
            skip_gap(st, seq)
        st.watermark_ts = ts
        st.watermark_seq = seq
        evaluate(cfg, st, ts, seq, body, ctx, out)
