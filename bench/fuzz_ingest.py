"""Fuzz the ingest stage: a million hostile and valid inputs through a real broker, nothing may break.

Generates seeded inputs (valid readings, events, statuses, reports and dispatch actions with
and without publisher identities; mutated JSON, wrong types, deep nesting, huge bodies,
invalid UTF-8, GB/T 24476 vendor payloads with lists, objects and impossible dates, weird
topics), publishes them with QoS 1 through a real mosquitto to a real :class:`IngestBridge`
on a real Tansu, then checks the stage's promise:

- every input is accounted for: published = produced + dead-lettered (+ our own output
  topics, acked and skipped), by the bridge's counters *and* by counting the Kafka topics;
- nothing crashed: the bridge's threads are alive, no fatal error, and ``internal_error``
  dead letters (an exception the rule book did not foresee) are counted separately.

Usage: python bench/fuzz_ingest.py [--count N] [--seed S] [--direct] [--json FILE]

``--direct`` calls the bridge's MQTT callback in process (no broker): faster, and it can feed
topics no broker passes on (invalid UTF-8, control characters). The headline figure is the
broker run. The generator (:class:`FuzzInputs`) is also what tests/test_ingest_fuzz.py uses.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from ingest.bridge import IngestBridge
from sesmon.contract.groups import envelopes_of
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.kafka import make_reader
from sesmon.runtime.services import start_kafka, start_mqtt
from sesmon.runtime.settings import Settings

BASE_MS = 1_795_000_000_000  # 2026-11-18: device times are fixed, never the wall clock
MAX_OUTSTANDING = 10_000  # paho reuses ids past 65,535 unacked QoS 1 publishes (stack.md)
BROKER_MAX_BYTES = 1_000_000  # below mosquitto's message_size_limit (1 MiB), which drops larger silently
BROKER_MAX_LEVELS = 200  # mosquitto disconnects a client publishing a topic of more levels
OUTPUT_STREAMS = ["telemetry", "events", "status", "reports", "dispatch", "deadletter"]

ELEVATOR_MODES = ["normal", "inspection", "out_of_service", "fire_recall", "firefighter", "unknown"]
DOORS = ["closed", "opening", "open", "closing", "unknown"]
ELEVATOR_CODES = ["trapped", "overspeed", "unintended_movement", "door_close_fault", "power_failure"]
BOILER_CODES = ["flame_failure", "low_water_trip", "overpressure_trip", "gas_leak"]
HAZARD_ACTIONS = ["rectified", "verified", "reopened", "supervise", "withdrawn", "stop_use"]
DISPATCH_ACTIONS = ["ack", "dispatched", "accepted", "on_site", "freed", "closed", "false_alarm"]
# text that every MQTT broker passes in a topic: no controls, surrogates, noncharacters, wildcards
SAFE_RANGES = [
    (0x20, 0x22),  # printable ASCII without # + /
    (0x24, 0x2A),
    (0x2C, 0x2E),
    (0x30, 0x7E),
    (0xA0, 0x2FF),
    (0x300, 0x36F),  # combining marks
    (0x600, 0x6FF),  # Arabic
    (0x200B, 0x200F),  # zero-width, direction marks
    (0x202A, 0x202E),  # bidi overrides
    (0x4E00, 0x9FFF),  # CJK
    (0xE000, 0xF8FF),  # private use
    (0xFF10, 0xFF19),  # fullwidth digits
    (0x1F300, 0x1F64F),  # emoji
    (0x20000, 0x2A6DF),  # CJK extension B
]
# what only the in-process mode can send: the broker disconnects a client that publishes these
UNSAFE_TOPIC_BYTES = [
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xef\xbf\xbf",
    b"+",
    b"#",
]


def encode(body: Any) -> bytes:
    """JSON text of ``body``; the stdlib for what orjson will not write (integers past 64 bits)."""
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(body, default=str).encode()


def safe_text(rng: random.Random, length: int) -> str:
    out = []
    for _ in range(length):
        low, high = rng.choice(SAFE_RANGES)
        out.append(chr(rng.randint(low, high)))
    return "".join(out)


class FuzzInputs:
    """Seeded inputs for ingest: ``(topic, payload, category)``; the same seed gives the same stream.

    ``broker_safe`` keeps topics and sizes to what a broker delivers (the broker refuses invalid
    UTF-8 and control characters in topics, and bodies over its size limit); the in-process
    mode sets it False to reach the bridge's own guards for those too.
    """

    def __init__(self, seed: int, units: list[tuple[str, str, str]], broker_safe: bool = True) -> None:
        self.rng = random.Random(seed)
        self.broker_safe = broker_safe
        self.elevators = [(d, f) for d, k, f in units if k == "elevator"]
        self.boilers = [(d, f) for d, k, f in units if k == "boiler"]
        self.firms = sorted({f for _, _, f in units if f})
        self.seq = 0
        self.generators = [
            (25, "valid_elevator_telemetry", self.valid_elevator),
            (5, "valid_boiler_telemetry", self.valid_boiler),
            (5, "valid_event", self.valid_event),
            (3, "valid_status", self.valid_status),
            (4, "report", self.report),
            (3, "dispatch", self.dispatch),
            (5, "vendor_valid", self.vendor_valid),
            (6, "vendor_broken", self.vendor_broken),
            (10, "mutated_json", self.mutated),
            (10, "wrong_types", self.wrong_types),
            (3, "deep_nesting", self.deep),
            (1, "large_body", self.large),
            (3, "invalid_utf8_body", self.invalid_utf8),
            (5, "weird_topic", self.weird_topic),
            (3, "garbage", self.garbage),
            (2, "unknown_device", self.unknown_device),
            (2, "not_an_object", self.not_object),
            (2, "odd_numbers", self.odd_numbers),
            (0.5, "own_output", self.own_output),
        ]
        self.weights = [w for w, _, _ in self.generators]

    # ------------------------------------------------------------------ driver
    def __iter__(self) -> Iterator[tuple[str | bytes, bytes, str]]:
        while True:
            yield self.one()

    def take(self, count: int) -> Iterator[tuple[str | bytes, bytes, str]]:
        for _ in range(count):
            yield self.one()

    def one(self) -> tuple[str | bytes, bytes, str]:
        _, category, make = self.rng.choices(self.generators, self.weights)[0]
        topic, payload = make()
        return topic, payload, category

    # ------------------------------------------------------------------ building blocks
    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def ts(self) -> int | str:
        ms = BASE_MS + self.rng.randint(0, 86_400_000)
        if self.rng.random() < 0.2:
            return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ms / 1000))
        return ms

    def elevator_body(self, device: str) -> dict[str, Any]:
        r = self.rng
        body: dict[str, Any] = {"device_id": device, "ts": self.ts(), "seq": self.next_seq()}
        for key, value in (
            ("mode", r.choice([*ELEVATOR_MODES, 1, 2, 0])),
            ("moving", r.random() < 0.5),
            ("direction", r.choice(["up", "down", "none"])),
            ("floor", r.randint(-3, 40)),
            ("door_zone", r.random() < 0.5),
            ("door", r.choice(DOORS)),
            ("speed_mps", round(r.uniform(0, 2.5), 2)),
            ("load_pct", round(r.uniform(0, 110), 1)),
            ("occupied", r.random() < 0.5),
            ("run_count", r.randint(0, 10**6)),
        ):
            if r.random() < 0.7:
                body[key] = value
        return body

    def boiler_body(self, device: str) -> dict[str, Any]:
        r = self.rng
        return {
            "device_id": device,
            "ts": self.ts(),
            "seq": self.next_seq(),
            "pressure_mpa": round(r.uniform(0, 1.6), 3),
            "water_level_mm": round(r.uniform(-200, 200), 1),
            "burner": r.choice(["off", "low_fire", "high_fire", "lockout"]),
            "o2_pct": round(r.uniform(1, 9), 2),
        }

    def any_json_value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.randint(-(2**63), 2**63 - 1)
        if kind == 3:
            return r.uniform(-1e12, 1e12)
        if kind == 4:
            return safe_text(r, r.randint(0, 12))
        if kind == 5:
            return r.choice(["", "true", "12", "NaN", "online", "1e999", "2026-13-01T00:00:00Z"])
        if kind == 6:
            return [self.any_json_value(depth + 1) for _ in range(r.randint(0, 4))]
        if kind == 7:
            return {safe_text(r, 3): self.any_json_value(depth + 1) for _ in range(r.randint(0, 4))}
        return {"nested": [self.any_json_value(depth + 1)]}

    def device_topic(self, kind: str, device: str, leaf: str) -> str:
        return f"sesmon/v1/{kind}/{device}/{leaf}"

    def elevator(self) -> tuple[str, str]:
        return self.rng.choice(self.elevators)

    # ------------------------------------------------------------------ valid input
    def valid_elevator(self) -> tuple[str, bytes]:
        device, _ = self.elevator()
        return self.device_topic("elevator", device, "telemetry"), orjson.dumps(self.elevator_body(device))

    def valid_boiler(self) -> tuple[str, bytes]:
        device, _ = self.rng.choice(self.boilers)
        return self.device_topic("boiler", device, "telemetry"), orjson.dumps(self.boiler_body(device))

    def valid_event(self) -> tuple[str, bytes]:
        r = self.rng
        kind = "elevator" if r.random() < 0.8 else "boiler"
        device, _ = self.elevator() if kind == "elevator" else r.choice(self.boilers)
        code = r.choice(ELEVATOR_CODES if kind == "elevator" else BOILER_CODES)
        body = {
            "device_id": device,
            "ts": self.ts(),
            "seq": self.next_seq(),
            "code": code,
            "state": r.choice(["occur", "recover"]),
            "detail": {"floor": r.randint(-2, 30)},
        }
        return self.device_topic(kind, device, "event"), orjson.dumps(body)

    def valid_status(self) -> tuple[str, bytes]:
        device, _ = self.elevator()
        topic = self.device_topic("elevator", device, "status")
        if self.rng.random() < 0.5:
            return topic, self.rng.choice([b"online", b"offline", b" online\n"])
        body = {"device_id": device, "ts": self.ts(), "seq": self.next_seq(), "status": "online"}
        return topic, orjson.dumps(body)

    def username(self, own_firm: str) -> str | None:
        r = self.rng
        choice = r.randrange(10)
        if choice < 3:
            return None  # the old topic without a publisher
        if choice < 5:
            return f"firm-{own_firm}"
        if choice == 5:
            return f"firm-{r.choice(self.firms)}"
        if choice == 6:
            return r.choice(["operator", "operator-7"])
        if choice == 7:
            return f"inspector-{r.randint(1, 9)}"
        if choice == 8:
            return self.elevator()[0]  # a device's own username
        return r.choice(["sesmon-ingest", "", safe_text(r, 6), "firm-"])

    def report(self) -> tuple[str, bytes]:
        r = self.rng
        device, firm = self.elevator()
        report = r.choice(["maintenance", "maintenance", "hazard", "accident", "inspection"])
        ts = self.ts()
        body: dict[str, Any]
        if report == "maintenance":
            body = {
                "device_id": device,
                "ts": ts,
                "firm_id": r.choice([firm, firm, *self.firms[:2]]),
                "kind": r.choice(["routine_15d", "quarterly", "repair"]),
            }
        elif report == "hazard":
            hazard = f"HZ.{device}.rule.{BASE_MS + r.randint(0, 10**6)}" if r.random() < 0.9 else "HZ.bad"
            body = {"hazard_id": hazard, "action": r.choice(HAZARD_ACTIONS), "by": "someone", "ts": ts}
        elif report == "accident":
            body = {
                "report_id": f"A{r.randint(1, 10**6)}",
                "device_id": device,
                "ts": ts,
                "grade": "general",
                "deaths": 0,
                "serious_injuries": r.randint(0, 2),
            }
        else:
            body = {
                "device_id": device,
                "ts": ts,
                "result": r.choice(["pass", "fail"]),
                "next_due": "2027-05-01",
            }
        user = self.username(firm)
        topic = f"sesmon/v1/reports/{report}" + (f"/{user}" if user is not None else "")
        return topic, orjson.dumps(body)

    def dispatch(self) -> tuple[str, bytes]:
        r = self.rng
        device, firm = self.elevator()
        alert_id = f"{device}.trapped.{BASE_MS + r.randint(0, 10**6)}"
        body = {
            "alert_id": alert_id if r.random() < 0.9 else "other.x.1",
            "action": r.choice(DISPATCH_ACTIONS),
            "by": "responder",
            "ts": self.ts(),
        }
        user = self.username(firm)
        topic = f"sesmon/v1/dispatch/{alert_id}" + (f"/{user}" if user is not None else "")
        return topic, orjson.dumps(body)

    def vendor_status(self, device: str) -> dict[str, Any]:
        r = self.rng
        return {
            "regCode": device,
            "time": r.choice([BASE_MS + r.randint(0, 10**7), "20261122093015"]),
            "seq": self.next_seq(),
            "serviceMode": r.randint(0, 7),
            "carStatus": r.randint(0, 1),
            "carDirection": r.randint(0, 2),
            "carPosition": r.randint(-2, 30),
            "doorZone": r.randint(0, 1),
            "doorStatus": r.randint(0, 6),
            "speed": round(r.uniform(0, 2), 2),
            "power": r.randint(0, 2),
        }

    def vendor_fault(self, device: str) -> dict[str, Any]:
        r = self.rng
        ftype = r.choice([1, 1, 2, 3])
        fid: Any = {
            1: r.choice([1, 5, 11, 41, 44, 90, 93]),
            2: r.choice([3, 4, 7, 8, 14]),
            3: r.choice(["0101", 205]),
        }[ftype]
        return {
            "regCode": device,
            "time": BASE_MS + r.randint(0, 10**7),
            "seq": self.next_seq(),
            "faultType": ftype,
            "faultId": fid,
            "state": r.randint(0, 1),
            "floor": r.randint(-2, 30),
        }

    def vendor_valid(self) -> tuple[str, bytes]:
        device, _ = self.elevator()
        leaf = self.rng.choice(["status", "fault", "fault", "lwt"])
        if leaf == "lwt":
            return f"gbt24476/v1/{device}/lwt", self.rng.choice([b"online", b"offline"])
        body = self.vendor_status(device) if leaf == "status" else self.vendor_fault(device)
        return f"gbt24476/v1/{device}/{leaf}", orjson.dumps(body)

    # ------------------------------------------------------------------ hostile input
    def vendor_broken(self) -> tuple[str, bytes]:
        r = self.rng
        device, _ = self.elevator()
        leaf = r.choice(["status", "fault", "fault", "lwt", "other", "fault/extra"])
        body: dict[str, Any] = self.vendor_status(device) if leaf == "status" else self.vendor_fault(device)
        bad_values: list[Any] = [[1, 2], {"a": 1}, "5", 5.0, True, None, 2**70, -1, [], {}, "２"]
        bad_times: list[Any] = [
            "20261301000000",
            "20260230120000",
            "20261122250000",
            "00000101000000",
            "99999999999999",
            "２０２６１１２２０９３０１５",
            [2026],
            {"t": 1},
            1.5,
            None,
            True,
        ]
        field = r.choice(
            [
                "faultId",
                "faultType",
                "time",
                "state",
                "regCode",
                "serviceMode",
                "doorStatus",
                "carStatus",
                "carDirection",
                "power",
                "seq",
                "floor",
            ]
        )
        body[field] = r.choice(bad_times if field == "time" else bad_values)
        if leaf == "lwt":
            return f"gbt24476/v1/{device}/lwt", r.choice([b"maybe", b"", b'{"online":1}', b"\xff"])
        return f"gbt24476/v1/{device}/{leaf}", encode(body)

    def mutated(self) -> tuple[str, bytes]:
        r = self.rng
        topic, payload = self.valid_elevator() if r.random() < 0.7 else self.vendor_valid()
        data = bytearray(payload)
        for _ in range(r.randint(1, 4)):
            op = r.randrange(5)
            if not data:
                break
            pos = r.randrange(len(data))
            if op == 0:
                data[pos] = r.randrange(256)
            elif op == 1:
                del data[pos:]
            elif op == 2:
                data[pos:pos] = r.choice([b"{", b"[", b'"', b"\\", b"\x00", b"\xff", b",", b":", b"}", b"]]"])
            elif op == 3:
                del data[pos : pos + r.randint(1, 8)]
            else:
                data[pos:pos] = data[: r.randint(1, 20)]
        return topic, bytes(data)

    def wrong_types(self) -> tuple[str, bytes]:
        r = self.rng
        if r.random() < 0.5:
            device, _ = self.elevator()
            body = self.elevator_body(device)
            topic = self.device_topic("elevator", device, "telemetry")
        else:
            topic, raw = self.report() if r.random() < 0.5 else self.dispatch()
            body = orjson.loads(raw)
        for _ in range(r.randint(1, 3)):
            key = r.choice([*body.keys(), "extra", "detail"])
            body[key] = self.any_json_value()
        return topic, encode(body)

    def deep(self) -> tuple[str, bytes]:
        r = self.rng
        depth = r.choice([31, 32, 33, 40, 100, 254, 255, 256, 1000, 1024, 1025, 5000, 20000])
        opener, closer = r.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"b":', b"}]")])
        nested = opener * depth + b"1" + closer * depth
        if r.random() < 0.3:
            nested = opener * depth  # never closed
        device, _ = self.elevator()
        where = r.randrange(4)
        if where == 0:
            return self.device_topic("elevator", device, "telemetry"), nested
        if where == 1:
            body = b'{"device_id":"%s","ts":%d,"seq":1,"detail":%s}' % (device.encode(), BASE_MS, nested)
            return self.device_topic("elevator", device, "event"), body
        if where == 2:
            body = b'{"regCode":"%s","time":%d,"seq":1,"faultType":1,"faultId":5,"floor":%s}' % (
                device.encode(),
                BASE_MS,
                nested,
            )
            return f"gbt24476/v1/{device}/fault", body
        return "sesmon/v1/reports/maintenance", b'{"device_id":"%s","x":%s}' % (device.encode(), nested)

    def large(self) -> tuple[str, bytes]:
        r = self.rng
        device, _ = self.elevator()
        cap = BROKER_MAX_BYTES if self.broker_safe else 2_000_000
        # 9 in 10 up to the limit (valid when well formed), the rest oversize (the 1 MB among them)
        size = r.randint(1_000, 64 * 1024) if r.random() < 0.9 else r.randint(64 * 1024 + 1, cap)
        topic = r.choice([self.device_topic("elevator", device, "telemetry"), f"gbt24476/v1/{device}/status"])
        if r.random() < 0.5:
            filler = "x" * max(0, size - 80)
            return topic, orjson.dumps({"device_id": device, "ts": BASE_MS, "seq": 1, "note": filler})
        return topic, r.randbytes(size)

    def invalid_utf8(self) -> tuple[str, bytes]:
        r = self.rng
        topic, payload = self.valid_elevator() if r.random() < 0.6 else self.vendor_valid()
        bad = r.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])
        pos = payload.rfind(b'"', 0, max(1, len(payload) - 2))
        return topic, payload[:pos] + bad + payload[pos:]

    def weird_topic(self) -> tuple[str | bytes, bytes]:
        r = self.rng
        device, _ = self.elevator()
        body = orjson.dumps(self.elevator_body(device))
        if not self.broker_safe and r.random() < 0.3:
            junk = r.choice(UNSAFE_TOPIC_BYTES)
            return b"sesmon/v1/elevator/" + device.encode() + junk + b"/telemetry", body
        choice = r.randrange(12)
        max_levels = BROKER_MAX_LEVELS - 3 if self.broker_safe else 2000
        topics = [
            f"sesmon/v1/elevator/{device}/telemetry/extra",
            "sesmon/v1/elevator//telemetry",
            f"sesmon/v1/élévateur/{device}/telemetry",
            f"sesmon/v1/{safe_text(r, r.randint(1, 40))}",
            f"sesmon/v1/elevator/{device}/{safe_text(r, 5)}",
            f"sesmon/v1/elevator/{safe_text(r, 10)}/telemetry",
            "sesmon/v1/" + "/".join(safe_text(r, 3) for _ in range(r.randint(1, max_levels))),
            "sesmon/v1/elevator/" + "x" * r.randint(65, 60_000) + "/telemetry",
            f"gbt24476/v1/{safe_text(r, 8)}/fault",
            f"gbt24476/v1/{device}/status/more/levels",
            "sesmon/v1/reports/maintenance/" + safe_text(r, r.randint(1, 30)),
            f"sesmon/v1/dispatch/{safe_text(r, 10)}",
        ]
        return topics[choice], body

    def garbage(self) -> tuple[str, bytes]:
        r = self.rng
        device, _ = self.elevator()
        topic = r.choice(
            [
                self.device_topic("elevator", device, "telemetry"),
                f"gbt24476/v1/{device}/fault",
                "sesmon/v1/reports/hazard",
                f"sesmon/v1/dispatch/{device}.x.1",
            ]
        )
        return topic, r.randbytes(r.randint(0, 300))

    def unknown_device(self) -> tuple[str, bytes]:
        device = "UNREG" + str(self.rng.randint(0, 10**6))
        kind = self.rng.choice(["elevator", "boiler"])
        body = {"device_id": device, "ts": BASE_MS, "seq": self.next_seq()}
        return self.device_topic(kind, device, "telemetry"), orjson.dumps(body)

    def not_object(self) -> tuple[str, bytes]:
        device, _ = self.elevator()
        payload = self.rng.choice([b"[]", b"1", b'"x"', b"null", b"true", b"[1,2,3]", b"", b" "])
        return self.rng.choice(
            [self.device_topic("elevator", device, "telemetry"), f"gbt24476/v1/{device}/status"]
        ), payload

    def odd_numbers(self) -> tuple[str, bytes]:
        r = self.rng
        device, _ = self.elevator()
        number = r.choice(
            [
                b"1e999",
                b"-1e999",
                b"123456789012345678901234567890",
                b"-0",
                b"1E400",
                b"0.1e-400",
                b"18446744073709551616",
                b"-9223372036854775809",
                b"NaN",
                b"Infinity",
                b"0x10",
            ]
        )
        field = r.choice([b"seq", b"ts", b"floor", b"speed_mps", b"extra"])
        body = b'{"device_id":"%s","ts":%d,"seq":1,"%s":%s}' % (device.encode(), BASE_MS, field, number)
        return self.device_topic("elevator", device, "telemetry"), body

    def own_output(self) -> tuple[str, bytes]:
        return self.rng.choice(["sesmon/v1/alerts/firm/F1", "sesmon/v1/hazards/firm/F2"]), b'{"x":1}'


# --------------------------------------------------------------------------- running it


def units_of(registry: Registry) -> list[tuple[str, str, str]]:
    return [(u.device_id, u.kind.value, u.firm_id) for u in registry]


def publish_inputs(port: int, seed: int, count: int, units: list[tuple[str, str, str]], out: Any) -> None:
    """Child process: generate and publish ``count`` inputs with QoS 1; report what was acked."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fuzz-{seed}")
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    categories: Counter[str] = Counter()
    outstanding: list[mqtt.MQTTMessageInfo] = []
    published = refused = 0
    began = time.perf_counter()
    for topic, payload, category in FuzzInputs(seed, units).take(count):
        info = client.publish(topic, payload, qos=1)  # type: ignore[arg-type]
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            refused += 1
            continue
        categories[category] += 1
        outstanding.append(info)
        if len(outstanding) >= MAX_OUTSTANDING:
            for pending in outstanding:
                pending.wait_for_publish(120)
                published += pending.is_published()
            outstanding.clear()
    for pending in outstanding:
        pending.wait_for_publish(120)
        published += pending.is_published()
    client.disconnect()
    client.loop_stop()
    out.send(
        {
            "published": published,
            "refused": refused,
            "categories": dict(categories),
            "publish_s": time.perf_counter() - began,
        }
    )


