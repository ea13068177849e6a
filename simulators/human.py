"""The human side, so the loop closes in simulation (domain.md §1.6, §1.7, §4.1).

- maintenance visits about every 15 days per unit; some firms are habitually late;
  during a visit an elevator is in inspection mode (检修) and a ``maintenance`` report
  with start/end tells the pipeline not to page for it;
- inspections on the due date (a few early), with overdue units (超期未检) left
  uninspected for a while; a small share fails;
- responders acting on alerts: ack, dispatch, accept, on site after a log-normal delay
  (median ≈13 min, σ≈0.45: a few per cent past 30 min), freed (the car's doors open),
  restored, closed; alarm-button alerts are often false alarms;
- hazard rectification reports some days after a hidden danger is opened, and the
  inspector's check a few days later (verified, or now and then reopened and done again);
- rare accidents, as reports.

Each message names who sends it (``Msg.sender``, sesmon.contract.identity): the unit's maintenance
firm (``firm-{firm_id}``) for maintenance, rectification and its own dispatch actions, the
96333 centre as ``operator``, the inspector (``inspector-1``) for inspections, accidents and
hazard checks. On a secure broker the publisher sends each under that account, on the
identity topics ``sesmon/v1/reports/{report}/{username}`` and
``sesmon/v1/dispatch/{alert_id}/{username}``.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from sesmon.contract.identity import INSPECTOR, OPERATOR, firm_username
from simulators.common import TOPIC_ROOT, Msg, lognormal_s, utc_date
from simulators.elevator import Elevator
from simulators.escalator import Escalator

if TYPE_CHECKING:
    from simulators.engine import FleetSim

DAY_MS = 86_400_000
ARRIVAL_MEDIAN_S = 13 * 60.0
ARRIVAL_SIGMA = 0.45
RESCUE_MEDIAN_S = 7 * 60.0
LATE_FIRM_SHARE = 0.2
ACCIDENT_RATE_PER_10K = {"elevator": 0.02, "boiler": 0.3}  # per year (domain.md §3.4)
CENTRE = "96333"  # the emergency centre's name in dispatch actions; it publishes as the operator
VERIFY_MEDIAN_S = 3 * 86_400.0  # inspector's re-check after a rectification
REOPEN_SHARE = 0.05  # re-checks that find the danger not removed


class Humans:
    """Schedules human actions on the engine's clock and emits reports and dispatch actions."""

    def __init__(self, sim: FleetSim, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.seen_alerts: set[str] = set()
        self.seen_hazards: set[str] = set()
        self.late_firms: set[str] = set()
        firms = sorted({u.firm_id for u in sim.units.values()})
        for firm in firms:
            if random.Random(f"{sim.seed}:firm:{firm}").random() < LATE_FIRM_SHARE:
                self.late_firms.add(firm)
        self.visits: dict[str, int] = {}

    # ------------------------------------------------------------------ output
    def report(self, t: int, report: str, body: dict[str, Any], sender: str) -> None:
        self.sim.add_message(Msg(t, f"{TOPIC_ROOT}/reports/{report}", body, False, "", "report", sender))

    def dispatch(self, t: int, alert_id: str, action: str, by: str) -> None:
        """``by`` is the centre (96333, the operator's account) or the unit's firm id."""
        body = {"alert_id": alert_id, "action": action, "by": by, "ts": t}
        sender = OPERATOR if by == CENTRE else firm_username(by)
        msg = Msg(t, f"{TOPIC_ROOT}/dispatch/{alert_id}", body, False, "", "dispatch", sender)
        self.sim.add_message(msg)

    # ------------------------------------------------------------------ schedules
    def start(self) -> None:
        sim, rng = self.sim, self.rng
        start_day = date.fromisoformat(utc_date(sim.start_ms))
        for dev_id in sim.elevator_ids + sim.boiler_ids:
            unit = sim.units[dev_id]
            interval = self._interval_days(unit.firm_id)
            first = sim.start_ms + int(rng.uniform(0, interval) * DAY_MS)
            self._schedule_visit(dev_id, first)
            due = unit.next_inspection_due
            if due is not None:
                if due >= start_day:
                    when_day = due - timedelta(days=rng.randint(0, 30))
                    when = sim.start_ms + max(0, (when_day - start_day).days) * DAY_MS
                    when += int(rng.uniform(1, 8) * 3_600_000)
                    self._schedule_inspection(dev_id, when)
                elif rng.random() < 0.6:  # overdue: some get inspected late, the rest stay overdue
                    self._schedule_inspection(dev_id, sim.start_ms + int(rng.uniform(10, 120) * DAY_MS))
        for kind, ids in (("elevator", sim.elevator_ids), ("boiler", sim.boiler_ids)):
            per_year = ACCIDENT_RATE_PER_10K[kind] * len(ids) / 10_000 * sim.o.fault_rate_multiplier
            if per_year > 0 and ids:
                self._schedule_accident(kind, ids, per_year, sim.start_ms)

    def _interval_days(self, firm_id: str) -> float:
        if firm_id in self.late_firms:
            return self.rng.uniform(15, 24)
        return self.rng.uniform(12, 15)

    def _schedule_visit(self, dev_id: str, t: int) -> None:
        self.sim.schedule(t, lambda tt: self._visit(tt, dev_id))

    def _visit(self, t: int, dev_id: str) -> None:
        sim = self.sim
        unit = sim.units[dev_id]
        n = self.visits[dev_id] = self.visits.get(dev_id, 0) + 1
        kind = (
            "annual"
            if n % 24 == 0
            else "semiannual"
            if n % 12 == 0
            else "quarterly"
            if n % 6 == 0
            else "routine_15d"
        )
        duration = int(self.rng.uniform(40, 100) * 60_000)
        if not sim.busy(dev_id):
            dev = sim.devices[dev_id]
            if isinstance(dev, Elevator | Escalator):
                dev.start_maintenance(t, t + duration)
                sim._wake(dev_id, t)
            self.report(
                t,
                "maintenance",
                {
                    "device_id": dev_id,
                    "ts": t,
                    "firm_id": unit.firm_id,
                    "kind": kind,
                    "start": t,
                    "end": t + duration,
                },
                firm_username(unit.firm_id),
            )
            sim.stats["maintenance"] += 1
        self._schedule_visit(dev_id, t + int(self._interval_days(unit.firm_id) * DAY_MS))

    def _schedule_inspection(self, dev_id: str, t: int) -> None:
        self.sim.schedule(t, lambda tt: self._inspect(tt, dev_id))

    def _inspect(self, t: int, dev_id: str) -> None:
        passed = self.rng.random() >= 0.04
        today = date.fromisoformat(utc_date(t))
        next_due = today + timedelta(days=365 if passed else 30)
        self.report(
            t,
            "inspection",
            {
                "device_id": dev_id,
                "ts": t,
                "result": "pass" if passed else "fail",
                "next_due": next_due.isoformat(),
            },
            INSPECTOR,
        )
        self.sim.stats["inspection"] += 1
        self._schedule_inspection(dev_id, t + (next_due - today).days * DAY_MS)

    def _schedule_accident(self, kind: str, ids: list[str], per_year: float, t: int) -> None:
        gap = int(self.rng.expovariate(per_year / (365 * 86_400)) * 1000)

        def fire(tt: int) -> None:
            dev_id = ids[self.rng.randrange(len(ids))]
            n = self.sim.stats["accident"] = self.sim.stats["accident"] + 1
            injuries = self.rng.choice((0, 1, 1, 2))
            self.report(
                tt,
                "accident",
                {
                    "report_id": f"ACC-{self.sim.seed}-{n}",
                    "device_id": dev_id,
                    "ts": tt,
                    "grade": "general",
                    "deaths": 1 if injuries == 0 else 0,
                    "serious_injuries": injuries,
                    "description": f"simulated {kind} accident",
                },
                INSPECTOR,  # an accident is reported by the inspectorate (sesmon.contract.identity)
            )
            self._schedule_accident(kind, ids, per_year, tt)

        self.sim.schedule(t + max(1, gap), fire)

    # ------------------------------------------------------------------ responders
    def on_alert(self, alert: dict[str, Any]) -> None:
        """Plan the responders' actions for a newly firing alert."""
        alert_id = alert.get("alert_id")
        if not isinstance(alert_id, str) or alert.get("state") != "firing" or alert_id in self.seen_alerts:
            return
        self.seen_alerts.add(alert_id)
        sim, rng = self.sim, self.rng
        device_id = str(alert.get("device_id", ""))
        unit = sim.units.get(device_id)
        firm = unit.firm_id if unit else "firm"
        rule = str(alert.get("rule", ""))
        level = str(alert.get("level", "P3"))
        t0 = sim.now
        sim.stats["alerts_seen"] += 1
        if level == "P3":  # yellow: a look within the day, then closed
            sim.schedule(
                t0 + int(rng.uniform(60, 600) * 1000), lambda t: self.dispatch(t, alert_id, "ack", firm)
            )
            sim.schedule(
                t0 + int(lognormal_s(rng, 4 * 3600, 0.7) * 1000),
                lambda t: self.dispatch(t, alert_id, "closed", firm),
            )
            return
        ack = t0 + int(lognormal_s(rng, 40, 0.6) * 1000)
        disp = ack + int(rng.uniform(20, 120) * 1000)
        accept = disp + int(lognormal_s(rng, 90, 0.6) * 1000)
        on_site = t0 + int(lognormal_s(rng, ARRIVAL_MEDIAN_S, ARRIVAL_SIGMA) * 1000)
        on_site = max(on_site, accept + 60_000)
        false_alarm = "alarm" in rule and rng.random() < 0.6
        sim.schedule(ack, lambda t: self.dispatch(t, alert_id, "ack", CENTRE if level == "P1" else firm))
        sim.schedule(disp, lambda t: self.dispatch(t, alert_id, "dispatched", CENTRE))
        sim.schedule(accept, lambda t: self.dispatch(t, alert_id, "accepted", firm))
        sim.schedule(on_site, lambda t: self.dispatch(t, alert_id, "on_site", firm))
        if false_alarm:  # false_alarm closes the incident: nothing may follow it (alerts/incidents.py)
            sim.schedule(on_site + 120_000, lambda t: self.dispatch(t, alert_id, "false_alarm", firm))
            return
        freed = on_site + int(lognormal_s(rng, RESCUE_MEDIAN_S, 0.5) * 1000)
        restored = freed + int(lognormal_s(rng, 1800, 0.6) * 1000)

        def do_freed(t: int) -> None:
            self.dispatch(t, alert_id, "freed", firm)
            if device_id in sim.devices:
                sim.release(device_id, t, "freed")

        sim.schedule(freed, do_freed)
        sim.schedule(restored, lambda t: self.dispatch(t, alert_id, "restored", firm))
        sim.schedule(
            restored + int(rng.uniform(300, 1200) * 1000),
            lambda t: self.dispatch(t, alert_id, "closed", CENTRE),
        )
        self.sim.stats["responses"] += 1

    def on_hazard(self, hazard: dict[str, Any]) -> None:
        """A hidden danger was opened: the firm reports it rectified some days later (or never),
        and the inspector checks the work a few days after that."""
        hazard_id = hazard.get("hazard_id")
        if not isinstance(hazard_id, str) or hazard_id in self.seen_hazards:
            return
        self.seen_hazards.add(hazard_id)
        if self.rng.random() < 0.1:
            return  # left open: the overdue/enforcement path
        device_id = str(hazard.get("device_id", ""))
        unit = self.sim.units.get(device_id)
        firm = unit.firm_id if unit else "firm"
        self._schedule_rectification(hazard_id, firm, self.sim.now)

    def _schedule_rectification(self, hazard_id: str, firm: str, after: int) -> None:
        when = after + int(lognormal_s(self.rng, 4 * 86_400, 0.8) * 1000)
        self.sim.schedule(when, lambda t: self._rectified(t, hazard_id, firm))

    def _rectified(self, t: int, hazard_id: str, firm: str) -> None:
        self._hazard_report(t, hazard_id, "rectified", firm, "simulated rectification", firm_username(firm))
        check = t + int(lognormal_s(self.rng, VERIFY_MEDIAN_S, 0.6) * 1000)
        self.sim.schedule(check, lambda tt: self._checked(tt, hazard_id, firm))

    def _checked(self, t: int, hazard_id: str, firm: str) -> None:
        if self.rng.random() < REOPEN_SHARE:
            self._hazard_report(t, hazard_id, "reopened", INSPECTOR, "not removed on re-check", INSPECTOR)
            self._schedule_rectification(hazard_id, firm, t)
        else:
            self._hazard_report(t, hazard_id, "verified", INSPECTOR, "simulated re-check", INSPECTOR)

    def _hazard_report(self, t: int, hazard_id: str, action: str, by: str, note: str, sender: str) -> None:
        body = {"hazard_id": hazard_id, "action": action, "by": by, "ts": t, "note": note}
        self.report(t, "hazard", body, sender)
        self.sim.stats[f"hazard_{action}"] += 1
