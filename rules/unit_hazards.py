"""The hidden dangers a unit's state holds: opened by rules, rectified by reports, kept 90 days.

One open hazard per unit and source: a repeat raises ``occurrences`` on it. The record itself
and its loop (who may do what) are in ``rules/hazards.py``.
"""

from __future__ import annotations

from typing import Any

from .catalogue import Rule
from .compiled import Compiled, UnitCtx
from .hazards import FINAL, Hazard, mark_overdue, new_hazard, transition
from .outcome import Outcome
from .state import UnitState


def open_hazard(
    cfg: Compiled,
    st: UnitState,
    source: str,
    grade: str,
    ts: int,
    deadline_days: int,
    title: str,
    rule_id: str,
    ctx: UnitCtx,
    out: Outcome,
    alert_id: str = "",
) -> None:
    """Open a hazard, or count another occurrence on the unit's open one from the same source."""
    for hz in st.hazards.values():
        if hz["source"] == source and hz["status"] not in FINAL:
            hz["occurrences"] += 1
            hz["updated_at"] = max(hz["updated_at"], ts)
            out.hazards.append(Hazard(**hz))
            return
    hz = new_hazard(
        device_id=st.device_id,
        source=source,
        grade=grade,
        opened_ms=ts,
        deadline_days=deadline_days,
        title=title,
        rule=rule_id,
        rule_version=cfg.version,
        catalogue_sha=cfg.catalogue_sha,
        unit=ctx.unit,
        kind=st.kind,
        alert_id=alert_id,
        supervision_at_grading=cfg.supervision_at_grading,
    )
    st.hazards[hz["hazard_id"]] = hz
    out.hazards.append(Hazard(**hz))


def open_for_rule(
    cfg: Compiled, st: UnitState, rule: Rule, ts: int, ctx: UnitCtx, out: Outcome, alert_id: str = ""
) -> None:
    spec = rule.hazard
    assert spec is not None
    open_hazard(
        cfg, st, spec.source, spec.grade, ts, spec.deadline_days, spec.title, rule.id, ctx, out, alert_id
    )


def auto_rectify(st: UnitState, sources: tuple[str, ...], ts: int, by: str, out: Outcome) -> None:
    """A report that removes the cause (inspection passed, maintenance done) rectifies the hazard."""
    for hid, hz in list(st.hazards.items()):
        if hz["source"] in sources and hz["status"] == "reported":
            t = transition(hz, {"action": "rectified", "by": by, "ts": ts, "note": "auto"}, system=True)
            if t.changed:
                st.hazards[hid] = t.hazard
                out.hazards.append(Hazard(**t.hazard))


def apply_report(cfg: Compiled, st: UnitState, env: dict[str, Any], out: Outcome) -> None:
    """A ``reports/hazard`` message: the role is the envelope's verified publisher, else ``by``."""
    body = env["body"]
    hid = body.get("hazard_id")
    hz = st.hazards.get(hid)
    if hz is None:
        out.rejected.append(f"unknown hazard {hid}")
        return
    t = transition(
        hz, body, publisher=env.get("publisher"), supervision_at_grading=cfg.supervision_at_grading
    )
    if t.changed:
        st.hazards[hid] = t.hazard
        out.hazards.append(Hazard(**t.hazard))
    else:
        out.rejected.append(f"{body.get('action')} on {hid} ({hz['status']}): {t.refusal}")


def sweep(cfg: Compiled, st: UnitState, ts: int, out: Outcome) -> None:
    """Flag hazards past their deadline; forget closed ones after the retention period."""
    for hid, hz in list(st.hazards.items()):
        if mark_overdue(hz, ts):
            out.hazards.append(Hazard(**hz))
        if hz["status"] in FINAL and (hz["closed_at"] or 0) < ts - cfg.hazard_retention_ms:
            del st.hazards[hid]
