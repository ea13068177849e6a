"""The terminal board: what an operator sees where no Grafana runs.

It reads only Kafka (``pipeline`` counters from every stage, ``alerts``, and the kpi stage's
``kpi`` rows), so it can be pointed at a production cluster as well as at the embedded demo.
The city's safety KPIs are shown against the plan targets (``metrics.targets``).

It also says, prominently, when the pipeline itself is not well: a stage that stopped
reporting (silent), a stage whose threads died while its process lives on (dead part, from
the ``health`` in each stage's record), a worker whose input waits while it does nothing
(stalled), and how often the supervisor had to restart each stage.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from confluent_kafka import Consumer, KafkaException
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from metrics.targets import SHANXI_ACCIDENTS_PER_10K_MAX, TARGETS
from sesmon.contract.time import LOCAL_TZ
from sesmon.runtime.kafka import loads, make_reader
from sesmon.runtime.settings import Settings

LEVEL_STYLE = {"P1": "bold white on red", "P2": "black on dark_orange", "P3": "black on yellow"}
#: stages that publish a ``pipeline`` record, in pipeline order
REPORTING_STAGES = ("ingest", "streams", "alerts")


@dataclass
class BoardState:
    """Everything the board shows, folded from the Kafka records (testable without a screen)."""

    started: float = field(default_factory=time.monotonic)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts_seen: int = 0
    resolved: int = 0
    rates: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    #: judge silence against the wall clock too (a live board), not only against the newest record
    live: bool = False
    #: a stage is silent after this long without a record
    silent_after_s: float = 10.0
    #: lines about the run itself (MQTT security, where the files are): shown, never secrets
    notes: dict[str, str] = field(default_factory=dict)
    #: the city's latest ``safety_kpi`` rows by (kind, window), from the ``kpi`` stream
    kpis: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def on_kpi(self, row: dict[str, Any]) -> None:
        """Keep the city's newest row per kind and window (a past year's closing row is older: ignored)."""
        tags = row.get("tags") or {}
        if tags.get("scope") != "city" or not isinstance(row.get("fields"), dict):
            return
        key = (str(tags.get("kind")), str(tags.get("window")))
        known = self.kpis.get(key)
        if known is None or int(row.get("time", 0)) >= int(known.get("time", 0)):
            self.kpis[key] = row

    def city_kpis(self, window: str = "365d") -> list[dict[str, Any]]:
        """The city's KPIs (all units; trapped per 10k elevators) against the plan targets."""
        fields = (self.kpis.get(("all", window)) or {}).get("fields", {})
        if not fields:
            return []
        out = [
            {
                "kpi": t.label,
                "field": t.field,
                "value": fields.get(t.field),
                "target": t,
                "met": t.met(fields.get(t.field)),
            }
            for t in TARGETS
        ]
        out.insert(
            2,
            {
                "kpi": "trapped / 10k elevators",
                "field": "trapped_per_10k",
                "value": fields.get("trapped_per_10k"),
                "target": None,
                "met": None,
            },
        )
        return out

    def on_pipeline(self, record: dict[str, Any]) -> None:
        stage = str(record.get("stage", "?"))
        known = self.stages.get(stage)
        if known is not None and float(known.get("at", 0)) > float(record.get("at", 0)):
            return  # an older report read late (another partition, or a second feed)
        self.stages[stage] = record
        now = float(record.get("at", 0)) / 1000 or time.time()  # the stage's clock, not our poll's
        for counter in ("produced", "processed", "delivered"):
            if counter in record:
                series = self.rates.setdefault(f"{stage}.{counter}", deque(maxlen=30))
                series.append((now, float(record[counter])))

    def on_alert(self, alert: dict[str, Any]) -> None:
        self.alerts_seen += 1
        if alert.get("state") == "firing":
            self.firing[alert["alert_id"]] = alert
        else:
            self.resolved += 1
            self.firing.pop(alert.get("alert_id", ""), None)

    def rate(self, key: str, window_s: float = 5.0) -> float:
        """Per-second rate of a counter over the last ``window_s`` of the stage's own reports."""
        series = self.rates.get(key)
        if not series or len(series) < 2:
            return 0.0
        t_last, v_last = series[-1]
        t0, v0 = next(((t, v) for t, v in series if t_last - t <= window_s), series[0])
        if t_last - t0 < 0.5:  # two reports too close together say nothing about a rate
            t0, v0 = series[0]
        return max(0.0, (v_last - v0) / (t_last - t0)) if t_last - t0 >= 0.5 else 0.0

    def levels(self) -> dict[str, int]:
        counts = {"P1": 0, "P2": 0, "P3": 0}
        for alert in self.firing.values():
            counts[alert.get("level", "P3")] = counts.get(alert.get("level", "P3"), 0) + 1
        return counts

    def now_ms(self) -> float:
        """The board's idea of now: the newest report, or the wall clock on a live board."""
        newest = max((float(r.get("at", 0)) for r in self.stages.values()), default=0.0)
        return max(newest, time.time() * 1000) if self.live else newest

    def supervised(self) -> dict[str, dict[str, Any]]:
        """The supervisor's view of each child, by the stage name it reports as."""
        children = self.stages.get("supervisor", {}).get("children", {})
        return {str(c.get("reports_as") or name): {"child": name, **c} for name, c in children.items()}

    def silent_stages(self, after_s: float | None = None) -> list[str]:
        """Stages without a report for ``after_s``: a stalled or wedged stage shows here rather
        than as a quietly frozen board. A supervised stage that never reported counts too."""
        after_ms = (self.silent_after_s if after_s is None else after_s) * 1000
        if not self.stages:
            return []
        now = self.now_ms()
        silent = {n for n, r in self.stages.items() if now - float(r.get("at", 0)) > after_ms}
        for stage, child in self.supervised().items():
            up_ms = now - float(child.get("started_ms") or now)
            if stage in REPORTING_STAGES and stage not in self.stages and up_ms > after_ms:
                silent.add(stage)
        return sorted(silent)

    def dead_parts(self) -> dict[str, list[str]]:
        """Parts (threads, clients) a stage itself reports dead while its process lives on."""
        gone = {stage for stage, child in self.supervised().items() if not child.get("alive", True)}
        return {
            name: list(record["health"]["dead"])
            for name, record in self.stages.items()
            if (record.get("health") or {}).get("dead") and name not in gone  # process gone: moot
        }

    def stalled(self) -> dict[str, int]:
        """Stages that report records waiting while they make no progress (the worker)."""
        return {n: int(r.get("input_pending") or 0) for n, r in self.stages.items() if r.get("stalled")}

    def restarts(self) -> dict[str, int]:
        return {stage: int(c.get("restarts", 0)) for stage, c in self.supervised().items()}

    def stage_rows(self) -> list[dict[str, Any]]:
        """One row per stage for the health table: what runs, what is dead, how fresh, restarts."""
        now = self.now_ms()
        supervised = self.supervised()
        names = [n for n in REPORTING_STAGES if n in self.stages or n in supervised]
        names += sorted(n for n in (*self.stages, *supervised) if n not in names and n != "supervisor")
        silent, dead, stalled = set(self.silent_stages()), self.dead_parts(), self.stalled()
        rows = []
        for name in names:
            record, child = self.stages.get(name, {}), supervised.get(name, {})
            health = record.get("health", {})
            progress_ms = health.get("last_progress_ms")
            if child and not child.get("alive", True):
                status = "RESTARTING" if child.get("restart_in_s") is not None else "DOWN"
            elif name in dead:
                status = "DEAD PART"
            elif name in silent:
                status = "SILENT"
            elif name in stalled:
                status = "STALLED"
            else:
                status = "ok"
            rows.append(
                {
                    "stage": name,
                    "status": status,
                    "pid": child.get("pid") if child else health.get("pid"),
                    "dead": dead.get(name, []),
                    "report_age_s": round((now - float(record["at"])) / 1000, 1) if record else None,
                    "progress_age_s": round((now - float(progress_ms)) / 1000, 1) if progress_ms else None,
                    "restarts": int(child.get("restarts", 0)),
                    "last_exit_status": child.get("last_exit_status"),
                    "restart_in_s": child.get("restart_in_s"),
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        ingest = self.stages.get("ingest", {})
        streams = self.stages.get("streams", {})
        alerts = self.stages.get("alerts", {})
        return {
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "readings_per_s": round(self.rate("ingest.produced"), 1),
            "received": ingest.get("received", 0),
            "produced": ingest.get("produced", 0),
            "dead_lettered": ingest.get("dead_lettered", 0),
            "dead_letter_reasons": ingest.get("dead_letter_reasons", {}),
            "processed": streams.get("processed", 0),
            "online_units": streams.get("online_units", 0),
            "alerts_seen": self.alerts_seen,
            "firing": self.levels(),
            "resolved": self.resolved,
            "delivered": alerts.get("delivered", 0),
            # the response loop (alerts stage): open incidents by escalation level, SLA breaches
            "incidents_open": alerts.get("open_incidents", 0),
            "incidents_by_level": alerts.get("open_by_escalation", {}),
            "sla_breaches_open": alerts.get("sla_breaches_open", 0),
            "dispatch_refused": alerts.get("dispatch_refused", 0),
            "rule_errors": streams.get("rule_errors", 0),
            "backlog": max(0, int(ingest.get("produced", 0)) - int(streams.get("processed", 0))),
            "silent_stages": self.silent_stages(),
            "dead_parts": self.dead_parts(),
            "stalled": self.stalled(),
            "restarts": self.restarts(),
            "registry_reload_failures": streams.get("registry_reload_failures", 0),
            "city_kpis_365d": {row["field"]: row["value"] for row in self.city_kpis()},
            **self.notes,
        }


def render(
    state: BoardState, title: str = "sesmon — Guangzhou special-equipment safety", tz: str | None = None
) -> Group:
    s = state.summary()
    head = Table.grid(expand=True, padding=(0, 2))
    for _ in range(6):
        head.add_column(justify="center")
    firing = s["firing"]
    head.add_row(
        Text(f"{s['readings_per_s']:,.0f} readings/s", style="bold cyan"),
        Text(f"{s['online_units']:,} units online", style="bold green"),
        Text(f" P1 {firing['P1']} ", style=LEVEL_STYLE["P1"]),
        Text(f" P2 {firing['P2']} ", style=LEVEL_STYLE["P2"]),
        Text(f" P3 {firing['P3']} ", style=LEVEL_STYLE["P3"]),
        Text(f"{s['dead_lettered']:,} dead letters", style="bold magenta" if s["dead_lettered"] else "dim"),
    )
    alerts = Table(expand=True, title="firing alerts (newest first)", title_justify="left")
    zone: tzinfo = ZoneInfo(tz) if tz else LOCAL_TZ  # unset: Guangzhou time (sesmon.contract.time)
    for col in ("level", "rule", "unit", "district", "firm", f"since (device time, {tz or zone})"):
        alerts.add_column(col)
    newest = sorted(state.firing.values(), key=lambda a: a.get("opened_at", 0), reverse=True)[:15]
    for alert in newest:
        alerts.add_row(
            Text(alert.get("level", "?"), style=LEVEL_STYLE.get(alert.get("level", ""), "")),
            alert.get("title") or alert.get("rule", ""),
            alert.get("device_id", ""),
            alert.get("district", ""),
            alert.get("firm_id", ""),
            datetime.fromtimestamp(int(alert.get("opened_at", 0)) / 1000, zone).strftime("%m-%d %H:%M:%S"),
        )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["dead_letter_reasons"].items())) or "none"
    by_level = ", ".join(
        f"{k.removeprefix('level_')}: {v}" for k, v in sorted(s["incidents_by_level"].items())
    )
    incidents = Text(
        f"incidents open {s['incidents_open']:,} (by escalation level {by_level or '-'}; details: "
        f"sesmon alerts list) · SLA breaches open {s['sla_breaches_open']:,} · "
        f"dispatch actions refused {s['dispatch_refused']:,}",
        style="bold yellow" if s["sla_breaches_open"] else "dim",
    )
    foot = Text(
        f"received {s['received']:,} · into Kafka {s['produced']:,} · evaluated {s['processed']:,} · "
        f"alert changes {s['alerts_seen']:,} (resolved {s['resolved']:,}) · delivered {s['delivered']:,} · "
        f"dead-letter reasons: {reasons} · up {s['elapsed_s']:.0f}s",
        style="dim",
    )
    rows = state.stage_rows()
    warnings = []
    for row in rows:
        if row["status"] in ("RESTARTING", "DOWN"):
            exit_status = row["last_exit_status"]
            when = f", restart in {row['restart_in_s']:.0f} s" if row["restart_in_s"] is not None else ""
            warnings.append(f"{row['stage']} {row['status']} (exit status {exit_status}{when})")
    if s["silent_stages"]:
        warnings.append(f"NO REPORT from: {', '.join(s['silent_stages'])}")
    for stage, parts in s["dead_parts"].items():
        warnings.append(f"DEAD PART in {stage}: {', '.join(parts)}")
    for stage, pending in s["stalled"].items():
        warnings.append(f"STALLED: {stage} ({pending:,} records waiting, no progress)")
    if s["backlog"] > 5000:
        warnings.append(f"rules {s['backlog']:,} readings behind")
    if s["rule_errors"]:
        warnings.append(f"{s['rule_errors']} rule errors (see worker log)")
    if s["registry_reload_failures"]:
        warnings.append(f"{s['registry_reload_failures']} registry reload(s) refused (old registry kept)")
    parts: list[Any] = []
    if warnings:  # first, where nobody can miss it
        parts.append(Panel(Text("\n".join(warnings), style="bold white on red"), title="PIPELINE NOT WELL"))
    parts += [Panel(head, title=title), alerts, incidents]
    kpi_rows = state.city_kpis()
    if kpi_rows:
        parts.append(render_kpis(kpi_rows, state.kpis.get(("all", "365d"), {}), zone))
    parts += [foot, render_stages(rows)]
    if state.notes:
        parts.append(Text(" · ".join(f"{k}: {v}" for k, v in state.notes.items()), style="dim"))
    return Group(*parts)


