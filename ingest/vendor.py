"""Vendor adapter: GB/T 24476-style numeric terminals → the canonical sesmon v1 protocol.

Many installed lift terminals speak the numeric dialect of the government upload
schemas (domain.md §1.2–1.3): camelCase keys, service modes and door states as numbers,
faults as numeric ids from one of three code lists. Mapping them here lets such a
terminal publish directly: the bridge calls :func:`vendor_to_canonical` on anything under
``gbt24476/`` and validates the result like any other message. The format is documented in
ingest/README.md.

Topics: ``gbt24476/v1/{device_id}/status`` (real-time status) and
``gbt24476/v1/{device_id}/fault`` (fault/event, occur or recover). ``online``/``offline``
on ``gbt24476/v1/{device_id}/lwt`` is passed through as a status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from simulators.common import CST, MODE_CODE, TOPIC_ROOT, mode_value

VENDOR_ROOT = "gbt24476/v1"

MODE_NAMES = {code: name for name, code in MODE_CODE.items()}
DIRECTION = {0: "none", 1: "up", 2: "down"}
DIRECTION_CODE = {v: k for k, v in DIRECTION.items()}
# doorStatus: 0 unknown, 1 closing, 2 closed, 3 opening, 4 open, 5 locked, 6 held not fully closed
DOOR = {0: "unknown", 1: "closing", 2: "closed", 3: "opening", 4: "open", 5: "closed", 6: "open"}
DOOR_CODE = {"unknown": 0, "closing": 1, "closed": 2, "opening": 3, "open": 4}
POWER = {0: "mains", 1: "battery", 2: "off"}
POWER_CODE = {v: k for k, v in POWER.items()}

# faultType 1: GB/T 24476-2017-style list A, with the provincial (9–11) and Chongqing (91–93) extensions
LIST_A: dict[int, tuple[str, dict[str, Any]]] = {
    1: ("safety_circuit_open", {}),
    2: ("door_close_fault", {}),
    3: ("door_open_fault", {}),
    4: ("stopped_outside_door_zone", {}),
    5: ("unintended_movement", {}),
    6: ("motor_runtime_limiter", {}),
    7: ("floor_position_lost", {}),
    8: ("restart_prevention_fault", {}),
    9: ("overtravel_top", {}),
    10: ("overtravel_bottom", {}),
    11: ("trapped", {}),
    41: ("power_failure", {}),
    90: ("alarm_button", {}),
    91: ("overtravel_bottom", {}),
    92: ("overtravel_top", {}),
    93: ("trapped", {"in_door_zone": True}),
}
# list A 40, 42–47 are service-mode changes, not faults: mapped to a telemetry message
LIST_A_MODES = {40: "normal", 42: "out_of_service", 43: "inspection", 44: "fire_recall",
                45: "firefighter", 46: "emergency_power", 47: "earthquake"}  # fmt: skip
# faultType 2: retrofit-IoT list B
LIST_B: dict[int, tuple[str, dict[str, Any]]] = {
    1: ("overtravel_top", {}),
    2: ("overtravel_bottom", {}),
    3: ("overspeed", {}),
    4: ("door_open_while_running", {}),
    5: ("unintended_movement", {}),
    6: ("stopped_outside_door_zone", {}),
    7: ("trapped", {"in_door_zone": True}),
    8: ("trapped", {"in_door_zone": False}),
    9: ("power_failure", {}),
    10: ("safety_circuit_open", {}),
    11: ("door_open_fault", {}),
    12: ("door_close_fault", {}),
    16: ("overspeed", {"tier": 1.2}),
    17: ("overspeed", {"tier": 1.4}),
    21: ("alarm_button", {}),
}
# faultType 3: category+item codes (platform front-ends)
LIST_C: dict[str, tuple[str, dict[str, Any]]] = {
    "0101": ("trapped", {}),
    "0203": ("stopped_outside_door_zone", {}),
    "0204": ("overtravel_bottom", {}),
    "0205": ("overtravel_top", {}),
}
# canonical → preferred (faultType, faultId) for the simulator's vendor-speaking terminals
TO_VENDOR: dict[str, tuple[int, int]] = {
    "safety_circuit_open": (1, 1),
    "door_close_fault": (1, 2),
    "door_open_fault": (1, 3),
    "stopped_outside_door_zone": (1, 4),
    "unintended_movement": (1, 5),
    "motor_runtime_limiter": (1, 6),
    "floor_position_lost": (1, 7),
    "restart_prevention_fault": (1, 8),
    "overtravel_top": (1, 9),
    "overtravel_bottom": (1, 10),
    "trapped": (1, 11),
    "power_failure": (1, 41),
    "alarm_button": (1, 90),
    "overspeed": (2, 3),
    "door_open_while_running": (2, 4),
}


class VendorError(ValueError):
    """A vendor message that cannot be mapped; ``reason`` is a short code for dead-letter counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _time(value: Any) -> int | str:
    """``time``: epoch ms, or ``yyyyMMddHHmmss`` local (UTC+8) as the upload schemas use."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) == 14 and value.isdigit():
        dt = datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=CST)
        return dt.isoformat()
    if isinstance(value, str):
        return value  # RFC 3339 passes through; the validator judges it
    raise VendorError("bad_time", repr(value))


def _flag(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise VendorError("bad_flag", repr(value))


def vendor_to_canonical(topic: str, payload: bytes) -> tuple[str, bytes]:
    """Map one GB/T 24476-style message to a canonical ``sesmon/v1/elevator/...`` message."""
    parts = topic.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != VENDOR_ROOT:
        raise VendorError("bad_topic", topic)
    device_id, leaf = parts[2], parts[3]
    base = f"{TOPIC_ROOT}/elevator/{device_id}"
    if leaf == "lwt":
        word = payload.strip()
        if word not in (b"online", b"offline"):
            raise VendorError("bad_lwt", repr(payload[:20]))
        return f"{base}/status", word
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise VendorError("not_json", str(exc)[:100]) from None
    if not isinstance(data, dict):
        raise VendorError("not_object")
    reg = data.get("regCode", device_id)
    if reg != device_id:
        raise VendorError("device_mismatch", f"{reg!r} != {device_id!r}")
    out: dict[str, Any] = {"device_id": device_id, "ts": _time(data.get("time")), "seq": data.get("seq")}
    if leaf == "status":
        mapping = {
            "serviceMode": ("mode", lambda v: mode_value(MODE_NAMES[v])),
            "carStatus": ("moving", _flag),
            "carDirection": ("direction", lambda v: DIRECTION[v]),
            "carPosition": ("floor", lambda v: v),
            "doorZone": ("door_zone", _flag),
            "doorStatus": ("door", lambda v: DOOR[v]),
            "speed": ("speed_mps", lambda v: v),
            "load": ("load_pct", lambda v: v),
            "passengerStatus": ("occupied", _flag),
            "safeLoop": ("safety_circuit_open", _flag),
            "doorLoop": ("door_lock_circuit_open", _flag),
            "power": ("power", lambda v: POWER[v]),
            "upLimit": ("up_limit", _flag),
            "downLimit": ("down_limit", _flag),
            "runCount": ("run_count", lambda v: v),
            "doorOpenCount": ("door_cycles", lambda v: v),
        }
        for key, (name, conv) in mapping.items():
            if key in data and data[key] is not None:
                try:
                    out[name] = conv(data[key])
                except (KeyError, TypeError):
                    raise VendorError("bad_value", f"{key}={data[key]!r}") from None
        return f"{base}/telemetry", orjson.dumps(out)
    if leaf == "fault":
        ftype, fid = data.get("faultType", 1), data.get("faultId")
        if ftype == 1 and fid in LIST_A_MODES:
            out["mode"] = mode_value(LIST_A_MODES[fid])
            return f"{base}/telemetry", orjson.dumps(out)
        table: dict[Any, tuple[str, dict[str, Any]]] = {1: LIST_A, 2: LIST_B, 3: LIST_C}.get(ftype, {})  # type: ignore[assignment]
        key = str(fid).zfill(4) if ftype == 3 else fid
        if key not in table:
            raise VendorError("unmapped_code", f"faultType {ftype} faultId {fid}")
        code, extra = table[key]
        state = data.get("state", 1)
        if state not in (0, 1):
            raise VendorError("bad_state", repr(state))
        detail = {"vendor_code": f"{ftype}:{fid}", **extra}
        if "floor" in data:
            detail["floor"] = data["floor"]
        out.update({"code": code, "state": "occur" if state == 1 else "recover", "detail": detail})
        return f"{base}/event", orjson.dumps(out)
    raise VendorError("bad_topic", f"{leaf!r} is not status, fault or lwt")


def canonical_to_vendor(topic: str, body: dict[str, Any]) -> tuple[str, bytes] | None:
    """The reverse, for simulated terminals of that kind (None: no vendor form, e.g. boilers)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[2] != "elevator":
        return None
    device_id, leaf = parts[3], parts[4]
    ts = body["ts"]
    if isinstance(ts, str):
        ts = int(datetime.fromisoformat(ts).timestamp() * 1000)
    out: dict[str, Any] = {"regCode": device_id, "time": ts, "seq": body["seq"]}
    if leaf == "telemetry":
        mode = body.get("mode")
        out["serviceMode"] = mode if isinstance(mode, int) else MODE_CODE.get(str(mode), 7)
        out["carStatus"] = int(bool(body.get("moving")))
        out["carDirection"] = DIRECTION_CODE.get(body.get("direction", "none"), 0)
        out["carPosition"] = body.get("floor")
        out["doorZone"] = int(bool(body.get("door_zone")))
        out["doorStatus"] = DOOR_CODE.get(body.get("door", "unknown"), 0)
        out["speed"] = body.get("speed_mps")
        out["load"] = body.get("load_pct")
        out["passengerStatus"] = int(bool(body.get("occupied")))
        out["safeLoop"] = int(bool(body.get("safety_circuit_open")))
        out["doorLoop"] = int(bool(body.get("door_lock_circuit_open")))
        out["power"] = POWER_CODE.get(body.get("power", "mains"), 0)
        out["upLimit"] = int(bool(body.get("up_limit")))
        out["downLimit"] = int(bool(body.get("down_limit")))
        out["runCount"] = body.get("run_count")
        out["doorOpenCount"] = body.get("door_cycles")
        return f"{VENDOR_ROOT}/{device_id}/status", orjson.dumps(out)
    if leaf == "event":
        pair = TO_VENDOR.get(body["code"])
        if pair is None:
            return None
        out["faultType"], out["faultId"] = pair
        out["state"] = 1 if body["state"] == "occur" else 0
        if "floor" in body.get("detail", {}):
            out["floor"] = body["detail"]["floor"]
        return f"{VENDOR_ROOT}/{device_id}/fault", orjson.dumps(out)
    return None