def wait_settled(bridge: IngestBridge, inputs: int, timeout_idle: float = 120.0) -> bool:
    """Until every input the bridge got is delivered to Kafka (or nothing moves for ``timeout_idle``)."""
    last, last_change = -1, time.monotonic()
    while True:
        c = bridge.counters
        taken = c["received"] + c["own_output_skipped"]
        done = c["produced"] + c["dead_lettered"]
        if taken >= inputs and done == c["received"] and bridge.snapshot()["unacked"] == 0:
            return True
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > timeout_idle:
            return False
        time.sleep(0.2)


def count_kafka(
    settings: Settings, expected: int, timeout: float = 300.0
) -> tuple[Counter[str], Counter[str]]:
    """Messages per output stream (envelopes, grouped records flattened) and dead letters per reason,
    read back from Kafka; ``expected`` is the number of messages."""
    reader = make_reader(settings, OUTPUT_STREAMS)
    per_stream: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    deadletter = settings.topic("deadletter")
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline and sum(per_stream.values()) < expected:
            batch = reader.consume(10_000, 1.0)
            if not batch and time.monotonic() - idle_since > 15:
                break
            for record in batch:
                if record.error():
                    continue
                idle_since = time.monotonic()
                stream = record.topic().split(".", 1)[1]
                if record.topic() == deadletter:
                    per_stream[stream] += 1
                    reasons[dict(record.headers() or [])["reason"].decode()] += 1
                else:
                    per_stream[stream] += len(envelopes_of(record.value()))
    finally:
        reader.close()
    return per_stream, reasons


