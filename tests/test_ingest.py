"""The MQTT -> Kafka bridge on real mosquitto and real Tansu: nothing lost, bad input explained."""

from __future__ import annotations

import json
import time

import orjson

from ingest.bridge import IngestBridge
from sesmon.registry import Registry
from sesmon.services import ManagedProcess
from sesmon.settings import Settings
from tests.conftest import drain, mqtt_client, publish_all, reading

NOW = int(time.time() * 1000)


def wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_valid_and_bad_messages_all_accounted(settings: Settings, fleet_registry: Registry) -> None:
    elevators = [u.device_id for u in fleet_registry if u.kind == "elevator"][:10]
    bridge = IngestBridge(settings, fleet_registry).start()
    assert bridge.wait_connected()
    good = [reading(elevators[i % 10], i, NOW + i, moving=False) for i in range(2000)]
    bad = [
        ("sesmon/v1/elevator/GZE0000000/telemetry", b"{not json"),
        (
            "sesmon/v1/elevator/NOT-REGISTERED/telemetry",
            b'{"device_id":"NOT-REGISTERED","ts":1795299000000,"seq":1}',
        ),
        (f"sesmon/v1/elevator/{elevators[0]}/telemetry", b'{"device_id":"x","ts":1795299000000,"seq":1}'),
        (
            f"sesmon/v1/elevator/{elevators[0]}/telemetry",
            json.dumps({"device_id": elevators[0], "ts": "now", "seq": 1}).encode(),
        ),
        ("sesmon/v1/lift/x/telemetry", b"{}"),
    ]
    client = mqtt_client(settings)
    publish_all(client, good + bad)
    assert wait_for(
        lambda: bridge.counters["produced"] + bridge.counters["dead_lettered"] == len(good) + len(bad)
    )
    bridge.stop()
    client.disconnect()

    records = drain(settings, ["telemetry", "deadletter"], lambda r: len(r) >= len(good) + len(bad))
    telemetry = [r for r in records if r.topic() == settings.topic("telemetry")]
    dead = [r for r in records if r.topic() == settings.topic("deadletter")]
    # processed + dead-lettered = published, and nothing twice
    assert len(telemetry) == len(good) and len(dead) == len(bad)
    assert sorted(orjson.loads(r.value())["seq"] for r in telemetry) == list(range(2000))
    first = orjson.loads(telemetry[0].value())
    assert telemetry[0].key() == first["device_id"].encode()  # keyed by device_id
    reasons = {dict(r.headers())["reason"].decode() for r in dead}
    assert reasons == {"not_json", "unknown_device", "device_mismatch", "invalid", "bad_topic"}
    raw = {r.value() for r in dead}
    assert b"{not json" in raw  # raw bytes kept, exactly
    assert all({"mqtt_topic", "reason", "detail", "received_ms"} <= set(dict(r.headers())) for r in dead)
    assert bridge.dead_reasons["not_json"] == 1


def test_crash_before_kafka_ack_loses_nothing(settings: Settings, fleet_registry: Registry) -> None:
    """A bridge that received messages but never got them into Kafka dies; the next one delivers them."""
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    broken = settings.model_copy(update={"kafka_url": "127.0.0.1:1"})  # nothing listens there
    doomed = IngestBridge.__new__(IngestBridge)
    IngestBridge.__init__(doomed, broken, fleet_registry, create_topics=False)
    doomed.start()
    assert doomed.wait_connected()
    client = mqtt_client(settings)
    messages = [reading(device, i, NOW + i) for i in range(500)]
    publish_all(client, messages)
    assert wait_for(lambda: doomed.counters["received"] == 500)
    assert doomed.counters["produced"] == 0
    doomed.crash()  # no flush, no DISCONNECT: the broker keeps the 500 unacked in our session

    survivor = IngestBridge(settings, fleet_registry).start()
    assert wait_for(lambda: survivor.counters["produced"] >= 500, 30)
    survivor.stop()
    client.disconnect()
    records = drain(settings, ["telemetry"], lambda r: len(r) >= 500)
    assert {orjson.loads(r.value())["seq"] for r in records} == set(range(500))


