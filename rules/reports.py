"""Human and system reports (``sesmon/v1/reports/*``): maintenance, inspection, accident, hazard.

A maintenance report opens a suppression window (4 h with no end) and rectifies a maintenance-
gap hazard; an inspection report sets the next due date, and a pass rectifies overdue/failed-
inspection hazards while a fail opens ``inspection_failed``; an accident report is recorded as
an alert; a hazard report drives the hidden-danger loop (``rules/hazards.py``).
"""

from __future__ import annotations

from typing import Any

from . import dates, lifecycle, unit_hazards
from .compiled import Compiled, UnitCtx, due_ms
from .outcome import Outcome
from .state import UnitState


def on_report(cfg: Compiled, st: UnitState, env: dict[str, Any], ctx: UnitCtx, out: Outcome) -> None:
    """A maintenance, inspection or accident report about this unit."""
    report = env.get("report")
    body = env["body"]
    ts = env["ts"]
    if not st.first_ts:
        st.first_ts = ts
    if report == "maintenance":
        start, end = body.get("start"), body.get("end")
        if start is not None:
            st.maint_start = start
            st.maint_end = end if end is not None else start + cfg.maintenance_default_ms
        st.last_maintenance = max(st.last_maintenance, end or start or ts)
        unit_hazards.auto_rectify(st, ("maintenance_gap",), ts, f"firm:{body.get('firm_id', '')}", out)
    elif report == "inspection":
        st.inspection_due = due_ms(body.get("next_due"), cfg.tz)
        if body.get("result") == "pass":
            unit_hazards.auto_rectify(st, ("overdue_inspection", "inspection_failed"), ts, "inspection", out)
            for rule in cfg.report_rules.get("inspection_failed", ()):
                if rule.id in st.alerts:
                    lifecycle.resolve(cfg, st, rule, ts, ctx, out, {"ts": ts, "result": "pass"})
        else:
            for rule in cfg.report_rules.get("inspection_failed", ()):
                if rule.kind in (st.kind, "any") and rule.id not in st.alerts:
                    evidence = {"ts": ts, **{k: body[k] for k in body if k != "device_id"}}
                    lifecycle.open_alert(cfg, st, rule, ts, ts, ctx, out, [evidence])
    elif report == "accident":
        for rule in cfg.report_rules.get("accident", ()):
            evidence = {k: body[k] for k in ("report_id", "grade", "deaths", "serious_injuries") if k in body}
            evidence["ts"] = ts
            alert_id = f"{st.device_id}.{rule.id}.{ts}"
            title = f"{rule.title} ({body.get('grade', '')})"
            out.alerts.append(
                lifecycle.alert_record(cfg, st, rule, alert_id, ts, ts, "firing", title, ctx, [evidence])
            )
    if ctx.unit is not None:
        dates.check(cfg, st, max(ts, st.max_ts), ctx, out)
