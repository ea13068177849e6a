"""Terminal events: an already-debounced fact from the terminal, evaluated at once (not buffered).

An ``occur`` raises the same alert as the rule's telemetry condition (one alert when both paths
fire); ``recover`` ends the event source. Events the terminal never recovers end when telemetry
shows the condition over (``clear_when``) or after ``event_auto_resolve_s``.
"""

from __future__ import annotations

from typing import Any

from . import lifecycle
from .compiled import Compiled, UnitCtx
from .outcome import Outcome
from .state import UnitState


def on_event(cfg: Compiled, st: UnitState, env: dict[str, Any], ctx: UnitCtx, out: Outcome) -> None:
    body = env["body"]
    rules = ctx.events.get(body.get("code", ""))
    if not rules:
        return
    ts = env["ts"]
    evidence: dict[str, Any] = {
        "ts": ts,
        "seq": env.get("seq"),
        "code": body["code"],
        "state": body.get("state"),
    }
    detail = body.get("detail") or {}
    if detail:
        evidence["detail"] = detail
    events = st.events
    occur = body.get("state") == "occur"
    for rule in rules:
        rid = rule.id
        if occur:
            want = rule.event_detail.get(body["code"])
            if want and any(detail.get(k) != v for k, v in want.items()):
                continue
            if rid in events:
                continue
            events[rid] = ts
            lifecycle.reconcile(cfg, st, rule, ts, ctx, out, evidence, via_event=True)
        elif rid in events:
            del events[rid]
            lifecycle.reconcile(cfg, st, rule, ts, ctx, out, evidence)


def expire_events(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    """End event sources older than their rule's ``event_auto_resolve_s``."""
    for rid, at in list(st.events.items()):
        rule = cfg.rules.get(rid)
        if rule is not None and rule.event_auto_resolve_ms and ts - at >= rule.event_auto_resolve_ms:
            del st.events[rid]
            end = at + rule.event_auto_resolve_ms
            evidence = {"ts": end, "auto_resolved_after_s": end // 1000 - at // 1000}
            lifecycle.reconcile(cfg, st, rule, end, ctx, out, evidence)
