"""Message schemas for every payload of DESIGN.md §2 and the alert of §4 (pydantic v2).

Validation is strict (a ``"true"`` string is not a bool, ``"12"`` is not a number) because a
terminal that sends wrong types is a terminal to fix, and silently coercing would hide it.
Unknown extra fields are kept, as the contract says. ``parse_mqtt`` is the single entry
point: it turns (topic, raw bytes) into an :class:`Envelope` or raises :class:`BadInput`
with a short machine-readable reason and a human-readable detail.

Reports and dispatch actions may carry their publisher's MQTT username as one more topic
level (``sesmon/v1/reports/{report}/{username}``, see :mod:`sesmon.contract.identity`); the envelope
keeps it as ``publisher`` so later stages can record who did what.
"""

from __future__ import annotations

import re
import typing
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ALERT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
TOPIC_ROOT = "sesmon/v1"

# epoch ms accepted for device time: 2000-01-01 .. 2100-01-01 (anything else is a broken clock)
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


# --------------------------------------------------------------------------- raw checks

_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)  # possessive: linear, even unterminated
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: deepest nesting ever accepted, whatever the setting says: an envelope adds two levels, and both
#: pydantic's serialiser (255) and orjson.dumps (254) refuse more than about 254 in all
JSON_DEPTH_CEILING = 200


