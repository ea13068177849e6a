"""Builders for tests, benches and offline replays: units, envelopes and a stream runner.

Kept in the package (not tests/) so the bench and any replay script can share them."""

from __future__ import annotations

from datetime import date
from typing import Any

from rules import Outcome, RuleEngine
from sesmon.contract.registry import Unit
from sesmon.contract.schemas import Alert

T0 = 1_790_000_000_000  # 2026-09-21, a fixed epoch for every test
S = 1000


def elevator(device_id: str = "E1", **kw: Any) -> Unit:
    base: dict[str, Any] = dict(
        device_id=device_id,
        kind="elevator",
        type_code="3110",
        district="天河",
        firm_id="F001",
        user_unit_id="U001",
        rated_speed_mps=1.0,
        rated_load_kg=1000,
        floors=12,
        next_inspection_due=date(2027, 6, 30),
    )
    base.update(kw)
    return Unit(**base)


def boiler(device_id: str = "B1", steam: bool = True, **kw: Any) -> Unit:
    base: dict[str, Any] = dict(
        device_id=device_id,
        kind="boiler",
        type_code="1100" if steam else "1200",
        district="白云",
        firm_id="F002",
        user_unit_id="U002",
        rated_pressure_mpa=1.25,
        safety_valve_set_mpa=1.3,
        next_inspection_due=date(2027, 6, 30),
    )
    if steam:
        base["capacity_tph"] = 4.0
    else:
        base["capacity_mw"] = 2.8
    base.update(kw)
    return Unit(**base)


def tele(
    kind: str, device_id: str, t_s: float, seq: int, rx_delay_ms: int = 300, **fields: Any
) -> dict[str, Any]:
    ts = T0 + int(t_s * S)
    body = {"device_id": device_id, "ts": ts, "seq": seq, **fields}
    return {
        "type": "telemetry",
        "kind": kind,
        "device_id": device_id,
        "ts": ts,
        "seq": seq,
        "received_ms": ts + rx_delay_ms,
        "body": body,
    }


def event(
    kind: str, device_id: str, t_s: float, seq: int, code: str, state: str = "occur", **detail: Any
) -> dict[str, Any]:
    ts = T0 + int(t_s * S)
    body = {"device_id": device_id, "ts": ts, "seq": seq, "code": code, "state": state, "detail": detail}
    return {
        "type": "event",
        "kind": kind,
        "device_id": device_id,
        "ts": ts,
        "seq": seq,
        "received_ms": ts + 300,
        "body": body,
    }


def status(
    kind: str, device_id: str, t_s: float, word: str, lwt: bool = True, seq: int | None = None
) -> dict[str, Any]:
    ts = T0 + int(t_s * S)
    body: dict[str, Any] = {"device_id": device_id, "status": word, "ts": ts}
    if lwt:
        body["lwt"] = True
    else:
        body["seq"] = seq or 0
    return {
        "type": "status",
        "kind": kind,
        "device_id": device_id,
        "ts": ts,
        "seq": seq,
        "received_ms": ts,
        "body": body,
    }


def report(name: str, t_s: float, **body: Any) -> dict[str, Any]:
    ts = T0 + int(t_s * S)
    body = {"ts": ts, **body}
    return {
        "type": "report",
        "report": name,
        "device_id": body.get("device_id"),
        "ts": ts,
        "received_ms": ts,
        "body": body,
    }


def minimal_catalogue(rules_yaml: str, version: str = "test.1", **settings: Any) -> str:
    """A complete, valid catalogue text around ``rules_yaml`` (the indented items of ``rules:``).

    Settings default to the shipped values and are all marked as assumptions, so a test only
    writes the rules it is about."""
    values: dict[str, Any] = {
        "lateness_s": 10,
        "heartbeat_s": 60,
        "offline_after_heartbeats": 3,
        "record_gaps": True,
        "maintenance_default_s": 14400,
        "flap": {"window_s": 600, "max_opens": 3, "hold_s": 300},
        "calendar_every_s": 3600,
        "closed_hazard_retention_days": 90,
        "supervision_at_grading": {"general": "none", "suspected_major": "none", "major": "district"},
        "centre_id": "96333",
    }
    values.update(settings)
    import json

    lines = [f'version: "{version}"', "references:", "  test: {title: a test reference}", "settings:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in values.items()]
    lines.append("settings_basis:")
    lines += [f"  {k}: {{assumption: true, why: a value for tests only}}" for k in values]
    lines.append("rules:")
    return "\n".join(lines) + "\n" + rules_yaml


class Run:
    """Feed messages through one engine and collect everything it emitted."""

    def __init__(self, engine: RuleEngine, unit: Unit | None = None) -> None:
        self.engine = engine
        self.unit = unit
        self.state: Any = None  # a UnitState after the first message
        self.alerts: list[Alert] = []
        self.hazards: list[Any] = []
        self.outcomes: list[Outcome] = []
        self.last_rx = 0

    def feed(self, *messages: dict[str, Any]) -> Run:
        for m in messages:
            out = self.engine.process(self.state, m, self.unit)
            self._take(out)
            self.last_rx = max(self.last_rx, m.get("received_ms") or 0)
        return self

    def tick(self, now_ms: int | None = None) -> Run:
        now = now_ms if now_ms is not None else self.last_rx + self.engine.lateness_ms
        self._take(self.engine.tick(self.state, now, self.unit))
        return self

    def _take(self, out: Outcome) -> None:
        if out.state:
            self.state = out.state
        self.alerts.extend(out.alerts)
        self.hazards.extend(out.hazards)
        self.outcomes.append(out)

    def transitions(self) -> list[tuple[str, str]]:
        return [(a.rule, a.state) for a in self.alerts]

    def open_rules(self) -> set[str]:
        return set(self.state.alerts) if self.state else set()
