"""Flap damping: a rule that opened ``max_opens`` times within ``window_s`` resolves only after
staying clear for ``hold_s``; meanwhile it stays open and pages nobody again."""

from __future__ import annotations

from typing import Any

from .compiled import Compiled
from .state import AlertEntry, UnitState


def note_open(cfg: Compiled, st: UnitState, rule_id: str, opened: int) -> None:
    times = st.open_times.setdefault(rule_id, [])
    times.append(opened)
    if len(times) > cfg.flap_opens:
        del times[0]


def defer_clear(
    cfg: Compiled, st: UnitState, rule_id: str, alert: AlertEntry, ts: int, evidence: Any
) -> bool:
    """If the rule is flapping, start (or keep) a deferred clear instead of resolving now."""
    times = st.open_times.get(rule_id)
    n = cfg.flap_opens
    if times and len(times) >= n and times[-1] - times[-n] <= cfg.flap_window_ms:
        if not alert.clear_at:
            alert.clear_at = ts
            alert.clear_evidence = evidence
        return True
    return False


def due_clears(cfg: Compiled, st: UnitState, ts: int) -> list[tuple[str, int, Any]]:
    """Deferred clears whose hold time has passed at ``ts``: (rule id, resolve ts, evidence)."""
    hold = cfg.flap_hold_ms
    return [
        (rid, a.clear_at + hold, a.clear_evidence)
        for rid, a in st.alerts.items()
        if a.clear_at and ts - a.clear_at >= hold
    ]
