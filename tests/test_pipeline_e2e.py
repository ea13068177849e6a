"""End to end on real servers: paho -> mosquitto -> ingest -> Tansu -> Faust worker -> alerts -> MQTT.

Every published message is accounted for (evaluated + dead-lettered = published), each injected
fault raises exactly one alert at the right receivers, healthy units raise none, and a
redelivered fault does not page twice.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import orjson
import pytest

from sesmon.contract.registry import Registry, Unit
from sesmon.runtime.settings import Settings
from tests.conftest import clock_date, drain, mqtt_client, publish_all, reading
from tests.pipeline_support import AlertInbox, settle_alerts


def units_of(registry: Registry, kind: str, steam: bool | None = None) -> list[Unit]:
    """Units in use and in date (an overdue inspection raises its own alert)."""
    today = clock_date()  # the date of the readings' clock, as the fleet's registration
    return [
        u
        for u in registry
        if u.kind == kind
        and u.in_use
        and (steam is None or u.steam == steam)
        and (u.next_inspection_due is None or u.next_inspection_due > today + timedelta(days=40))
    ]


def test_faults_become_alerts_and_everything_is_accounted(
    pipeline: Settings, fleet_registry: Registry
) -> None:
    settings = pipeline
    inbox = AlertInbox(settings)
    client = mqtt_client(settings)
    now = int(time.time() * 1000)
    elevators = units_of(fleet_registry, "elevator")
    boilers = units_of(fleet_registry, "boiler", steam=True)
    fast, door, trapped, offline = elevators[:4]
    healthy = elevators[4:24]
    marker = elevators[-1]  # raises one alert at the end, after everything else
    low_water, overpressure = boilers[:2]

    def elevator(unit: Unit, seq: int, ts: int, **fields: Any) -> tuple[str, bytes]:
        base = {
            "mode": "normal",
            "moving": False,
            "door": "closed",
            "door_zone": True,
            "speed_mps": 0.0,
            "occupied": False,
            "floor": 1,
        }
        return reading(unit.device_id, seq, ts, **{**base, **fields})

    def boiler(unit: Unit, seq: int, ts: int, **fields: Any) -> tuple[str, bytes]:
        base = {
            "pressure_mpa": round((unit.rated_pressure_mpa or 1.25) * 0.75, 3),
            "water_level_mm": 0.0,
            "burner": "high_fire",
            "flue_gas_temp_c": 150.0,
            "o2_pct": 3.5,
        }
        return reading(unit.device_id, seq, ts, kind="boiler", **{**base, **fields})

    messages: list[tuple[str, bytes]] = []
    for seq in range(1, 6):  # a calm minute first, for every unit involved
        ts = now + seq * 1000
        messages += [elevator(u, seq, ts) for u in [*healthy, fast, door, trapped, offline]]
        messages += [boiler(u, seq, ts) for u in (low_water, overpressure)]
    ts = now + 10_000
    rated = fast.rated_speed_mps or 1.0
    messages.append(
        elevator(fast, 10, ts, moving=True, direction="up", speed_mps=round(rated * 1.4, 2), door_zone=False)
    )
    # running with doors closed, then a door opens while it runs (运行中开门)
    messages.append(
        elevator(door, 9, ts - 500, moving=True, direction="down", speed_mps=0.8, door_zone=False)
    )
    messages.append(
        elevator(door, 10, ts, moving=True, direction="down", speed_mps=0.8, door="open", door_zone=False)
    )
    trapped_event = json.dumps(
        {
            "device_id": trapped.device_id,
            "ts": ts,
            "seq": 10,
            "code": "trapped",
            "state": "occur",
            "detail": {"floor": 7},
        }
    ).encode()
    messages.append((f"sesmon/v1/elevator/{trapped.device_id}/event", trapped_event))
    messages.append((f"sesmon/v1/elevator/{trapped.device_id}/event", trapped_event))  # redelivered: one page
    messages.append((f"sesmon/v1/elevator/{offline.device_id}/status", b"offline"))  # Last Will
    messages.append(boiler(low_water, 10, ts, water_level_mm=-180.0))
    set_mpa = overpressure.safety_valve_set_mpa or 1.3
    messages.append(boiler(overpressure, 10, ts, pressure_mpa=round(set_mpa * 1.05, 3)))
    for seq in range(11, 16):  # the faults persist
        t = now + seq * 1000
        messages.append(boiler(low_water, seq, t, water_level_mm=-180.0))
        messages.append(boiler(overpressure, seq, t, pressure_mpa=round(set_mpa * 1.05, 3)))
        messages.append(elevator(fast, seq, t, moving=True, speed_mps=round(rated * 1.4, 2), door_zone=False))
    bad = [
        (f"sesmon/v1/elevator/{fast.device_id}/telemetry", b"\x00\x01 binary junk"),
        (
            f"sesmon/v1/elevator/{fast.device_id}/telemetry",
            json.dumps({"device_id": fast.device_id, "ts": "x", "seq": 1}).encode(),
        ),
        (
            "sesmon/v1/elevator/GHOST-UNIT/telemetry",
            json.dumps({"device_id": "GHOST-UNIT", "ts": now, "seq": 1}).encode(),
        ),
        (
            f"sesmon/v1/boiler/{fast.device_id}/telemetry",
            json.dumps({"device_id": fast.device_id, "ts": now, "seq": 1}).encode(),
        ),
    ]
    publish_all(client, messages + bad)

    expected = {
        fast.device_id: "elevator.overspeed",
        door.device_id: "elevator.door_open_while_running",
        trapped.device_id: "elevator.trapped",
        offline.device_id: "offline",
        low_water.device_id: "boiler.extreme_low_water",
        overpressure.device_id: "boiler.overpressure",
    }

    def all_fired(box: AlertInbox) -> bool:
        seen = {(a["device_id"], a["rule"]) for _, a in box.firing()}
        return all((dev, rule_id) in seen for dev, rule_id in expected.items())

    if not inbox.wait(all_fired, 90):
        stats = _latest(settings, drain(settings, ["pipeline"], lambda r: False, timeout=3))
        pytest.fail(
            f"alerts so far: {[(a['device_id'], a['rule']) for _, a in inbox.firing()]}; stats {stats[:2]}"
        )
    # accounting first: evaluated + dead-lettered = published (the redelivered event included)
    published = len(messages) + len(bad)
    records = drain(
        settings, ["pipeline", "deadletter"], lambda r: _accounted(settings, r, published), timeout=60
    )
    ingest, streams, dead = _latest(settings, records)
    assert ingest["produced"] + ingest["dead_lettered"] == published == ingest["received"]
    assert streams["processed"] == ingest["produced"]
    assert len(dead) == len(bad)
    assert {dict(r.headers())["reason"].decode() for r in dead} == {
        "not_json",
        "invalid",
        "unknown_device",
        "wrong_kind",
    }
    # then a marker alert through the same path: any duplicate page would have arrived before it
    settle_alerts(settings, inbox, client, published, marker)
    firing = [(t, a) for t, a in inbox.firing() if a["device_id"] != marker.device_id]
    healthy_ids = {u.device_id for u in healthy}
    assert not [a for _, a in firing if a["device_id"] in healthy_ids], "healthy units must not alert"

    for device_id, rule_id in expected.items():
        mine = [(t, a) for t, a in firing if a["device_id"] == device_id and a["rule"] == rule_id]
        unit = fleet_registry.get(device_id)
        assert unit is not None
        ids = {a["alert_id"] for _, a in mine}
        assert len(ids) == 1, f"{device_id}: one alert, not {ids}"
        topics = [t for t, _ in mine]
        # paged once per receiver, even though the trapped event arrived twice
        assert len(topics) == len(set(topics)), topics
        assert f"sesmon/v1/alerts/firm/{unit.firm_id}" in topics
        alert = mine[0][1]
        assert alert["district"] == unit.district and alert["firm_id"] == unit.firm_id
        if alert["level"] == "P1" and alert["kind"] == "elevator":  # 96333 is the elevator platform
            assert "sesmon/v1/alerts/centre/96333" in topics
    levels = {
        rule_id: next(a["level"] for _, a in firing if a["rule"] == rule_id) for rule_id in expected.values()
    }
    assert levels == {
        "elevator.overspeed": "P1",
        "elevator.door_open_while_running": "P1",
        "elevator.trapped": "P1",
        "boiler.extreme_low_water": "P1",
        "boiler.overpressure": "P1",
        "offline": "P3",
    }
    client.disconnect()


def _latest(settings: Settings, records: list[Any]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    ingest: dict[str, Any] = {"produced": 0, "dead_lettered": 0, "received": 0}
    streams: dict[str, Any] = {"processed": 0}
    dead = []
    for record in records:
        if record.topic() == settings.topic("deadletter"):
            dead.append(record)
            continue
        stats = orjson.loads(record.value())
        if stats["stage"] == "ingest" and stats.get("received", 0) >= ingest["received"]:
            ingest = {**ingest, **stats}
        if stats["stage"] == "streams" and stats.get("processed", 0) >= streams["processed"]:
            streams = {**streams, **stats}
    return ingest, streams, dead


def _accounted(settings: Settings, records: list[Any], published: int) -> bool:
    ingest, streams, _ = _latest(settings, records)
    return (
        ingest["produced"] + ingest["dead_lettered"] == published
        and streams["processed"] >= ingest["produced"]
        and ingest["produced"] > 0
    )


def test_hidden_danger_loop_through_the_pipeline(pipeline: Settings, fleet_registry: Registry) -> None:
    """开门走车 opens a (suspected) major hazard; the firm's and inspector's reports close it, in Kafka."""
    settings = pipeline
    unit = units_of(fleet_registry, "elevator")[-1]
    firm_inbox = AlertInbox(settings, f"sesmon/v1/hazards/firm/{unit.firm_id}")
    client = mqtt_client(settings)
    now = int(time.time() * 1000) - 60_000
    moving_open = {
        "mode": "normal",
        "moving": True,
        "direction": "up",
        "speed_mps": 0.5,
        "door": "open",
        "door_zone": False,
        "occupied": True,
        "floor": 2,
    }
    event = json.dumps(
        {"device_id": unit.device_id, "ts": now, "seq": 1, "code": "unintended_movement", "state": "occur"}
    ).encode()
    publish_all(
        client,
        [
            (f"sesmon/v1/elevator/{unit.device_id}/event", event),
            reading(unit.device_id, 2, now + 500, **moving_open),
        ],
    )

    def hazards(records: list[Any]) -> list[dict[str, Any]]:
        return [h for h in (orjson.loads(r.value()) for r in records) if h["device_id"] == unit.device_id]

    opened = hazards(drain(settings, ["hazards"], lambda r: bool(hazards(r)), timeout=60))
    assert opened, "开门走车 must open a hidden danger"
    hazard = opened[0]
    assert (
        hazard["grade"] == "suspected_major"  # an IoT sign: confirmed on site by an inspector
        and hazard["status"] == "reported"
        and hazard["source"] == "unintended_movement"
    )
    assert hazard["hazard_id"].startswith(f"HZ.{unit.device_id}.")
    for seq, (action, by) in enumerate((("rectified", unit.firm_id), ("verified", "inspector-7")), start=10):
        report = {"hazard_id": hazard["hazard_id"], "action": action, "by": by, "ts": now + seq * 60_000}
        publish_all(client, [("sesmon/v1/reports/hazard", json.dumps(report).encode())])
    closed = drain(
        settings, ["hazards"], lambda r: any(h["status"] == "closed" for h in hazards(r)), timeout=60
    )
    statuses = [h["status"] for h in hazards(closed) if h["hazard_id"] == hazard["hazard_id"]]
    assert statuses[-2:] == ["rectified", "closed"], statuses
    # the firm that must rectify it is told over MQTT, each change once
    assert firm_inbox.wait(lambda box: len(box.items) >= 3, 20)
    delivered = [h["status"] for _, h in firm_inbox.items if h["hazard_id"] == hazard["hazard_id"]]
    assert delivered == ["reported", "rectified", "closed"]
    # a report for a hazard nobody opened is dead-lettered with the rules' reason, not lost
    bogus = {"hazard_id": f"HZ.{unit.device_id}.door_lock.1", "action": "verified", "by": "x", "ts": now}
    publish_all(client, [("sesmon/v1/reports/hazard", json.dumps(bogus).encode())])
    dead = drain(
        settings,
        ["deadletter"],
        lambda r: any(dict(x.headers())["reason"] == b"rejected_by_rules" for x in r),
    )
    assert any(dict(x.headers())["reason"] == b"rejected_by_rules" for x in dead)
    client.disconnect()
