"""Vendor adapter: GB/T 24476-style numeric payloads map onto the canonical schema."""

from __future__ import annotations

import orjson
import pytest

from ingest.vendor import LIST_A, LIST_B, LIST_C, VendorError, canonical_to_vendor, vendor_to_canonical
from sesmon.contract.schemas import parse_mqtt
from simulators.engine import FleetSim, SimOptions
from simulators.fleet import generate_fleet

NOW = 1_795_000_000_000
UNMAPPED = (
    b'{"regCode":"E1","time":1,"seq":1,"faultType":2,"faultId":14}'  # 14 stuck button: no canonical code
)


def test_status_maps_every_field() -> None:
    raw = {"regCode": "31104401062015000123", "time": "20261122093015", "seq": 9, "serviceMode": 2,
           "carStatus": 1, "carDirection": 2, "carPosition": -1, "doorZone": 0, "doorStatus": 4, "speed": 1.6,
           "load": 35.0, "passengerStatus": 1, "safeLoop": 0, "doorLoop": 1, "power": 1, "upLimit": 0,
           "downLimit": 0, "runCount": 12345, "doorOpenCount": 23456}  # fmt: skip
    topic, payload = vendor_to_canonical("gbt24476/v1/31104401062015000123/status", orjson.dumps(raw))
    assert topic == "sesmon/v1/elevator/31104401062015000123/telemetry"
    env = parse_mqtt(topic, payload, NOW)
    b = env.body
    assert b["mode"] == "inspection" and b["moving"] is True and b["direction"] == "down" and b["floor"] == -1
    assert b["door_zone"] is False and b["door"] == "open" and b["door_lock_circuit_open"] is True
    assert b["power"] == "battery" and b["run_count"] == 12345 and b["door_cycles"] == 23456
    assert env.ts == 1_795_311_015_000  # 2026-11-22 09:30:15 +08:00


@pytest.mark.parametrize(
    ("ftype", "fid", "code", "extra"),
    [(1, 5, "unintended_movement", {}), (1, 11, "trapped", {}), (1, 93, "trapped", {"in_door_zone": True}),
     (2, 8, "trapped", {"in_door_zone": False}), (2, 4, "door_open_while_running", {}),
     (2, 3, "overspeed", {}), (3, "0205", "overtravel_top", {}), (1, 90, "alarm_button", {}),
     (1, 41, "power_failure", {})],
)  # fmt: skip
def test_fault_codes_from_three_lists(ftype: int, fid: object, code: str, extra: dict) -> None:
    raw = {"regCode": "E1", "time": NOW, "seq": 3, "faultType": ftype, "faultId": fid, "state": 1, "floor": 7}
    topic, payload = vendor_to_canonical("gbt24476/v1/E1/fault", orjson.dumps(raw))
    env = parse_mqtt(topic, payload, NOW)
    assert env.type == "event" and env.body["code"] == code and env.body["state"] == "occur"
    assert env.body["detail"]["floor"] == 7 and env.body["detail"]["vendor_code"] == f"{ftype}:{fid}"
    for k, v in extra.items():
        assert env.body["detail"][k] == v


def test_mode_change_codes_and_lwt() -> None:
    raw = {"regCode": "E1", "time": NOW, "seq": 4, "faultType": 1, "faultId": 44, "state": 1}
    topic, payload = vendor_to_canonical("gbt24476/v1/E1/fault", orjson.dumps(raw))
    assert parse_mqtt(topic, payload, NOW).body["mode"] == "fire_recall"
    topic, payload = vendor_to_canonical("gbt24476/v1/E1/lwt", b"offline")
    assert parse_mqtt(topic, payload, NOW).body["status"] == "offline"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [("gbt24476/v1/E1/fault", UNMAPPED, "unmapped_code"),
     ("gbt24476/v1/E1/status", b'{"regCode":"E2","time":1,"seq":1}', "device_mismatch"),
     ("gbt24476/v1/E1/status", b"{oops", "not_json"),
     ("gbt24476/v1/E1/status", b'{"regCode":"E1","time":1,"seq":1,"doorStatus":9}', "bad_value"),
     ("other/E1/status", b"{}", "bad_topic")],
)  # fmt: skip
def test_unmappable_input_raises_with_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(VendorError) as err:
        vendor_to_canonical(topic, payload)
    assert err.value.reason == reason


def test_round_trip_of_a_simulated_stream() -> None:
    units = generate_fleet(5, 0, seed=51)
    sim = FleetSim(
        units, seed=51, options=SimOptions(faults="background", fault_rate_multiplier=20_000, human=False)
    )
    msgs = sim.run_for(3600)
    converted = 0
    for m in msgs:
        if m.leaf not in ("telemetry", "event") or not isinstance(m.body, dict):
            continue
        vendor = canonical_to_vendor(m.topic, m.body)
        if vendor is None:
            continue
        topic, payload = vendor_to_canonical(*vendor)
        assert topic == m.topic
        back = parse_mqtt(topic, payload, m.t).body
        orig = parse_mqtt(m.topic, m.payload(), m.t).body
        if m.leaf == "event":
            assert (back["code"], back["state"]) == (orig["code"], orig["state"])
        else:
            for key in ("mode", "moving", "floor", "door", "speed_mps", "occupied", "run_count"):
                assert back[key] == orig[key]
        converted += 1
    assert converted > 500
    assert set(LIST_A) and set(LIST_B) and set(LIST_C)


GOOD_FAULT = {"regCode": "E1", "time": NOW, "seq": 3, "faultType": 1, "faultId": 11, "state": 1}
GOOD_STATUS = {"regCode": "E1", "time": NOW, "seq": 3, "serviceMode": 1, "carStatus": 0}


@pytest.mark.parametrize(
    ("leaf", "field", "value"),
    [("fault", "faultId", [11, 12]), ("fault", "faultId", {"id": 11}), ("fault", "faultId", 11.0),
     ("fault", "faultId", True), ("fault", "faultId", "eleven"), ("fault", "faultType", {"list": "A"}),
     ("fault", "faultType", [1]), ("fault", "faultType", "1"), ("fault", "faultType", True),
     ("fault", "time", "20261322093015"), ("fault", "time", "20260230120000"),
     ("fault", "time", "20261122250000"), ("fault", "time", [2026]), ("fault", "time", 1.5e12),
     ("fault", "state", [1]), ("fault", "state", 5), ("status", "serviceMode", [1]),
     ("status", "serviceMode", "1"), ("status", "serviceMode", 99), ("status", "carStatus", 2),
     ("status", "carStatus", "1"), ("status", "doorStatus", {"open": 1}), ("status", "power", 1.0),
     ("status", "time", {"t": 1})],
)  # fmt: skip
def test_malformed_values_are_vendor_errors_never_crashes(leaf: str, field: str, value: object) -> None:
    """Lists and objects where codes belong, impossible dates: a VendorError the bridge dead-letters
    as ``bad_vendor_payload`` (a TypeError or ValueError here used to kill the MQTT thread)."""
    from ingest.vendor import MALFORMED

    body = {**(GOOD_FAULT if leaf == "fault" else GOOD_STATUS), field: value}
    with pytest.raises(VendorError) as err:
        vendor_to_canonical(f"gbt24476/v1/E1/{leaf}", orjson.dumps(body))
    assert err.value.reason in MALFORMED, err.value.reason


def test_production_code_does_not_import_the_simulators() -> None:
    import subprocess
    import sys

    probe = "import sys, ingest.bridge; print(sorted(m for m in sys.modules if m.startswith('simulators')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
