"""Ingest's fast validation path gives exactly what the pydantic path gives, or steps aside.

``device_envelope`` either returns the envelope bytes ``parse_mqtt`` + ``model_dump`` would
produce, byte for byte, or None (the bridge then runs ``parse_mqtt``, which accepts or rejects
with its reason); ``device_envelope_dict`` gives the same envelope as a dict, and
``device_envelope_text`` (the replay's) the same from the payload as text. So
for every input: fast accepted => slow accepted with the same bytes; fast never rejects by
itself, hence a rejection always carries the slow path's reason. Hypothesis generates the
bodies: valid, nearly valid, wrong JSON types (bools for ints, floats for ints, ints for
floats), huge ints, NaN, unicode and lone surrogates, extra fields, nested values, nulls,
duplicate keys, shuffled keys, odd topics and unregistered units.
"""

from __future__ import annotations

import json
import random
import types
import typing
from typing import Any

import annotated_types
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import field_validator

from sesmon.contract.fast_envelope import SPECS, device_envelope, device_envelope_dict, device_envelope_text
from sesmon.contract.schemas import (
    EVENT_CODES,
    MODE_CODES,
    TELEMETRY_MODELS,
    BadInput,
    DeviceEvent,
    DeviceStatus,
    ElevatorMode,
    ElevatorTelemetry,
    Kind,
    parse_mqtt,
)
from sesmon.runtime.kafka import dumps

TS = 1_795_300_000_000
REGISTRY = {"E1": Kind.elevator, "E2": Kind.elevator, "B1": Kind.boiler, "B-2_x": Kind.boiler}
MODELS = {"event": DeviceEvent, "status": DeviceStatus}


def slow(topic: str, payload: bytes, received_ms: int, **kwargs: Any) -> tuple[str, Any]:
    """What the bridge did before: parse_mqtt, then the envelope's JSON (bridge._decide)."""
    try:
        env = parse_mqtt(topic, payload, received_ms, **kwargs)
    except BadInput as bad:
        return "bad", bad.reason
    except Exception as exc:  # a slow-path bug: the fast path must not have accepted it either
        return "error", type(exc).__name__
    return "ok", (env, dumps(env.model_dump(mode="json")))


def assert_same(topic: str, payload: bytes, received_ms: int = TS + 5, **kwargs: Any) -> bool:
    """fast accepted => slow accepted, same bytes; returns whether the fast path took it."""
    kwargs.setdefault("known_device", REGISTRY.get)
    fast = device_envelope(topic, payload, received_ms, **kwargs)
    as_dict = device_envelope_dict(topic, payload, received_ms, **kwargs)  # the replay's: same decision
    try:  # the replay's on archived text (valid UTF-8 only: other payloads are archived as base64)
        as_text = device_envelope_text(topic, payload.decode(), received_ms, **kwargs)
    except UnicodeDecodeError:
        as_text = as_dict
    assert (as_text is None) == (as_dict is None) and dumps(as_text) == dumps(as_dict), (topic, payload)
    outcome, result = slow(topic, payload, received_ms, **kwargs)
    if fast is None:
        assert as_dict is None, f"the dict path took what the bytes path did not: {topic} {payload!r}"
        return False
    assert as_dict is not None and dumps(as_dict) == fast.value and as_dict == orjson.loads(fast.value)
    assert outcome == "ok", f"fast accepted what the slow path calls {result}: {topic} {payload!r}"
    env, value = result
    assert fast.value == value, f"\nfast {fast.value!r}\nslow {value!r}"
    assert (fast.type, fast.device_id, fast.ts) == (env.type, env.key, env.ts)
    return True


