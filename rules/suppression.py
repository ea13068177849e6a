"""Whether an alert may open now: inhibition by a more specific alert, and suppression.

Suppression reasons (catalogue ``suppress:``): ``maintenance`` (a maintenance report's window),
``inspection_mode`` / ``out_of_service`` (elevator service mode), ``not_in_use`` (registry
status, or a unit a hazard report stopped — 停用), ``offline`` (the deadman is open). A held-back
condition is retried on later readings and opens when the suppression ends if still true.
"""

from __future__ import annotations

from .catalogue import Rule
from .compiled import Compiled, UnitCtx
from .state import UnitState


def use_stopped(st: UnitState) -> bool:
    """停用: a hazard report took the unit out of use until it returns to service."""
    return any(h.get("use_stopped") for h in st.hazards.values())


def blocked(cfg: Compiled, st: UnitState, rule: Rule, ts: int, ctx: UnitCtx, via_event: bool) -> bool:
    """True while the rule's alert must not open (inhibited, or suppressed for this source)."""
    alerts = st.alerts
    for other in rule.inhibited_by:
        if other in alerts:
            return True
    sup = rule.suppress
    if not sup or (via_event and not rule.suppress_events):
        return False
    if "not_in_use" in sup and (not ctx.in_use or use_stopped(st)):
        return True
    if "maintenance" in sup and st.maint_start <= ts <= st.maint_end:
        return True
    # events are not buffered: they use the newest mode seen on arrival, not the evaluated one
    mode = st.mode if via_event and st.mode is not None else st.values.get("mode")
    if mode == "inspection" and "inspection_mode" in sup:
        return True
    if mode == "out_of_service" and "out_of_service" in sup:
        return True
    return "offline" in sup and cfg.deadman is not None and cfg.deadman.id in alerts
