"""Vendor adapter: GB/T 24476-style numeric terminals → the canonical sesmon v1 protocol.

Many installed lift terminals speak the numeric dialect of the government upload
schemas (domain.md §1.2–1.3): camelCase keys, service modes and door states as numbers,
faults as numeric ids from one of three code lists. Mapping them here lets such a
terminal publish directly: the bridge calls :func:`vendor_to_canonical` on anything under
``gbt24476/`` and validates the result like any other message. The wire format (code
tables, topics, local time) is the contract module :mod:`sesmon.contract.gbt24476`; it is documented
in ingest/README.md.

Topics: ``gbt24476/v1/{device_id}/status`` (real-time status) and
``gbt24476/v1/{device_id}/fault`` (fault/event, occur or recover). ``online``/``offline``
on ``gbt24476/v1/{device_id}/lwt`` is passed through as a status.

Every way a payload can be wrong ends in :class:`VendorError` (never ``TypeError`` from a list
where a code was expected, never ``ValueError`` from a 13th month): a terminal's bytes must not
be able to raise anything else out of the bridge's MQTT callback.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from sesmon.contract.gbt24476 import (
    CST,
    DIRECTION,
    DIRECTION_CODE,
    DOOR,
    DOOR_CODE,
    ESCALATOR_CODES,
    ESCALATOR_MODE_CODE,
    ESCALATOR_MODE_NAMES,
    LIST_A,
    LIST_A_MODES,
    LIST_B,
    LIST_C,
    MODE_CODE,
    MODE_NAMES,
    POWER,
    POWER_CODE,
    TO_VENDOR,
    VENDOR_ROOT,
    is_escalator,
)
from sesmon.contract.schemas import TOPIC_ROOT

__all__ = [
    "LIST_A",
    "LIST_B",
    "LIST_C",
    "MALFORMED",
    "VENDOR_ROOT",
    "VendorError",
    "canonical_to_vendor",
    "vendor_to_canonical",
]

#: VendorError reasons that mean "the terminal sent a malformed value" (wrong type, bad date,
#: out-of-range code); the bridge dead-letters them all as ``bad_vendor_payload``
MALFORMED = frozenset(
    {"bad_time", "bad_flag", "bad_value", "bad_state", "bad_type", "not_object", "unencodable"}
)


class VendorError(ValueError):
    """A vendor message that cannot be mapped; ``reason`` is a short code for dead-letter counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _time(value: Any) -> int | str:
    """``time``: epoch ms, or ``yyyyMMddHHmmss`` local (UTC+8) as the upload schemas use."""
    if _int(value):
        return value
    if isinstance(value, str) and len(value) == 14 and value.isascii() and value.isdigit():
        try:
            dt = datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=CST)
        except ValueError as exc:  # month 13, February 30th, hour 25 ...
            raise VendorError("bad_time", f"{value!r}: {exc}") from None
        return dt.isoformat()
    if isinstance(value, str):
        return value  # RFC 3339 passes through; the validator judges it
    raise VendorError("bad_time", _short(value))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if _int(value) and value in (0, 1):
        return bool(value)
    raise VendorError("bad_flag", _short(value))


def _code(table: dict[int, str]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not _int(value) or value not in table:
            raise VendorError("bad_value", _short(value))
        return table[value]

    return convert


def _as_is(value: Any) -> Any:
    return value  # numbers the canonical validator judges (range, type)


STATUS_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "serviceMode": ("mode", _code(MODE_NAMES)),
    "carStatus": ("moving", _flag),
    "carDirection": ("direction", _code(DIRECTION)),
    "carPosition": ("floor", _as_is),
    "doorZone": ("door_zone", _flag),
    "doorStatus": ("door", _code(DOOR)),
    "speed": ("speed_mps", _as_is),
    "load": ("load_pct", _as_is),
    "passengerStatus": ("occupied", _flag),
    "safeLoop": ("safety_circuit_open", _flag),
    "doorLoop": ("door_lock_circuit_open", _flag),
    "power": ("power", _code(POWER)),
    "upLimit": ("up_limit", _flag),
    "downLimit": ("down_limit", _flag),
    "runCount": ("run_count", _as_is),
    "doorOpenCount": ("door_cycles", _as_is),
}


def _fault_key(ftype: Any, fid: Any) -> tuple[int, int | str]:
    """(faultType, key into its list); only ints (and 4-digit text for list C) are codes."""
    if not _int(ftype):
        raise VendorError("bad_type", f"faultType {_short(ftype)} is not an integer")
    if ftype == 3 and isinstance(fid, str) and fid.isascii() and fid.isdigit() and len(fid) <= 4:
        return ftype, fid.zfill(4)
    if not _int(fid):
        raise VendorError("bad_type", f"faultId {_short(fid)} is not an integer")
    return ftype, (str(fid).zfill(4) if ftype == 3 else fid)