STATUS_STYLE = {"ok": "green", "SILENT": "bold red", "DEAD PART": "bold red", "STALLED": "bold red"}


def _kpi_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_rate") or "share" in name:
        return f"{value * 100:.1f} %"
    return f"{value:.2f}" if name.endswith("_min") else f"{value:.3f}"


def render_kpis(rows: list[dict[str, Any]], record: dict[str, Any], zone: tzinfo) -> Table:
    """The city's safety KPIs over the trailing 365 days against the plan targets (green met, red not)."""
    fields = record.get("fields", {})
    as_of = datetime.fromtimestamp(int(record.get("time", 0)) / 1000, zone).strftime("%Y-%m-%d %H:%M")
    title = (
        f"city safety KPIs, trailing 365 days as of {as_of} (event time) · "
        f"{fields.get('units_in_use', 0):,} units in use · {fields.get('accidents', 0)} accidents, "
        f"{fields.get('deaths', 0)} deaths"
    )
    table = Table(expand=True, title=title, title_justify="left")
    for col in ("KPI", "value", "target", ""):
        table.add_column(col)
    for row in rows:
        target = row["target"]
        bound = "-"
        if target is not None:
            sign = {"below": "<", "at_most": "≤", "at_least": "≥"}[target.good]
            bound = f"{sign} {_kpi_value(target.field, target.bound)}"
            if target.field == "accidents_per_10k":
                bound += f" (Shanxi {SHANXI_ACCIDENTS_PER_10K_MAX})"
        met = row["met"]
        verdict = (
            Text("met", style="bold green")
            if met
            else Text("NOT MET", style="bold red")
            if met is False
            else Text("")
        )
        table.add_row(row["kpi"], _kpi_value(row["field"], row["value"]), bound, verdict)
    return table


