"""The terminal board: what an operator sees where no Grafana runs.

It reads only Kafka (``pipeline`` counters from every stage, and ``alerts``), so it can be
pointed at a production cluster as well as at the embedded demo.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from confluent_kafka import Consumer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sesmon.kafka import loads, make_reader
from sesmon.settings import Settings

LEVEL_STYLE = {"P1": "bold white on red", "P2": "black on dark_orange", "P3": "black on yellow"}


@dataclass
class BoardState:
    """Everything the board shows, folded from the Kafka records (testable without a screen)."""

    started: float = field(default_factory=time.monotonic)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts_seen: int = 0
    resolved: int = 0
    rates: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)

    def on_pipeline(self, record: dict[str, Any]) -> None:
        stage = str(record.get("stage", "?"))
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

    def silent_stages(self, after_s: float = 10.0) -> list[str]:
        """Stages whose last report is ``after_s`` older than the newest: a stalled consumer
        (Faust's can stall without a word) shows here rather than as a quietly frozen board."""
        if not self.stages:
            return []
        newest = max(float(r.get("at", 0)) for r in self.stages.values())
        return sorted(n for n, r in self.stages.items() if newest - float(r.get("at", 0)) > after_s * 1000)

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
            "rule_errors": streams.get("rule_errors", 0),
            "backlog": max(0, int(ingest.get("produced", 0)) - int(streams.get("processed", 0))),
            "silent_stages": self.silent_stages(),
        }


def render(
    state: BoardState, title: str = "sesmon — Guangzhou special-equipment safety", tz: str = "Asia/Shanghai"
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
    zone = ZoneInfo(tz)
    for col in ("level", "rule", "unit", "district", "firm", f"since (device time, {tz})"):
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
    foot = Text(
        f"received {s['received']:,} · into Kafka {s['produced']:,} · evaluated {s['processed']:,} · "
        f"alert changes {s['alerts_seen']:,} (resolved {s['resolved']:,}) · delivered {s['delivered']:,} · "
        f"dead-letter reasons: {reasons} · up {s['elapsed_s']:.0f}s",
        style="dim",
    )
    warnings = []
    if s["silent_stages"]:
        warnings.append(f"NO REPORT from: {', '.join(s['silent_stages'])}")
    if s["backlog"] > 5000:
        warnings.append(f"rules {s['backlog']:,} readings behind")
    if s["rule_errors"]:
        warnings.append(f"{s['rule_errors']} rule errors (see worker log)")
    parts: list[Any] = [Panel(head, title=title), alerts, foot]
    if warnings:
        parts.append(Text(" · ".join(warnings), style="bold red"))
    return Group(*parts)


class BoardFeed:
    """Consumes pipeline counters and alerts into a :class:`BoardState`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = BoardState()
        self.consumer: Consumer = make_reader(settings, ["pipeline", "alerts"])
        self.alerts_topic = settings.topic("alerts")

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
            else:
                self.state.on_pipeline(data)

    def render(self) -> Group:
        return render(self.state, tz=self.settings.display_tz)

    def close(self) -> None:
        self.consumer.close()