def _dumps(out: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(out)
    except (TypeError, orjson.JSONEncodeError) as exc:  # nesting orjson.loads took but dumps refuses
        raise VendorError("unencodable", str(exc)[:100]) from None


#: serviceMode of an escalator or moving walk (3 is "unknown" there, not fire recall)
_ESCALATOR_MODE = _code(ESCALATOR_MODE_NAMES)


def vendor_to_canonical(topic: str, payload: bytes, *, type_code: str = "") -> tuple[str, bytes]:
    """Map one GB/T 24476-style message to a canonical ``sesmon/v1/elevator/...`` message.

    ``type_code`` is the unit's registry type code when the caller knows it: escalators and
    moving walks (33xx) number their service modes differently (domain.md §1.2). Fault codes
    need no type: the escalator codes 61–65 are their own."""
    parts = topic.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != VENDOR_ROOT:
        raise VendorError("bad_topic", _short(topic))
    device_id, leaf = parts[2], parts[3]
    base = f"{TOPIC_ROOT}/elevator/{device_id}"
    if leaf == "lwt":
        word = payload.strip()
        if word not in (b"online", b"offline"):
            raise VendorError("bad_lwt", repr(payload[:20]))
        return f"{base}/status", word
    if leaf not in ("status", "fault"):
        raise VendorError("bad_topic", f"{_short(leaf)} is not status, fault or lwt")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise VendorError("not_json", str(exc)[:100]) from None
    if not isinstance(data, dict):
        raise VendorError("not_object", f"a JSON {type(data).__name__}")
    reg = data.get("regCode", device_id)
    if reg != device_id:
        raise VendorError("device_mismatch", f"{_short(reg)} != {device_id!r}")
    out: dict[str, Any] = {"device_id": device_id, "ts": _time(data.get("time")), "seq": data.get("seq")}
    if leaf == "status":
        escalator = is_escalator(type_code)
        for key, (name, convert) in STATUS_FIELDS.items():
            value = data.get(key)
            if key == "serviceMode" and escalator:
                convert = _ESCALATOR_MODE
            if value is not None:
                try:
                    out[name] = convert(value)
                except VendorError as err:
                    raise VendorError(err.reason, f"{key}={err.detail}") from None
        return f"{base}/telemetry", _dumps(out)
    ftype, key = _fault_key(data.get("faultType", 1), data.get("faultId"))
    if ftype == 1 and key in LIST_A_MODES:
        out["mode"] = LIST_A_MODES[key]  # type: ignore[index]
        return f"{base}/telemetry", _dumps(out)
    table: dict[Any, tuple[str, dict[str, Any]]] = {1: LIST_A, 2: LIST_B, 3: LIST_C}.get(ftype, {})  # type: ignore[assignment]
    if key not in table:
        raise VendorError("unmapped_code", f"faultType {ftype} faultId {_short(data.get('faultId'))}")
    code, extra = table[key]
    state = data.get("state", 1)
    if not _int(state) or state not in (0, 1):
        raise VendorError("bad_state", _short(state))
    detail = {"vendor_code": f"{ftype}:{data.get('faultId')}", **extra}
    if "floor" in data:
        detail["floor"] = data["floor"]
    out.update({"code": code, "state": "occur" if state == 1 else "recover", "detail": detail})
    return f"{base}/event", _dumps(out)


#: canonical -> escalator code of list A, where an escalator's differs from a lift's
_ESCALATOR_TO_VENDOR = {LIST_A[code][0]: (1, code) for code in sorted(ESCALATOR_CODES)}


def canonical_to_vendor(topic: str, body: dict[str, Any], *, type_code: str = "") -> tuple[str, bytes] | None:
    """The reverse, for simulated terminals of that kind (None: no vendor form, e.g. boilers)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[2] != "elevator":
        return None
    device_id, leaf = parts[3], parts[4]
    ts = body["ts"]
    if isinstance(ts, str):
        ts = int(datetime.fromisoformat(ts).timestamp() * 1000)
    out: dict[str, Any] = {"regCode": device_id, "time": ts, "seq": body["seq"]}
    escalator = is_escalator(type_code)
    if leaf == "telemetry":
        mode = body.get("mode")
        if isinstance(mode, int):
            out["serviceMode"] = mode
        elif escalator:
            out["serviceMode"] = ESCALATOR_MODE_CODE.get(str(mode), 3)
        else:
            out["serviceMode"] = MODE_CODE.get(str(mode), 7)
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
        pair = (_ESCALATOR_TO_VENDOR if escalator else {}).get(body["code"]) or TO_VENDOR.get(body["code"])
        if pair is None:
            return None
        out["faultType"], out["faultId"] = pair
        out["state"] = 1 if body["state"] == "occur" else 0
        if "floor" in body.get("detail", {}):
            out["floor"] = body["detail"]["floor"]
        return f"{VENDOR_ROOT}/{device_id}/fault", orjson.dumps(out)
    return None