def json_depth_exceeds(payload: bytes, limit: int) -> bool:
    """Does JSON text nest arrays/objects deeper than ``limit``? Judged on the bytes, before parsing.

    Why before: orjson.loads accepts 1,024 levels but orjson.dumps refuses more than 254, so a
    deep body parsed fine and then blew up when the envelope was serialised. Brackets inside
    strings do not count; for text that is not JSON the answer may be anything, the parser
    rejects it next. Two C passes (strip strings, keep brackets), then a walk over brackets only.
    """
    brackets = _JSON_STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr`` cut to ``limit`` characters: details quote input, and input can be 64 KB."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BadInput(Exception):
    """A message that cannot enter the pipeline; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- time


def to_epoch_ms(value: Any) -> int:
    """Device time as integer epoch milliseconds: RFC 3339 with offset, or epoch ms."""
    if isinstance(value, bool):
        raise ValueError("ts must be RFC 3339 text or integer epoch milliseconds, not a bool")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        text = value.strip()
        if not re.search(r"(Z|z|[+-]\d{2}:\d{2})$", text) or "T" not in text.upper():
            raise ValueError(f"ts {value!r} is not RFC 3339 with a time zone offset")
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is not RFC 3339: {exc}") from None
        ms = int(parsed.timestamp() * 1000)
    else:
        raise ValueError("ts must be RFC 3339 text or integer epoch milliseconds")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise ValueError(f"ts {value!r} is outside 2000..2100")
    return ms


EpochMs = Annotated[int, BeforeValidator(to_epoch_ms)]


# --------------------------------------------------------------------------- enums


class Kind(StrEnum):
    elevator = "elevator"
    boiler = "boiler"


class ElevatorMode(StrEnum):
    """GB/T 24476 service modes; the numeric code is in :data:`MODE_CODES`."""

    normal = "normal"
    inspection = "inspection"
    out_of_service = "out_of_service"
    fire_recall = "fire_recall"
    firefighter = "firefighter"
    emergency_power = "emergency_power"
    earthquake = "earthquake"
    unknown = "unknown"


MODE_CODES: dict[int, ElevatorMode] = {
    0: ElevatorMode.out_of_service,
    1: ElevatorMode.normal,
    2: ElevatorMode.inspection,
    3: ElevatorMode.fire_recall,
    4: ElevatorMode.firefighter,
    5: ElevatorMode.emergency_power,
    6: ElevatorMode.earthquake,
    7: ElevatorMode.unknown,
}


class ElevatorEventCode(StrEnum):
    safety_circuit_open = "safety_circuit_open"
    door_close_fault = "door_close_fault"
    door_open_fault = "door_open_fault"
    stopped_outside_door_zone = "stopped_outside_door_zone"
    unintended_movement = "unintended_movement"
    motor_runtime_limiter = "motor_runtime_limiter"
    floor_position_lost = "floor_position_lost"
    restart_prevention_fault = "restart_prevention_fault"
    overtravel_top = "overtravel_top"
    overtravel_bottom = "overtravel_bottom"
    overspeed = "overspeed"
    door_open_while_running = "door_open_while_running"
    trapped = "trapped"
    power_failure = "power_failure"
    alarm_button = "alarm_button"
    # escalators and moving walks (type codes 3310 / 3320), domain.md §1.3 provincial 61–65
    reversal = "reversal"
    missing_step = "missing_step"
    handrail_speed_fault = "handrail_speed_fault"
    emergency_stop = "emergency_stop"


class BoilerEventCode(StrEnum):
    flame_failure = "flame_failure"
    burner_lockout = "burner_lockout"
    low_water_trip = "low_water_trip"
    overpressure_trip = "overpressure_trip"
    safety_valve_lift = "safety_valve_lift"
    gas_leak = "gas_leak"
    pump_fault = "pump_fault"


EVENT_CODES: dict[Kind, frozenset[str]] = {
    Kind.elevator: frozenset(ElevatorEventCode),
    Kind.boiler: frozenset(BoilerEventCode),
}


class Level(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


# --------------------------------------------------------------------------- device messages

_STRICT_OPEN = ConfigDict(extra="allow", strict=True, frozen=False)


class DeviceMessage(BaseModel):
    """Fields every device message carries."""

    model_config = _STRICT_OPEN

    device_id: str = Field(pattern=DEVICE_ID_RE.pattern)
    ts: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)]
    seq: int = Field(ge=0)


NonNeg = Annotated[float, Field(ge=0)]


class ElevatorTelemetry(DeviceMessage):
    mode: Annotated[ElevatorMode, Field(strict=False)] | None = None  # strict enums refuse their own text
    moving: bool | None = None
    direction: Literal["up", "down", "none"] | None = None
    floor: int | None = Field(None, ge=-20, le=300)
    door_zone: bool | None = None
    door: Literal["closed", "opening", "open", "closing", "unknown"] | None = None
    speed_mps: float | None = Field(None, ge=0, le=25)
    load_pct: float | None = Field(None, ge=0, le=300)
    occupied: bool | None = None
    safety_circuit_open: bool | None = None
    door_lock_circuit_open: bool | None = None
    power: Literal["mains", "battery", "off"] | None = None
    up_limit: bool | None = None
    down_limit: bool | None = None
    run_count: int | None = Field(None, ge=0)
    door_cycles: int | None = Field(None, ge=0)
    #: machine brake: lifted (open, the car may move) or applied (holding)
    brake: Literal["lifted", "applied"] | None = None
    # escalators and moving walks (type codes 3310 / 3320; GB 16899-2011): the direction the unit is
    # set to run (a reversal is ``direction`` against it), handrail speeds (0..+2 % of step speed),
    # the missing step/pallet device and the emergency stop switches
    set_direction: Literal["up", "down"] | None = None
    handrail_left_mps: float | None = Field(None, ge=0, le=25)
    handrail_right_mps: float | None = Field(None, ge=0, le=25)
    missing_step: bool | None = None
    emergency_stop: bool | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_code(cls, value: Any) -> Any:
        # Terminals speaking GB/T 24476 may send the numeric service-mode code.
        if isinstance(value, int) and not isinstance(value, bool):
            if value not in MODE_CODES:
                raise ValueError(f"unknown service-mode code {value}")
            return MODE_CODES[value]
        return value


class BoilerTelemetry(DeviceMessage):
    pressure_mpa: float | None = Field(None, ge=-0.1, le=30)
    water_level_mm: float | None = Field(None, ge=-2000, le=2000)
    steam_temp_c: float | None = Field(None, ge=-50, le=700)
    outlet_temp_c: float | None = Field(None, ge=-50, le=400)
    return_temp_c: float | None = Field(None, ge=-50, le=400)
    feedwater_temp_c: float | None = Field(None, ge=-50, le=400)
    steam_flow_tph: NonNeg | None = None
    feedwater_flow_tph: NonNeg | None = None
    flue_gas_temp_c: float | None = Field(None, ge=-50, le=1500)
    o2_pct: float | None = Field(None, ge=0, le=21)
    fuel_flow_nm3h: NonNeg | None = None
    burner: Literal["off", "purge", "ignition", "low_fire", "high_fire", "lockout"] | None = None


class DeviceEvent(DeviceMessage):
    code: str
    state: Literal["occur", "recover"]
    detail: dict[str, Any] = Field(default_factory=dict)


class DeviceStatus(DeviceMessage):
    status: Literal["online", "offline"]


TELEMETRY_MODELS: dict[Kind, type[DeviceMessage]] = {
    Kind.elevator: ElevatorTelemetry,
    Kind.boiler: BoilerTelemetry,
}

# --------------------------------------------------------------------------- reports, dispatch


class AccidentReport(BaseModel):
    model_config = _STRICT_OPEN
    report_id: str = Field(min_length=1, max_length=128)
    device_id: str = Field(pattern=DEVICE_ID_RE.pattern)
    ts: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)]
    grade: Literal["general", "larger", "major", "extremely_serious"]
    deaths: int = Field(ge=0)
    serious_injuries: int = Field(ge=0)
    description: str = ""


class MaintenanceReport(BaseModel):
    model_config = _STRICT_OPEN
    device_id: str = Field(pattern=DEVICE_ID_RE.pattern)
    ts: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)]
    firm_id: str = Field(min_length=1)
    kind: Literal["routine_15d", "quarterly", "semiannual", "annual", "repair"]
    start: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)] | None = None
    end: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)] | None = None


class InspectionReport(BaseModel):
    model_config = _STRICT_OPEN
    device_id: str = Field(pattern=DEVICE_ID_RE.pattern)
    ts: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)]
    result: Literal["pass", "fail"]
    next_due: Annotated[date, Field(strict=False)]


#: What a hidden-danger report may do (rules/hazards.py has the lifecycle, sesmon.contract.identity who may)
HazardAction = Literal[
    "rectified",
    "verified",
    "reopened",
    "supervise",
    "withdrawn",
    "regrade",
    "stop_use",
    "return_to_service",
]
HAZARD_ACTIONS: tuple[str, ...] = typing.get_args(HazardAction)
#: the unit's maintenance firm reports its own work, and may stop a unit's use (停用) itself
FIRM_HAZARD_ACTIONS = ("rectified", "stop_use")
#: the inspection body / regulator does everything but the rectification
INSPECTOR_HAZARD_ACTIONS = tuple(a for a in HAZARD_ACTIONS if a != "rectified")


class HazardReport(BaseModel):
    model_config = _STRICT_OPEN
    hazard_id: str = Field(min_length=1, max_length=128)
    action: HazardAction
    by: str = Field(min_length=1)
    ts: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)]
    note: str = ""


REPORT_MODELS: dict[str, type[BaseModel]] = {
    "accident": AccidentReport,
    "maintenance": MaintenanceReport,
    "inspection": InspectionReport,
    "hazard": HazardReport,
}

DISPATCH_ACTIONS = (
    "ack",
    "dispatched",
    "accepted",
    "on_site",
    "freed",
    "restored",
    "closed",
    "false_alarm",
    "escalate",
)


class DispatchAction(BaseModel):
    model_config = _STRICT_OPEN
    alert_id: str = Field(pattern=ALERT_ID_RE.pattern)
    action: Literal[
        "ack", "dispatched", "accepted", "on_site", "freed", "restored", "closed", "false_alarm", "escalate"
    ]
    by: str = Field(min_length=1)
    ts: Annotated[int, BeforeValidator(to_epoch_ms), Field(strict=False)]


# --------------------------------------------------------------------------- alerts (output)


class Receiver(BaseModel):
    # rescue (level 2: nearest rescue station) and fire (level 3: 119): issue 10's escalation
    kind: Literal["firm", "user_unit", "centre", "rescue", "fire", "regulator"]
    id: str


class Alert(BaseModel):
    """One alert as the rules emit it and the alerts stage routes it (DESIGN.md §4).

    ``alert_id`` is derived from the unit, the rule and the event time the condition began,
    so a worker that re-processes the same readings after a restart emits the same id and
    the alerts stage can drop the repeat.
    """

    alert_id: str
    rule: str
    rule_version: str = ""
    catalogue_sha: str = ""  # first 16 hex of the SHA-256 of the catalogue file that decided it (replay)
    level: Level
    device_id: str
    kind: Kind
    district: str = ""
    firm_id: str = ""
    user_unit_id: str = ""
    opened_at: int  # event time (epoch ms) the condition began
    changed_at: int  # event time of this state change
    state: Literal["firing", "resolved"]
    escalation: int = Field(0, ge=0, le=3)
    title: str = ""
    receivers: list[Receiver] = Field(default_factory=list)
    evidence: list[dict[str, Any]] = Field(default_factory=list)

    def dedup_key(self) -> str:
        """What makes a delivery distinct: the same key is never sent twice."""
        return f"{self.alert_id}|{self.state}|{self.escalation}"


# --------------------------------------------------------------------------- envelope

MessageType = Literal["telemetry", "event", "status", "report", "dispatch"]

#: Kafka logical stream per message type (see Settings.topic)
STREAM_OF: dict[str, str] = {
    "telemetry": "telemetry",
    "event": "events",
    "status": "status",
    "report": "reports",
    "dispatch": "dispatch",
}


class Envelope(BaseModel):
    """A validated message as it travels on Kafka: body normalised, provenance kept."""

    type: MessageType
    kind: Kind | None = None  # device messages only
    device_id: str | None = None
    report: str | None = None  # report type for type == "report"
    alert_id: str | None = None  # dispatch only
    mqtt_topic: str
    received_ms: int  # server (ingest) time
    ts: int  # device / reporter time, epoch ms
    seq: int | None = None
    body: dict[str, Any]
    #: MQTT username the report or dispatch action was published under (identity topics), else None
    publisher: str | None = None

    @property
    def key(self) -> str:
        """Kafka key: device_id where there is one (co-partitions a unit's streams)."""
        return self.device_id or self.alert_id or self.report or ""


# --------------------------------------------------------------------------- parsing


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def parse_mqtt(
    topic: str,
    payload: bytes,
    received_ms: int,
    *,
    known_device: Any = None,
    max_bytes: int = 64 * 1024,
    max_depth: int = 32,
    require_identity: bool = False,
) -> Envelope:
    """Validate one MQTT message and return its envelope, or raise :class:`BadInput`.

    ``known_device`` is a callable ``device_id -> kind | None`` (the registry); when given,
    unknown units and units published under the wrong kind are rejected. With
    ``require_identity`` a report or dispatch action without the publisher's username as
    its last topic level is refused (``unauthenticated``); without it both forms pass.
    Deciding *whether* that publisher may say this is the caller's job (it needs the registry).
    """
    if len(payload) > max_bytes:
        raise BadInput("oversize", f"{len(payload)} bytes > {max_bytes}")
    parts = topic.split("/")
    if len(parts) < 3 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise BadInput("bad_topic", f"{short_repr(topic)} is not under {TOPIC_ROOT}/")
    head = parts[2]
    if head in ("elevator", "boiler") and len(parts) == 5:
        return _parse_device(
            topic, Kind(head), parts[3], parts[4], payload, received_ms, known_device, max_depth
        )
    if head in ("reports", "dispatch") and len(parts) in (4, 5):
        publisher = parts[4] if len(parts) == 5 else None
        if publisher == "" or (publisher is None and require_identity):
            what = "{report}" if head == "reports" else "{alert_id}"
            raise BadInput("unauthenticated", f"publish on {TOPIC_ROOT}/{head}/{what}/{{your username}}")
        if head == "reports":
            env = _parse_report(topic, parts[3], payload, received_ms, known_device, max_depth)
        else:
            env = _parse_dispatch(topic, parts[3], payload, received_ms, max_depth)
        env.publisher = publisher
        return env
    raise BadInput("bad_topic", f"{short_repr(topic)} matches no sesmon/v1 topic")


def _load_json(payload: bytes, max_depth: int) -> Any:
    limit = min(max_depth, JSON_DEPTH_CEILING)
    if json_depth_exceeds(payload, limit):
        raise BadInput("too_deep", f"JSON nested deeper than {limit} levels")
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadInput("not_json", str(exc)[:200]) from None


def _validate(model: type[BaseModel], data: Any) -> BaseModel:
    if not isinstance(data, dict):
        raise BadInput("not_object", f"payload is a JSON {type(data).__name__}, not an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput("invalid", _first_error(exc)) from None


def _check_known(known_device: Any, device_id: str, kind: Kind | None) -> None:
    if known_device is None:
        return
    registered_kind = known_device(device_id)
    if registered_kind is None:
        raise BadInput("unknown_device", f"{device_id} is not in the registry")
    if kind is not None and registered_kind != kind:
        raise BadInput("wrong_kind", f"{device_id} is registered as {registered_kind}, published as {kind}")


def _parse_device(
    topic: str,
    kind: Kind,
    topic_device: str,
    leaf: str,
    payload: bytes,
    received_ms: int,
    known_device: Any,
    max_depth: int,
) -> Envelope:
    if not DEVICE_ID_RE.match(topic_device):
        raise BadInput(
            "bad_topic", f"device id {short_repr(topic_device)} in topic is not [A-Za-z0-9_-]{{1,64}}"
        )
    if leaf == "status" and payload.strip() in (b"online", b"offline"):
        # Last Will messages are fixed at connect time, so a bare word is accepted;
        # device time is then unknown and the receive time stands in for it.
        _check_known(known_device, topic_device, kind)
        status = payload.strip().decode()
        return Envelope(
            type="status",
            kind=kind,
            device_id=topic_device,
            mqtt_topic=topic,
            received_ms=received_ms,
            ts=received_ms,
            seq=None,
            body={"device_id": topic_device, "status": status, "ts": received_ms, "lwt": True},
        )
    models: dict[str, type[DeviceMessage]] = {
        "telemetry": TELEMETRY_MODELS[kind],
        "event": DeviceEvent,
        "status": DeviceStatus,
    }
    model = models.get(leaf)
    if model is None:
        raise BadInput("bad_topic", f"{short_repr(leaf)} is not telemetry, event or status")
    data = _load_json(payload, max_depth)
    msg = _validate(model, data)
    assert isinstance(msg, DeviceMessage)
    if msg.device_id != topic_device:
        raise BadInput(
            "device_mismatch", f"body device_id {short_repr(msg.device_id)} != topic {topic_device!r}"
        )
    if isinstance(msg, DeviceEvent) and msg.code not in EVENT_CODES[kind]:
        raise BadInput("unknown_code", f"{short_repr(msg.code)} is not a {kind} event code")
    _check_known(known_device, topic_device, kind)
    return Envelope(
        type="event" if leaf == "event" else leaf,  # type: ignore[arg-type]
        kind=kind,
        device_id=msg.device_id,
        mqtt_topic=topic,
        received_ms=received_ms,
        ts=msg.ts,
        seq=msg.seq,
        body=msg.model_dump(mode="json", exclude_none=True),
    )


def hazard_device_id(hazard_id: str) -> str | None:
    """The unit a sesmon hazard id (``HZ.{device_id}.{source}.{opened_ms}``) belongs to.

    Hazard reports carry only the hazard id; routing them by this unit keeps them on the
    same Kafka partition as the unit's state.
    """
    parts = hazard_id.split(".")
    if len(parts) != 4 or parts[0] != "HZ" or not DEVICE_ID_RE.match(parts[1]):
        return None
    return parts[1]


def _parse_report(
    topic: str, report: str, payload: bytes, received_ms: int, known_device: Any, max_depth: int
) -> Envelope:
    model = REPORT_MODELS.get(report)
    if model is None:
        raise BadInput("bad_topic", f"{short_repr(report)} is not one of {sorted(REPORT_MODELS)}")
    msg = _validate(model, _load_json(payload, max_depth))
    device_id = getattr(msg, "device_id", None)
    if isinstance(msg, HazardReport):
        device_id = hazard_device_id(msg.hazard_id)
        if device_id is None:
            raise BadInput(
                "unknown_hazard", f"{short_repr(msg.hazard_id)} is not a sesmon id HZ.<unit>.<source>.<ms>"
            )
    if device_id is not None:
        _check_known(known_device, device_id, None)
    return Envelope(
        type="report",
        report=report,
        device_id=device_id,
        mqtt_topic=topic,
        received_ms=received_ms,
        ts=msg.ts,  # type: ignore[attr-defined]
        body=msg.model_dump(mode="json", exclude_none=True),
    )


def _parse_dispatch(topic: str, alert_id: str, payload: bytes, received_ms: int, max_depth: int) -> Envelope:
    msg = _validate(DispatchAction, _load_json(payload, max_depth))
    assert isinstance(msg, DispatchAction)
    if msg.alert_id != alert_id:
        raise BadInput(
            "alert_mismatch", f"body alert_id {short_repr(msg.alert_id)} != topic {short_repr(alert_id)}"
        )
    return Envelope(
        type="dispatch",
        alert_id=alert_id,
        mqtt_topic=topic,
        received_ms=received_ms,
        ts=msg.ts,
        body=msg.model_dump(mode="json", exclude_none=True),
    )
