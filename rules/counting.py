"""Count-in-window rules: ≥ n openings of the counted rules within the window (3 trapped in 30 d)."""

from __future__ import annotations

from . import lifecycle
from .catalogue import Rule
from .compiled import Compiled, UnitCtx
from .outcome import Outcome
from .state import UnitState


def count(cfg: Compiled, st: UnitState, rule: Rule, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    """One more opening of a counted rule at ``ts``."""
    times = st.counts.setdefault(rule.id, [])
    times.append(ts)
    times[:] = [x for x in times if x > ts - rule.window_ms]
    if len(times) >= rule.count_n and rule.id not in st.alerts:
        evidence = [{"ts": ts, "count": len(times), "window_s": rule.window_ms // 1000}]
        lifecycle.open_alert(cfg, st, rule, ts, ts, ctx, out, evidence)


def recount(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    """Drop openings that left their window; resolve a count alert that fell below n."""
    for rid, times in list(st.counts.items()):
        rule = cfg.rules.get(rid)
        if rule is None:
            continue
        times[:] = [x for x in times if x > ts - rule.window_ms]
        if len(times) < rule.count_n and rid in st.alerts:
            lifecycle.resolve(cfg, st, rule, ts, ctx, out, {"ts": ts, "count": len(times)})
        if not times:
            del st.counts[rid]