def run(
    count: int, seed: int, direct: bool, workdir: Path, settings_extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One fuzz run on fresh servers; returns the figures (see ``check`` for what must hold)."""
    from simulators.fleet import generate_fleet  # bench code: the fleet generator is fine here

    kafka = start_kafka(workdir / "tansu")
    broker = start_mqtt(workdir / "mqtt")
    try:
        registry_path = workdir / "registry.csv"
        write_registry(generate_fleet(200, 50, seed=seed), registry_path)
        registry = Registry.load(registry_path)
        settings = Settings(
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
            kafka_url=f"127.0.0.1:{kafka.port}",
            data_dir=workdir / "state",
            topic_prefix=f"fuzz{seed}",
            mqtt_client_id=f"ingest-fuzz-{seed}",
            kafka_partitions=2,
            **(settings_extra or {}),
        )
        fatal_errors: list[str] = []
        bridge = IngestBridge(settings, registry, on_fatal=fatal_errors.append)
        units = units_of(registry)
        began = time.perf_counter()
        if direct:
            bridge.start(connect_mqtt=False)
            categories: Counter[str] = Counter()
            for topic, payload, category in FuzzInputs(seed, units, broker_safe=False).take(count):
                categories[category] += 1
                bridge.handle_raw(topic if isinstance(topic, bytes) else topic.encode(), payload)
            published = count
            publish_report: dict[str, Any] = {"categories": dict(categories), "refused": 0}
        else:
            bridge.start()
            assert bridge.wait_connected(30), "bridge did not subscribe"
            ctx = multiprocessing.get_context("spawn")
            receiver, sender = ctx.Pipe(duplex=False)
            publisher = ctx.Process(target=publish_inputs, args=(broker.port, seed, count, units, sender))
            publisher.start()
            sender.close()  # the child holds the only sending end: its death ends recv() with EOFError
            publish_report = receiver.recv()
            publisher.join(30)
            published = publish_report["published"]
        settled = wait_settled(bridge, published)
        elapsed = time.perf_counter() - began
        alive = bridge.dead_parts()
        counters = dict(bridge.counters)
        bridge_reasons = dict(bridge.dead_reasons)
        bridge.stop()
        per_stream, kafka_reasons = count_kafka(
            settings, counters.get("produced", 0) + counters.get("dead_lettered", 0)
        )
    finally:
        broker.stop()
        kafka.stop()
    produced = counters.get("produced", 0)
    dead = counters.get("dead_lettered", 0)
    skipped = counters.get("own_output_skipped", 0)
    return {
        "mode": "direct" if direct else "broker",
        "count": count,
        "seed": seed,
        "published": published,
        "publish_refused": publish_report.get("refused", 0),
        "settled": settled,
        "seconds": round(elapsed, 1),
        "inputs_per_s": round(published / elapsed, 1) if elapsed else 0.0,
        "produced": produced,
        "dead_lettered": dead,
        "own_output_skipped": skipped,
        "internal_errors": counters.get("internal_errors", 0),
        "dead_threads": alive,
        "fatal_errors": fatal_errors,
        "kafka_records": dict(per_stream),
        "kafka_produced": sum(n for s, n in per_stream.items() if s != "deadletter"),
        "kafka_dead_lettered": per_stream.get("deadletter", 0),
        "dead_letter_reasons": dict(sorted(bridge_reasons.items(), key=lambda kv: -kv[1])),
        "kafka_dead_letter_reasons": dict(kafka_reasons),
        "categories": publish_report.get("categories", {}),
        "counters": counters,
    }


def check(result: dict[str, Any]) -> list[str]:
    """What must hold; an empty list means the stage kept every promise."""
    problems = []
    accounted = result["produced"] + result["dead_lettered"] + result["own_output_skipped"]
    if result["published"] != accounted:
        problems.append(f"published {result['published']} != produced + dead-lettered + skipped {accounted}")
    if (result["kafka_produced"], result["kafka_dead_lettered"]) != (
        result["produced"],
        result["dead_lettered"],
    ):
        problems.append(
            f"Kafka holds {result['kafka_produced']} + {result['kafka_dead_lettered']}, "
            f"the bridge counted {result['produced']} + {result['dead_lettered']}"
        )
    if result["kafka_dead_letter_reasons"] != result["dead_letter_reasons"]:
        problems.append("dead-letter reasons in Kafka differ from the bridge's counts")
    if result["dead_threads"] or result["fatal_errors"]:
        problems.append(f"crashed: dead threads {result['dead_threads']}, fatal {result['fatal_errors']}")
    if not result["settled"]:
        problems.append("the bridge did not settle (records still owed)")
    if result["publish_refused"]:
        problems.append(f"{result['publish_refused']} publishes refused by paho")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--direct", action="store_true", help="in process, no broker (also unsafe topics)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sesmon-fuzz-") as tmp:
        result = run(args.count, args.seed, args.direct, Path(tmp))
    problems = check(result)
    print(f"fuzz ingest ({result['mode']}): {result['count']:,} inputs, seed {result['seed']}")
    rate = f"{result['inputs_per_s']:,}/s"
    print(f"  published            {result['published']:,} in {result['seconds']} s ({rate})")
    print(f"  produced             {result['produced']:,} (Kafka: {result['kafka_produced']:,})")
    print(f"  dead-lettered        {result['dead_lettered']:,} (Kafka: {result['kafka_dead_lettered']:,})")
    print(f"  own output skipped   {result['own_output_skipped']:,}")
    print(f"  internal errors      {result['internal_errors']:,}")
    dead, fatal = result["dead_threads"] or "none", result["fatal_errors"] or "none"
    print(f"  crashes              dead threads {dead}, fatal {fatal}")
    print("  dead-letter reasons:")
    for reason, n in result["dead_letter_reasons"].items():
        print(f"    {reason:<28} {n:>9,}")
    print("  inputs by category:")
    for category, n in sorted(result["categories"].items(), key=lambda kv: -kv[1]):
        print(f"    {category:<28} {n:>9,}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(
        "OK: every input accounted for, nothing crashed"
        if not problems
        else "FAILED:\n  " + "\n  ".join(problems)
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