def test_resubscribes_after_broker_restart(
    settings: Settings, fleet_registry: Registry, mqtt_server: ManagedProcess
) -> None:
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    bridge = IngestBridge(settings, fleet_registry).start()
    assert bridge.wait_connected()
    mqtt_server.stop()  # persistence off: the restarted broker knows no session, no subscription
    assert wait_for(lambda: not bridge.wait_connected(0), 10)
    mqtt_server.start()
    assert bridge.wait_connected(20)
    assert wait_for(lambda: bridge.counters["mqtt_connects"] >= 2)
    client = mqtt_client(settings)
    publish_all(client, [reading(device, i, NOW + i) for i in range(100)])
    assert wait_for(lambda: bridge.counters["produced"] == 100, 20)
    bridge.stop()
    client.disconnect()


def test_gbt24476_terminal_publishes_directly(settings: Settings, fleet_registry: Registry) -> None:
    """A numeric GB/T 24476-style terminal is mapped on the way in; what cannot be mapped is dead-lettered."""
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    bridge = IngestBridge(settings, fleet_registry).start()
    assert bridge.wait_connected()
    status = {
        "regCode": device,
        "time": "20261122093015",
        "seq": 9,
        "serviceMode": 2,
        "carStatus": 0,
        "carDirection": 0,
        "carPosition": 12,
        "doorZone": 1,
        "doorStatus": 4,
        "passengerStatus": 1,
    }
    fault = {"regCode": device, "time": NOW, "seq": 10, "faultType": 2, "faultId": 8, "state": 1, "floor": 12}
    unmapped = {**fault, "seq": 11, "faultId": 14}  # stuck button: no canonical event
    client = mqtt_client(settings)
    publish_all(
        client,
        [
            (f"gbt24476/v1/{device}/status", json.dumps(status).encode()),
            (f"gbt24476/v1/{device}/fault", json.dumps(fault).encode()),
            (f"gbt24476/v1/{device}/fault", json.dumps(unmapped).encode()),
        ],
    )
    assert wait_for(lambda: bridge.counters["produced"] + bridge.counters["dead_lettered"] == 3)
    bridge.stop()
    client.disconnect()
    records = drain(settings, ["telemetry", "events", "deadletter"], lambda r: len(r) >= 3)
    by_topic = {r.topic().rsplit(".", 1)[1]: r for r in records}
    telemetry = orjson.loads(by_topic["telemetry"].value())
    assert telemetry["mqtt_topic"] == f"gbt24476/v1/{device}/status"
    assert telemetry["body"]["mode"] == "inspection" and telemetry["body"]["door"] == "open"
    assert telemetry["ts"] == 1795311015000  # 09:30:15 Beijing time
    event = orjson.loads(by_topic["events"].value())
    assert event["body"]["code"] == "trapped" and event["body"]["state"] == "occur"
    assert dict(by_topic["deadletter"].headers())["reason"] == b"vendor_unmapped_code"


def test_ingest_partitions_keys_like_faust(settings: Settings) -> None:
    """A unit's readings (librdkafka) and the worker's own ticks (aiokafka) must share a partition."""
    from aiokafka.partitioner import DefaultPartitioner

    from sesmon.kafka import ensure_topics, make_producer

    settings = settings.model_copy(update={"kafka_partitions": 4})
    ensure_topics(settings, ["status"])
    producer = make_producer(settings)
    landed: dict[bytes, int] = {}
    keys = [f"3110440106202400{i:04d}".encode() for i in range(64)]
    for key in keys:
        producer.produce(
            settings.topic("status"),
            key=key,
            value=b"{}",
            on_delivery=lambda _e, m: landed.update({m.key(): m.partition()}),
        )
    producer.flush(10)
    faust_side = DefaultPartitioner()
    assert {k: faust_side(k, [0, 1, 2, 3], [0, 1, 2, 3]) for k in keys} == landed
    assert len(set(landed.values())) == 4
