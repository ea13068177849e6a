"""Telemetry conditions: one released reading through every telemetry rule of the unit's kind.

Durations use sample-and-hold (terminals publish on change): true at ``since`` and still true at
the next reading means true in between, so the condition matures at ``since + wait``. A silence
longer than the deadman timeout breaks the hold. ``confirm_readings`` rules must be *seen* N
times, never by hold. ``for_s_cases`` pick the duration from the reading the condition began
with (trapped: 20 s between floors, 40 s at a landing). ``clear_after`` is a clear that must hold
(no presence for 10 minutes, not one reading). The hot path: most readings hit no rule and the
unit has nothing pending, and they leave after one generated batch call.
"""

from __future__ import annotations

from typing import Any

from . import lifecycle
from .catalogue import Rule
from .compiled import Compiled, UnitCtx
from .derived import derive
from .outcome import Outcome
from .state import CondEntry, UnitState
from .terminal import expire_events


def evidence_of(rule: Rule, v: dict[str, Any]) -> dict[str, Any]:
    ev = {"ts": v["ts"], "seq": v["seq"]}
    for f in rule.fields:
        if f in v:
            ev[f] = v[f]
    return ev


def evaluate(
    cfg: Compiled, st: UnitState, ts: int, seq: int, body: dict[str, Any], ctx: UnitCtx, out: Outcome
) -> None:
    """Run every telemetry rule of the unit's kind over one released reading."""
    out.evaluated += 1
    v = st.values
    last_ts = v.get("ts", 0)
    variant = ctx.variant
    prev = variant.prev_of(v) if variant.prev else v
    v.update(body)
    v["ts"] = ts
    v["seq"] = seq
    for d in variant.derived:
        derive(st, d, v, body, ts)
    hits = variant.batch(v, prev, ctx.T)
    c = st.conditions
    if not (hits or c or st.events or st.held or st.alerts):
        return  # the common case: nothing holds, nothing pending, nothing open
    vrules = ctx.vrules
    pos_of = variant.pos
    existing: tuple[str, ...] | list[str] = ()
    if c:
        hold_ok = last_ts and ts - last_ts <= cfg.timeout_ms
        existing = list(c)
        for rid in existing:
            pos = pos_of.get(rid)
            if pos is None:
                continue
            rule, _, fms, t = vrules[pos]
            ent = c[rid]
            if not ent.matured:
                wait = fms if ent.wait_ms is None else ent.wait_ms
                if rule.confirm > 1:
                    # confirmed rules never mature by hold: a later reading must still show it
                    if pos not in hits:
                        del c[rid]
                        continue
                    if ts > ent.last_seen:
                        ent.seen += 1
                        ent.last_seen = ts
                    if ts - ent.since >= wait and ent.seen >= rule.confirm:
                        ent.matured = True
                        lifecycle.reconcile(cfg, st, rule, ts, ctx, out)
                    continue
                if hold_ok and ts - ent.since >= wait:
                    # held true since `since` until now: matured at since + wait
                    ent.matured = True
                    lifecycle.reconcile(cfg, st, rule, ent.since + wait, ctx, out)
                elif pos not in hits:
                    del c[rid]
                    continue
                else:
                    if not hold_ok:
                        ent.since = ts  # after a gap the held value is unknown: restart the clock
                    continue
            clear = rule.clear(v, prev, t) if rule.clear is not None else pos not in hits
            if clear:
                del c[rid]
                e = st.events
                if rid in e and ts > e[rid]:
                    del e[rid]  # telemetry shows it over (e.g. door opened): the event is too
                lifecycle.reconcile(cfg, st, rule, ts, ctx, out, evidence_of(rule, v))
    for pos in hits:
        rule, rid, fms, t = vrules[pos]
        if rid in c or rid in existing:
            continue
        for case, case_ms in rule.for_cases:
            if case(v, prev, t):
                fms = case_ms
                break
        if fms <= 0 and rule.confirm <= 1:
            c[rid] = CondEntry(ts, True, evidence_of(rule, v))
            lifecycle.reconcile(cfg, st, rule, ts, ctx, out)
        else:
            c[rid] = CondEntry(ts, False, evidence_of(rule, v), 1, ts, fms)
    e = st.events
    if e:
        for rid in list(e):
            pos = pos_of.get(rid)
            if pos is None or rid in c:
                continue
            rule, _, _, t = vrules[pos]
            if rule.clear is not None and ts > e[rid] and pos not in hits and rule.clear(v, prev, t):
                del e[rid]
                lifecycle.reconcile(cfg, st, rule, ts, ctx, out, evidence_of(rule, v))
        if e:
            expire_events(cfg, st, ts, ctx, out)
    if st.held:
        lifecycle.retry_held(cfg, st, ts, ctx, out)
    if st.alerts:
        if cfg.clear_after:
            sustained_clears(cfg, st, ts, v, prev, ctx, out)
        lifecycle.deferred_clears(cfg, st, ts, ctx, out)


def sustained_clears(
    cfg: Compiled, st: UnitState, ts: int, v: dict[str, Any], prev: dict[str, Any], ctx: UnitCtx, out: Outcome
) -> None:
    """``clear_after``: a clear that must hold a while (no presence seen for 10 min, not once)."""
    since_of = st.clear_since
    for rule in cfg.clear_after:
        rid = rule.id
        if rid not in st.alerts:
            since_of.pop(rid, None)
            continue
        assert rule.clear_after is not None
        if rule.clear_after(v, prev, ctx.params[rule.index]):
            since = since_of.setdefault(rid, ts)
            if ts - since >= rule.clear_after_ms:
                end_sustained(cfg, st, rule, since + rule.clear_after_ms, ctx, out)
        else:
            since_of.pop(rid, None)


def end_sustained(cfg: Compiled, st: UnitState, rule: Rule, end: int, ctx: UnitCtx, out: Outcome) -> None:
    st.clear_since.pop(rule.id, None)
    st.conditions.pop(rule.id, None)
    if rule.id in st.events and end > st.events[rule.id]:
        del st.events[rule.id]
    lifecycle.reconcile(
        cfg, st, rule, end, ctx, out, {"ts": end, "cleared_after_s": rule.clear_after_ms // 1000}
    )


def mature_pending(cfg: Compiled, st: UnitState, upto: int, ctx: UnitCtx, out: Outcome) -> None:
    """Processing-time guard for durations: a pending condition (or sustained clear) whose time has come."""
    for rid, ent in list(st.conditions.items()):
        rule = cfg.rules.get(rid)
        if rule is None or ent.matured or rule.confirm > 1:
            continue
        wait = ctx.for_ms[rule.index] if ent.wait_ms is None else ent.wait_ms
        due = ent.since + wait
        if due <= upto and due - st.watermark_ts <= cfg.timeout_ms:
            ent.matured = True
            lifecycle.reconcile(cfg, st, rule, due, ctx, out)
    for rid, since in list(st.clear_since.items()):
        rule = cfg.rules[rid]
        end = since + rule.clear_after_ms
        if end <= upto and end - st.watermark_ts <= cfg.timeout_ms:
            end_sustained(cfg, st, rule, end, ctx, out)
