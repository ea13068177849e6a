"""The GB/T 24476-style wire format of numeric lift terminals: topics, code tables, local time.

A contract, like :mod:`sesmon.contract.schemas`: the ingest adapter (``ingest/vendor.py``) reads it to
map such terminals onto the canonical protocol, and simulated terminals of that kind write
it. Kept here, not in ``simulators/``, because production code must not import the
simulators. The format is documented in ``ingest/README.md``.
"""

from __future__ import annotations

from typing import Any

from sesmon.contract.schemas import MODE_CODES
from sesmon.contract.time import LOCAL_TZ

#: topics ``gbt24476/v1/{device_id}/status|fault|lwt``
VENDOR_ROOT = "gbt24476/v1"
#: ``time`` as ``yyyyMMddHHmmss`` is Beijing time (UTC+8), as the upload schemas use it
CST = LOCAL_TZ

#: serviceMode code -> canonical mode name, and back (GB/T 24476 service modes)
MODE_NAMES: dict[int, str] = {code: mode.value for code, mode in MODE_CODES.items()}
MODE_CODE: dict[str, int] = {name: code for code, name in MODE_NAMES.items()}
#: an escalator's serviceMode has its own, shorter list: 0 stop, 1 normal, 2 inspection, 3 unknown
#: (domain.md §1.2) — 3 is *not* fire recall there
ESCALATOR_MODE_NAMES: dict[int, str] = {0: "out_of_service", 1: "normal", 2: "inspection", 3: "unknown"}
ESCALATOR_MODE_CODE: dict[str, int] = {name: code for code, name in ESCALATOR_MODE_NAMES.items()}


def is_escalator(type_code: str) -> bool:
    """Escalator (3310) or moving walk (3320): type codes 33xx of the 目录 (domain.md §1.1)."""
    return type_code.startswith("33")


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
    # escalators and moving walks (provincial schema 61–65, domain.md §1.3); the names are the
    # events the catalogue's rules listen to (safety circuit and restart prevention are shared with lifts)
    61: ("safety_circuit_open", {}),
    62: ("overspeed", {}),
    63: ("reversal", {}),
    64: ("missing_step", {}),
    65: ("restart_prevention_fault", {}),
}
#: escalator codes of list A (61–65): only escalators and moving walks send them
ESCALATOR_CODES = frozenset({61, 62, 63, 64, 65})
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
# canonical -> preferred (faultType, faultId) for terminals (real or simulated) that speak this dialect
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
    "reversal": (1, 63),
    "missing_step": (1, 64),
}
