"""Alert lifecycle: one alert per condition, opened and resolved from its sources.

A state rule has two sources, a telemetry condition (``UnitState.conditions``) and a terminal
event (``UnitState.events``); :func:`reconcile` opens the alert when either wants it and
resolves it when neither does. ``alert_id = f"{device_id}.{rule}.{opened_ms}"`` with
``opened_ms`` the event time the condition began, so a replay yields the same ids.
Follow-up rules (trapped ≥ 2 h) measure how long another alert has been open.
"""

from __future__ import annotations

from typing import Any

from sesmon.contract.receivers import alert_receivers
from sesmon.contract.schemas import Alert, Receiver

from . import counting, flap, unit_hazards
from .catalogue import Rule
from .compiled import Compiled, UnitCtx
from .outcome import Outcome
from .state import AlertEntry, UnitState
from .suppression import blocked


def title_for(rule: Rule, values: dict[str, Any] | None) -> str:
    """The rule's title, or its variant for the reading (``door_zone=false: 非平层困人``)."""
    if rule.titles and values:
        for key, title in rule.titles.items():
            fname, _, want = key.partition("=")
            if str(values.get(fname)).lower() == want.lower():
                return title
    return rule.title


def receivers(cfg: Compiled, rule: Rule, ctx: UnitCtx, kind: str) -> list[Receiver]:
    """A boiler's alerts go to its own responders (user unit, firm); 96333 is for elevators."""
    return alert_receivers(
        kind,
        firm_id=ctx.firm_id,
        user_unit_id=ctx.user_unit_id,
        district=ctx.district,
        centre=rule.centre,
        regulator=rule.regulator,
        centre_id=cfg.centre_id,
    )


def alert_record(
    cfg: Compiled,
    st: UnitState,
    rule: Rule,
    alert_id: str,
    opened: int,
    changed: int,
    status: str,
    title: str,
    ctx: UnitCtx,
    evidence: list[dict[str, Any]],
) -> Alert:
    return Alert(
        alert_id=alert_id,
        rule=rule.id,
        rule_version=cfg.version,
        catalogue_sha=cfg.catalogue_sha,
        level=rule.level,  # type: ignore[arg-type]
        device_id=st.device_id,
        kind=st.kind,  # type: ignore[arg-type]
        district=ctx.district,
        firm_id=ctx.firm_id,
        user_unit_id=ctx.user_unit_id,
        opened_at=opened,
        changed_at=changed,
        state=status,  # type: ignore[arg-type]
        title=title,
        receivers=receivers(cfg, rule, ctx, st.kind),
        evidence=[e for e in evidence if e],
    )


def open_alert(
    cfg: Compiled,
    st: UnitState,
    rule: Rule,
    opened: int,
    changed: int,
    ctx: UnitCtx,
    out: Outcome,
    evidence: list[dict[str, Any]],
    title_from: dict[str, Any] | None = None,
) -> str:
    alert_id = f"{st.device_id}.{rule.id}.{opened}"
    title = title_for(rule, title_from)
    st.alerts[rule.id] = AlertEntry(alert_id, opened, title)
    flap.note_open(cfg, st, rule.id, opened)
    fallback = ctx.defaults[rule.index]
    if fallback:  # say which thresholds are catalogue defaults standing in for registry values
        evidence = [*evidence, {"registry_defaults": fallback}]
    out.alerts.append(alert_record(cfg, st, rule, alert_id, opened, changed, "firing", title, ctx, evidence))
    if rule.hazard is not None:
        unit_hazards.open_for_rule(cfg, st, rule, opened, ctx, out, alert_id)
    for count_rule in cfg.counters.get(rule.id, ()):
        counting.count(cfg, st, count_rule, opened, ctx, out)
    return alert_id


def resolve(
    cfg: Compiled, st: UnitState, rule: Rule, ts: int, ctx: UnitCtx, out: Outcome, evidence: Any = None
) -> None:
    a = st.alerts.pop(rule.id, None)
    if a is None:
        return
    st.resolved_at[rule.id] = ts
    out.alerts.append(
        alert_record(
            cfg,
            st,
            rule,
            a.alert_id,
            a.opened,
            max(ts, a.opened),
            "resolved",
            a.title,
            ctx,
            [evidence or {"ts": ts}],
        )
    )
    for follow in cfg.open_for.get(rule.id, ()):
        if follow.id in st.alerts and not any(src in st.alerts for src in follow.open_for):
            resolve(cfg, st, follow, ts, ctx, out, evidence)


def reconcile(
    cfg: Compiled,
    st: UnitState,
    rule: Rule,
    ts: int,
    ctx: UnitCtx,
    out: Outcome,
    evidence: dict[str, Any] | None = None,
    via_event: bool = False,
) -> None:
    """Bring the rule's alert in line with its sources (telemetry condition, event flag)."""
    rid = rule.id
    ent = st.conditions.get(rid)
    tele_on = ent is not None and ent.matured
    ev_at = st.events.get(rid)
    a = st.alerts.get(rid)
    if tele_on or ev_at is not None:
        if a is not None:
            a.clear_at = 0  # flapping back on during a deferred clear: stays open, no page
            return
        rz = st.resolved_at.get(rid)
        if not via_event and rz is not None and ts <= rz:
            # older buffered telemetry must not re-open what an event closed; a newer reading may
            st.held.setdefault(rid, ts)
            return
        if blocked(cfg, st, rule, ts, ctx, via_event and not tele_on):
            if rid not in st.held:
                st.held[rid] = ts  # counted once per held-back condition; retried on later readings
                out.suppressed += 1
            return
        st.held.pop(rid, None)
        starts = []
        if ent is not None and tele_on:
            starts.append(ent.since)
        if ev_at is not None:
            starts.append(ev_at)
        opened = min(starts)
        if rz is not None and opened <= rz:
            opened = rz + 1
        evs = [ent.evidence] if ent is not None and tele_on else []
        if evidence is not None and evidence not in evs:
            evs.append(evidence)
        open_alert(cfg, st, rule, opened, ts, ctx, out, evs, title_from=st.values)
    elif a is not None:
        if flap.defer_clear(cfg, st, rid, a, ts, evidence):
            return
        resolve(cfg, st, rule, ts, ctx, out, evidence)


def retry_held(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    """Conditions still true whose alert was held back (suppressed, inhibited, guarded)."""
    held = st.held
    for rid in list(held):
        ent = st.conditions.get(rid)
        tele_on = ent is not None and ent.matured
        rule = cfg.rules.get(rid)
        if rid in st.alerts or rule is None or not (tele_on or rid in st.events):
            held.pop(rid, None)
            continue
        reconcile(cfg, st, rule, ts, ctx, out, via_event=not tele_on)


def deferred_clears(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    for rid, at, evidence in flap.due_clears(cfg, st, ts):
        resolve(cfg, st, cfg.rules[rid], at, ctx, out, evidence)


def open_followups(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    """Rules on how long another alert has been open (trapped ≥ 2 h → general accident)."""
    if not cfg.open_for:
        return
    for rid, a in list(st.alerts.items()):
        for follow in cfg.open_for.get(rid, ()):
            limit = a.opened + ctx.for_ms[follow.index]
            if follow.id not in st.alerts and ts >= limit:
                open_alert(
                    cfg,
                    st,
                    follow,
                    limit,
                    limit,
                    ctx,
                    out,
                    [{"ts": limit, "open_since": a.opened, "of": a.alert_id}],
                )