# --------------------------------------------------------------------------- strategies

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-5, 400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-3000, 3000),
    st.sampled_from([0.0, -0.0, 1.0, 25.0, 25.000001, 1e16, 1e-7, 2.0**64]),
    st.text(max_size=8),
    st.sampled_from([*ElevatorMode, "up", "down", "none", "closed", "online", "offline", "occur", "trapped"]),
)
#: True about one time in ten (sampled_from draws evenly; hypothesis favours the ends of integer ranges)
RARELY = st.sampled_from([False] * 9 + [True])
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _field_values(annotation: Any, metadata: list[Any], draw_edge: bool) -> st.SearchStrategy[Any]:
    """Values likely to be valid for a field, and now and then just past its edges, by its annotation."""
    inner = annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(inner) is typing.Annotated:
        inner, *extra = typing.get_args(inner)
        metadata = [*metadata, *(m for e in extra for m in getattr(e, "metadata", []))]
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), -1000)
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), 10**6)
    if inner is bool:
        return st.booleans()
    if inner is int:
        edges = st.sampled_from([low - 1, low, high, high + 1, 2**63, 2**64 - 1])
        return edges if draw_edge else st.integers(int(low), int(high))
    if inner is float:
        edges = st.sampled_from([low - 0.001, low, high, high + 1e-9, -0.0, int(low), int(high) + 1, 1e300])
        inside = st.floats(low, high, allow_subnormal=False)
        return edges if draw_edge else st.one_of(inside, inside, st.integers(int(low) + 1, int(high)))
    if typing.get_origin(inner) is typing.Literal:
        return st.sampled_from(typing.get_args(inner))
    if inner is ElevatorMode:
        return st.one_of(st.sampled_from(list(ElevatorMode)), st.integers(-1, 9))
    if inner is dict[str, Any]:
        return st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3)
    if inner is str:
        return st.text(max_size=8)
    return JSON_VALUES


@st.composite
def topics(draw: st.DrawFn) -> tuple[str, str, str]:
    """(topic, kind, leaf): mostly a registered unit under its own kind, sometimes anything but."""
    device, kind = draw(st.sampled_from(list(REGISTRY.items())))
    kind, leaf = kind.value, draw(st.sampled_from(["telemetry", "telemetry", "event", "status"]))
    if draw(RARELY):
        kind = draw(st.sampled_from(["elevator", "boiler", "lift"]))
        leaf = draw(st.sampled_from(["telemetry", "event", "status", "report", "statu"]))
        device = draw(st.sampled_from([*REGISTRY, "NOPE", "E1\n", "", "x" * 65, "ü1", "E1 "]))
    topic = f"sesmon/v1/{kind}/{device}/{leaf}"
    if draw(RARELY):
        topic = draw(st.sampled_from([f"{topic}/x", f"sesmon/v2/{kind}/{device}/{leaf}", f"/{topic}"]))
    return topic, kind, leaf


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes, dict[str, Any]]:
    topic, kind, leaf = draw(topics())
    device = topic.split("/")[3] if topic.count("/") >= 4 else "E1"
    model = MODELS.get(leaf) or TELEMETRY_MODELS.get(
        Kind(kind) if kind in Kind.__members__ else Kind.elevator
    )
    assert model is not None
    noise = draw(st.sampled_from([0, 0, 1, 5, 20]))  # percent of fields made absent, null or anything
    pairs: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        if name == "device_id":
            value = draw(st.sampled_from([device] * 20 + [*REGISTRY, 5, None]))
        elif name == "ts":
            odd = [946_684_800_000, 4_102_444_800_000, 4_102_444_800_001, 0, -1, True, float(TS)]
            odd += ["2026-11-22T09:30:15+08:00", "2026-11-22T09:30:15Z", "now"]
            value = draw(st.integers(TS - 10**9, TS + 10**9) if not draw(RARELY) else st.sampled_from(odd))
        elif name == "code" and leaf == "event":
            codes = sorted(EVENT_CODES[Kind.elevator] | EVENT_CODES[Kind.boiler])
            value = draw(st.one_of(st.sampled_from(codes), st.sampled_from(codes), JSON_SCALARS))
        else:
            value = draw(_field_values(info.annotation, list(info.metadata), draw(RARELY)))
        if not info.is_required() and draw(st.booleans()):
            continue  # optional fields are often absent
        if draw(st.sampled_from(range(100))) < noise:
            mutation = draw(st.integers(0, 2))
            if mutation == 0:
                continue  # absent (a required one: invalid)
            value = None if mutation == 1 else draw(JSON_VALUES)
        pairs.append((name, value))
    if draw(st.sampled_from(range(4))) == 0:
        extra_keys = st.one_of(
            st.text(max_size=6), st.sampled_from(["_x", "model_config", "seq", "ts", "zz"])
        )
        pairs += draw(st.lists(st.tuples(extra_keys, JSON_VALUES), max_size=3))
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    return topic, _encode(pairs, draw(st.sampled_from(range(20)))), {"pairs": pairs}


def _encode(pairs: list[tuple[str, Any]], style: int) -> bytes:
    """The body as a terminal might write it: compact, spaced, ASCII-escaped, or broken."""
    ascii_only = style % 2 == 0
    items = [
        f"{json.dumps(k, ensure_ascii=ascii_only)}:{json.dumps(v, ensure_ascii=ascii_only)}" for k, v in pairs
    ]
    text = ("{" + ", ".join(items) + "}") if style != 17 else ("{\n  " + ",\n  ".join(items) + "\n}\n")
    if style == 19:
        text = text[:-1]  # cut short: not JSON
    return text.encode("utf-8", "surrogatepass")  # lone surrogates stay invalid UTF-8: not JSON


