"""Date rules on event time: inspection due within 30 days / overdue, maintenance gap > 15 days,
and the hazards' deadlines. Run hourly (``calendar_every_s``) and on ticks; due dates are
Guangzhou calendar days (the registry's ``next_inspection_due``, or the last inspection report's)."""

from __future__ import annotations

from . import counting, lifecycle, unit_hazards
from .compiled import Compiled, UnitCtx
from .hazards import DAY_MS
from .outcome import Outcome
from .state import UnitState
from .suppression import blocked


def check(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    st.next_calendar = ts + cfg.calendar_every_ms
    due = st.inspection_due if st.inspection_due is not None else ctx.inspection_due_ms
    for rule in ctx.calendar:
        what = rule.extra.get("check")
        want_at: int | None = None
        if what == "inspection_overdue" and due is not None and ts >= due:
            want_at = due
        elif what == "inspection_due_soon" and due is not None:
            start = due - int(rule.extra.get("days", 30)) * DAY_MS
            if start <= ts < due:
                want_at = start
        elif what == "maintenance_gap":
            last = max(st.last_maintenance, st.first_ts)
            limit = last + int(rule.extra.get("days", 15)) * DAY_MS
            if last and ts > limit:
                want_at = limit
        a = st.alerts.get(rule.id)
        if want_at is not None and a is None:
            if not blocked(cfg, st, rule, ts, ctx, False):
                evidence = [{"ts": ts, "check": what, "since": want_at}]
                lifecycle.open_alert(cfg, st, rule, want_at, ts, ctx, out, evidence)
        elif want_at is None and a is not None:
            lifecycle.resolve(cfg, st, rule, ts, ctx, out, {"ts": ts, "check": what})
    if st.counts:
        counting.recount(cfg, st, ts, ctx, out)
    if st.hazards:
        unit_hazards.sweep(cfg, st, ts, out)