def render_stages(rows: list[dict[str, Any]]) -> Table:
    """The stages' health: pid, state, dead parts, freshness, restarts by the supervisor."""
    table = Table(expand=True, title="stages", title_justify="left")
    for col in ("stage", "state", "pid", "dead parts", "last report", "last progress", "restarts"):
        table.add_column(col)

    def age(value: float | None) -> str:
        return "never" if value is None else f"{value:.0f} s ago"

    for row in rows:
        table.add_row(
            row["stage"],
            Text(row["status"], style=STATUS_STYLE.get(row["status"], "bold red")),
            str(row["pid"] or "-"),
            ", ".join(row["dead"]) or "-",
            age(row["report_age_s"]),
            age(row["progress_age_s"]),
            Text(str(row["restarts"]), style="bold yellow" if row["restarts"] else ""),
        )
    return table


class BoardFeed:
    """Consumes pipeline counters and alerts into a :class:`BoardState`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = BoardState(live=True)
        # make_reader resets a lost position to earliest: a Kafka that came back empty starts at 0 again
        try:
            self.consumer: Consumer = make_reader(settings, ["pipeline", "alerts", "kpi"])
        except KafkaException:  # a pipeline without the kpi stream (no kpi stage yet): the rest still shows
            self.consumer = make_reader(settings, ["pipeline", "alerts"])
        self.alerts_topic = settings.topic("alerts")
        self.kpi_topic = settings.topic("kpi")

    def poll(self, timeout: float = 0.2) -> None:
        for record in self.consumer.consume(2000, timeout):
            if record.error():
                continue
            try:
                data = loads(record.value())
            except ValueError:
                continue
            if record.topic() == self.alerts_topic:
                self.state.on_alert(data)
            elif record.topic() == self.kpi_topic:
                self.state.on_kpi(data)
            else:
                self.state.on_pipeline(data)

    def render(self) -> Group:
        return render(self.state, tz=self.settings.display_tz)

    def close(self) -> None:
        self.consumer.close()