# --------------------------------------------------------------------------- properties


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=messages(),
    max_depth=st.sampled_from([32, 32, 32, 2, 1, 0, 250]),
    max_bytes=st.sampled_from([64 * 1024, 64 * 1024, 200]),
    registered=st.booleans(),
)
@example(
    message=(
        "sesmon/v1/elevator/E1/telemetry",
        b'{"device_id":"E1","ts":1795300000000,"seq":1,"speed_mps":1}',
        {},
    ),
    max_depth=32,
    max_bytes=65536,
    registered=True,
)
@example(  # found by CI: a duplicate key's last value (null) hid an earlier list from the depth check
    message=(
        "sesmon/v1/elevator/E1/telemetry",
        b'{"device_id":"E1","ts":1794300000000,"seq":0,"speed_mps":0.0,"":[],"":null}',
        {},
    ),
    max_depth=1,
    max_bytes=65536,
    registered=False,
)
def test_fast_path_equals_slow_path(
    message: tuple[str, bytes, dict[str, Any]], max_depth: int, max_bytes: int, registered: bool
) -> None:
    topic, payload, _ = message
    assert_same(
        topic,
        payload,
        known_device=REGISTRY.get if registered else None,
        max_depth=max_depth,
        max_bytes=max_bytes,
    )


@settings(max_examples=500, deadline=None)
@given(body=st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=6), leaf=st.sampled_from(list(MODELS)))
def test_arbitrary_objects_on_device_topics(body: dict[str, Any], leaf: str) -> None:
    payload = json.dumps({"device_id": "E1", "ts": TS, "seq": 1, **body}).encode("utf-8", "surrogatepass")
    assert_same(f"sesmon/v1/elevator/E1/{leaf}", payload)


# --------------------------------------------------------------------------- the common path is fast

ELEVATOR = {
    "device_id": "E1",
    "ts": TS,
    "seq": 7,
    "mode": "normal",
    "moving": True,
    "direction": "up",
    "floor": 3,
    "door_zone": True,
    "door": "closed",
    "speed_mps": 1.6,
    "load_pct": 35.0,
    "occupied": True,
    "safety_circuit_open": False,
    "door_lock_circuit_open": False,
    "power": "mains",
    "up_limit": False,
    "down_limit": False,
    "run_count": 12345,
    "door_cycles": 23456,
}
BOILER = {
    "device_id": "B1",
    "ts": TS,
    "seq": 3,
    "pressure_mpa": 1.25,
    "water_level_mm": -12.5,
    "steam_temp_c": 194.1,
    "outlet_temp_c": 95,
    "return_temp_c": 70.2,
    "steam_flow_tph": 4.0,
    "o2_pct": 3.5,
    "burner": "high_fire",
}


def test_every_device_model_has_a_fast_path() -> None:
    """A schema change this module cannot judge disables its fast path: fail loudly, do not slow down."""
    assert all(SPECS.values()), [key for key, spec in SPECS.items() if spec is None]


def test_common_messages_take_the_fast_path() -> None:
    cases = [
        ("sesmon/v1/elevator/E1/telemetry", ELEVATOR),
        ("sesmon/v1/elevator/E1/telemetry", {**ELEVATOR, "mode": 2, "speed_mps": 0, "floor": -2}),
        ("sesmon/v1/elevator/E1/telemetry", dict(reversed(ELEVATOR.items()))),  # key order differs
        ("sesmon/v1/elevator/E1/telemetry", {**ELEVATOR, "vendor_note": "ü", "moving": None, "x": None}),
        ("sesmon/v1/elevator/E1/telemetry", {**ELEVATOR, "extra": {"a": [1, None, {"b": 2.5}]}}),
        ("sesmon/v1/elevator/E1/telemetry", {"device_id": "E1", "ts": TS, "seq": 0}),
        ("sesmon/v1/boiler/B1/telemetry", BOILER),
        (
            "sesmon/v1/elevator/E1/event",
            {"device_id": "E1", "ts": TS, "seq": 8, "code": "trapped", "state": "occur"},
        ),
        (
            "sesmon/v1/elevator/E1/event",
            {
                "device_id": "E1",
                "ts": TS,
                "seq": 8,
                "detail": {"floor": 3},
                "state": "recover",
                "code": "trapped",
            },
        ),
        (
            "sesmon/v1/boiler/B1/event",
            {"device_id": "B1", "ts": TS, "seq": 9, "code": "gas_leak", "state": "occur"},
        ),
        ("sesmon/v1/boiler/B1/status", {"device_id": "B1", "ts": TS, "seq": 10, "status": "online"}),
    ]
    for topic, body in cases:
        assert assert_same(topic, orjson.dumps(body)), (topic, body)


