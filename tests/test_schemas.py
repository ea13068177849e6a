"""Every payload of DESIGN.md §2: what is accepted, normalised, and every class of bad input."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from sesmon.contract.schemas import BadInput, Kind, parse_mqtt, to_epoch_ms

NOW = 1_795_300_000_000
TS = 1_795_299_000_000
ELEV = "sesmon/v1/elevator/GZE0000001/telemetry"


def registry_lookup(device_id: str) -> Kind | None:
    return {"GZE0000001": Kind.elevator, "GZB0000001": Kind.boiler}.get(device_id)


def body(**extra: Any) -> bytes:
    return json.dumps({"device_id": "GZE0000001", "ts": TS, "seq": 7, **extra}).encode()


def reason_of(topic: str, payload: bytes, **kw: Any) -> str:
    with pytest.raises(BadInput) as info:
        parse_mqtt(topic, payload, NOW, known_device=registry_lookup, **kw)
    assert info.value.detail or info.value.reason  # a reason a person can read
    return info.value.reason


# --------------------------------------------------------------------------- accepted


def test_elevator_telemetry_normalised_and_extras_kept() -> None:
    env = parse_mqtt(
        ELEV, body(mode=2, moving=True, speed_mps=1.5, vendor_x="k"), NOW, known_device=registry_lookup
    )
    assert env.type == "telemetry" and env.kind == Kind.elevator
    assert env.key == "GZE0000001" and env.seq == 7 and env.ts == TS and env.received_ms == NOW
    assert env.body["mode"] == "inspection"  # GB/T 24476 numeric service mode mapped
    assert env.body["vendor_x"] == "k"  # unknown extra fields are kept
    for mode in ("normal", "inspection", "out_of_service", "fire_recall", "emergency_power"):
        assert parse_mqtt(ELEV, body(mode=mode), NOW).body["mode"] == mode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T08:00:00+08:00", 1_795_305_600_000),
        ("2026-11-22T00:00:00Z", 1_795_305_600_000),
        ("2026-11-22T00:00:00.250Z", 1_795_305_600_250),
    ],
)
def test_rfc3339_with_offset_is_epoch_ms(text: str, expected: int) -> None:
    assert to_epoch_ms(text) == expected
    env = parse_mqtt(ELEV, body(ts=text), NOW)
    assert env.ts == expected


def test_boiler_event_status_reports_dispatch_accepted() -> None:
    boiler = b'{"device_id":"GZB0000001","ts":1795299000000,"seq":1,"code":"low_water_trip","state":"occur"}'
    env = parse_mqtt("sesmon/v1/boiler/GZB0000001/event", boiler, NOW, known_device=registry_lookup)
    assert env.type == "event" and env.body["code"] == "low_water_trip" and env.body["detail"] == {}
    status = parse_mqtt("sesmon/v1/elevator/GZE0000001/status", body(status="online"), NOW)
    assert status.type == "status" and status.body["status"] == "online"
    lwt = parse_mqtt("sesmon/v1/elevator/GZE0000001/status", b"offline", NOW)
    assert lwt.body == {"device_id": "GZE0000001", "status": "offline", "ts": NOW, "lwt": True}
    maint = json.dumps(
        {
            "device_id": "GZE0000001",
            "ts": TS,
            "firm_id": "F001",
            "kind": "routine_15d",
            "start": TS,
            "end": TS + 1,
        }
    ).encode()
    rep = parse_mqtt("sesmon/v1/reports/maintenance", maint, NOW, known_device=registry_lookup)
    assert rep.type == "report" and rep.report == "maintenance" and rep.key == "GZE0000001"
    insp = json.dumps(
        {"device_id": "GZE0000001", "ts": TS, "result": "pass", "next_due": "2027-11-01"}
    ).encode()
    assert parse_mqtt("sesmon/v1/reports/inspection", insp, NOW).body["next_due"] == "2027-11-01"
    hazard_id = "HZ.GZE0000001.door_lock_jumpered.1795299000000"
    hazard = json.dumps({"hazard_id": hazard_id, "action": "rectified", "by": "F001", "ts": TS}).encode()
    env = parse_mqtt("sesmon/v1/reports/hazard", hazard, NOW, known_device=registry_lookup)
    assert env.device_id == "GZE0000001" and env.key == "GZE0000001"  # routed to the unit's partition
    disp = json.dumps(
        {"alert_id": "GZE0000001.trapped.1", "action": "on_site", "by": "F001", "ts": TS}
    ).encode()
    env = parse_mqtt("sesmon/v1/dispatch/GZE0000001.trapped.1", disp, NOW)
    assert env.type == "dispatch" and env.key == "GZE0000001.trapped.1"


# --------------------------------------------------------------------------- rejected, by class


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (ELEV, b"\xff\xfe not json", "not_json"),
        (ELEV, b"", "not_json"),
        (ELEV, b"[1,2]", "not_object"),
        (ELEV, b"42", "not_object"),
        (ELEV, body(moving="yes"), "invalid"),  # wrong type, not coerced
        (ELEV, body(floor="3"), "invalid"),
        (ELEV, body(speed_mps=-1), "invalid"),  # out of physical range
        (ELEV, body(door="ajar"), "invalid"),  # enum
        (ELEV, body(mode=9), "invalid"),  # unknown GB/T 24476 mode code
        (ELEV, body(seq=-1), "invalid"),
        (ELEV, body(seq="7"), "invalid"),
        (ELEV, body(ts="2026-11-22 08:00:00"), "invalid"),  # no offset, not RFC 3339
        (ELEV, body(ts="yesterday"), "invalid"),
        (ELEV, body(ts=1_795_299_000), "invalid"),  # seconds, not ms: year 1970
        (ELEV, body(ts=True), "invalid"),
        (ELEV, b'{"device_id":"GZE0000001","seq":1}', "invalid"),  # ts missing
        (ELEV, body(device_id="GZE0000002"), "device_mismatch"),
        ("sesmon/v1/elevator/GZE0000001/event", body(code="jumped", state="occur"), "unknown_code"),
        ("sesmon/v1/elevator/GZE0000001/event", body(code="low_water_trip", state="occur"), "unknown_code"),
        ("sesmon/v1/elevator/GZE0000001/event", body(code="trapped", state="maybe"), "invalid"),
        ("sesmon/v1/elevator/GZE0000001/status", body(status="sleepy"), "invalid"),
        ("sesmon/v1/escalator/GZE0000001/telemetry", body(), "bad_topic"),
        ("sesmon/v1/elevator/GZE0000001/selfie", body(), "bad_topic"),
        ("sesmon/v1/elevator/bad id!/telemetry", body(), "bad_topic"),
        ("other/v1/elevator/GZE0000001/telemetry", body(), "bad_topic"),
        ("sesmon/v1/reports/gossip", body(), "bad_topic"),
        ("sesmon/v1/reports/accident", b'{"report_id":"A1","ts":1795299000000}', "invalid"),
        (
            "sesmon/v1/reports/hazard",
            b'{"hazard_id":"H","action":"ignored","by":"x","ts":1795299000000}',
            "invalid",
        ),
        (
            "sesmon/v1/reports/hazard",
            b'{"hazard_id":"HZ1","action":"verified","by":"x","ts":1795299000000}',
            "unknown_hazard",
        ),
        (
            "sesmon/v1/dispatch/A1",
            b'{"alert_id":"A2","action":"ack","by":"x","ts":1795299000000}',
            "alert_mismatch",
        ),
        (
            "sesmon/v1/dispatch/A1",
            b'{"alert_id":"A1","action":"dance","by":"x","ts":1795299000000}',
            "invalid",
        ),
        ("sesmon/v1/elevator/GZE9999999/telemetry", body(device_id="GZE9999999"), "unknown_device"),
        ("sesmon/v1/boiler/GZE0000001/telemetry", body(), "wrong_kind"),
    ],
)
def test_bad_input_classes(topic: str, payload: bytes, reason: str) -> None:
    assert reason_of(topic, payload) == reason


def test_oversize_rejected_before_parsing() -> None:
    assert reason_of(ELEV, body(pad="x" * 2000), max_bytes=1024) == "oversize"


def test_unknown_device_in_report_rejected() -> None:
    maint = json.dumps({"device_id": "NOPE", "ts": TS, "firm_id": "F", "kind": "repair"}).encode()
    assert reason_of("sesmon/v1/reports/maintenance", maint) == "unknown_device"


# --------------------------------------------------------------------------- depth, identity


@pytest.mark.parametrize(
    ("payload", "deeper_than_3"),
    [
        (b'{"a":[1,{"b":2}]}', False),  # three levels: the limit itself
        (b'{"a":[{"b":[]}]}', True),  # four
        (b'[[["[[[[[[[[["]]]', False),  # brackets inside strings do not count
        (b'[[["\\"[[[[[[[[["]]]', False),  # nor after an escaped quote
        (b'[[["\\\\"[[[', True),  # an escaped backslash ends the string
        (b'"[[[[[[[[', False),  # unterminated string: judged by the parser next
        (b"[]" * 10_000, False),
        (b"[" * 100_000, True),
    ],
)
def test_json_depth_is_judged_on_the_bytes(payload: bytes, deeper_than_3: bool) -> None:
    from sesmon.contract.schemas import json_depth_exceeds

    assert json_depth_exceeds(payload, 3) is deeper_than_3


def test_nesting_orjson_could_not_write_back_is_too_deep() -> None:
    """orjson.loads takes 1,024 levels, orjson.dumps refuses past 254: refused before parsing."""
    deep = b'{"device_id":"GZE0000001","ts":%d,"seq":1,"x":%s}' % (TS, b"[" * 300 + b"]" * 300)
    assert reason_of(ELEV, deep) == "too_deep"
    assert reason_of(ELEV, deep, max_depth=1000) == "too_deep"  # a setting cannot lift the ceiling
    hundred = b'{"device_id":"GZE0000001","ts":%d,"seq":1,"x":%s}' % (TS, b"[" * 100 + b"]" * 100)
    assert reason_of(ELEV, hundred) == "too_deep"  # the default limit (32)
    env = parse_mqtt(ELEV, hundred, NOW, max_depth=150)  # the limit is the caller's setting
    assert orjson.loads(orjson.dumps(env.model_dump(mode="json")))["body"]["x"]  # and it serialises
    assert reason_of(ELEV, b'{"x":' + b"[" * 40 + b"]" * 40 + b"}") == "too_deep"


def test_publisher_level_on_reports_and_dispatch() -> None:
    maintenance = json.dumps(
        {"device_id": "GZE0000001", "ts": TS, "firm_id": "F1", "kind": "routine_15d"}
    ).encode()
    dispatch = json.dumps({"alert_id": "GZE0000001.trapped.1", "action": "ack", "by": "x", "ts": TS}).encode()
    env = parse_mqtt("sesmon/v1/reports/maintenance/firm-F1", maintenance, NOW, known_device=registry_lookup)
    assert env.publisher == "firm-F1" and env.report == "maintenance" and env.device_id == "GZE0000001"
    env = parse_mqtt("sesmon/v1/dispatch/GZE0000001.trapped.1/operator", dispatch, NOW)
    assert env.publisher == "operator" and env.alert_id == "GZE0000001.trapped.1"
    old = parse_mqtt("sesmon/v1/reports/maintenance", maintenance, NOW)  # old publishers keep working
    assert old.publisher is None
    for topic, payload in (
        ("sesmon/v1/reports/maintenance", maintenance),
        ("sesmon/v1/dispatch/GZE0000001.trapped.1", dispatch),
    ):
        assert reason_of(topic, payload, require_identity=True) == "unauthenticated"
    assert reason_of("sesmon/v1/reports/maintenance/", maintenance) == "unauthenticated"
    assert reason_of("sesmon/v1/reports/maintenance/a/b", maintenance) == "bad_topic"