def test_unusual_messages_go_the_slow_way_with_its_reasons() -> None:
    known = REGISTRY.get
    cases = {
        b'{"device_id":"E1","ts":"2026-11-22T09:30:15+08:00","seq":1}': "ok",  # RFC 3339: slow, valid
        b'{"device_id":"E1","ts":1795300000000,"seq":1.0}': "invalid",
        b'{"device_id":"E1","ts":1795300000000,"seq":true}': "invalid",
        b'{"device_id":"E1","ts":1795300000000,"seq":1,"floor":2.0}': "invalid",
        b'{"device_id":"E1","ts":1795300000000,"seq":1,"moving":1}': "invalid",
        b'{"device_id":"E1","ts":1795300000000,"seq":1,"mode":9}': "invalid",
        b'{"device_id":"E1","ts":1795300000000,"seq":18446744073709551616}': "invalid",  # orjson: a float
        b'{"device_id":"E1","ts":1795300000000}': "invalid",
        b'{"device_id":"E2","ts":1795300000000,"seq":1}': "device_mismatch",
        b'{"device_id":"E1","ts":1795300000000,"seq":1,"x":[[[[1]]]]}': "too_deep",
        b"[1]": "not_object",
        b"{": "not_json",
    }
    for payload, expected in cases.items():
        assert (
            device_envelope("sesmon/v1/elevator/E1/telemetry", payload, TS, known_device=known, max_depth=3)
            is None
        )
        outcome, result = slow(
            "sesmon/v1/elevator/E1/telemetry", payload, TS, known_device=known, max_depth=3
        )
        assert (result if outcome == "bad" else outcome) == expected, payload
    assert (
        device_envelope("sesmon/v1/boiler/E1/telemetry", orjson.dumps(ELEVATOR), TS, known_device=known)
        is None
    )
    # pydantic's pattern is Rust's regex, whose $ does not take a trailing newline as Python's does
    newline = {"device_id": "E1\n", "ts": TS, "seq": 1}
    assert not assert_same("sesmon/v1/elevator/E1\n/telemetry", orjson.dumps(newline), known_device=None)
    assert device_envelope("sesmon/v1/elevator/E9/status", b"online", TS, known_device=known) is None
    event = {"device_id": "E1", "ts": TS, "seq": 8, "code": "gas_leak", "state": "occur"}
    assert device_envelope("sesmon/v1/elevator/E1/event", orjson.dumps(event), TS, known_device=known) is None


def test_a_field_the_fast_path_cannot_judge_disables_it() -> None:
    """Say a validator is added to a telemetry field: the fast path must not guess what it does."""
    from sesmon.contract.fast_envelope import _spec

    class Stricter(ElevatorTelemetry):
        @field_validator("floor", mode="before")
        @classmethod
        def _no_thirteen(cls, value: Any) -> Any:
            if value == 13:
                raise ValueError("no floor 13")
            return value

    class Renamed(ElevatorTelemetry):
        note: str | None = "n/a"  # a default that is dumped when absent

    assert _spec("telemetry", Kind.elevator, ElevatorTelemetry) is not None
    assert _spec("telemetry", Kind.elevator, Stricter) is None
    assert _spec("telemetry", Kind.elevator, Renamed) is None


def test_mode_codes_and_shuffled_fleet_bodies() -> None:
    """Every service-mode code, and a seeded shuffle of real-looking bodies: all fast, all equal."""
    rng = random.Random(9)
    for code in MODE_CODES:
        assert assert_same("sesmon/v1/elevator/E1/telemetry", orjson.dumps({**ELEVATOR, "mode": code}))
    for _ in range(300):
        items = list(ELEVATOR.items())
        rng.shuffle(items)
        body = dict(items[: rng.randint(3, len(items))])
        body.update(device_id="E1", ts=TS + rng.randint(0, 10**6), seq=rng.randint(0, 10**9))
        assert assert_same("sesmon/v1/elevator/E1/telemetry", orjson.dumps(body))
