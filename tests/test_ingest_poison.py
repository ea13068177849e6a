"""Poison input on real mosquitto and Tansu: each is dead-lettered with its reason, acked, and the
readings sent behind it all arrive (the issue lost 120 of 170 to one bad message)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.bridge import TOPIC_HEADER_MAX, IngestBridge
from sesmon.contract.registry import Registry
from sesmon.contract.schemas import Kind
from sesmon.runtime.services import start_kafka
from sesmon.runtime.settings import Settings
from tests.conftest import drain, drain_envelopes, mqtt_client, publish_all, reading

NOW = 1_795_299_000_000  # fixed device time (2026-11-22): nothing here depends on the clock
BEHIND = 170


class TrappedRegistry(Registry):
    """A registry whose lookup fails for one unit: a bug inside the handler, not in the input."""

    def kind_of(self, device_id: str) -> Kind | None:
        if device_id == "TRAP":
            raise RuntimeError("registry lookup exploded")
        return super().kind_of(device_id)


@pytest.fixture
def elevator(fleet_registry: Registry) -> str:
    return next(u.device_id for u in fleet_registry if u.kind == "elevator")


@pytest.fixture
def bridge_factory(settings: Settings, fleet_registry: Registry) -> Iterator[Any]:
    """Bridges that record fatal errors instead of ending pytest; stopped at the end."""
    bridges: list[IngestBridge] = []
    fatals: list[str] = []

    def make(registry: Registry | None = None, **overrides: Any) -> IngestBridge:
        bridge = IngestBridge(
            settings.model_copy(update=overrides), registry or fleet_registry, on_fatal=fatals.append
        )
        bridges.append(bridge.start())
        assert bridge.wait_connected(30), "bridge did not subscribe"
        return bridge

    make.fatals = fatals  # type: ignore[attr-defined]
    yield make
    for bridge in bridges:
        if not bridge._stop.is_set():
            bridge.stop(2)


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers() or [])


def vendor_fault(device: str, **fields: Any) -> tuple[str, bytes]:
    body = {"regCode": device, "time": NOW, "seq": 1, "faultType": 1, "faultId": 11, "state": 1, **fields}
    return f"gbt24476/v1/{device}/fault", json.dumps(body).encode()


def assert_poison_contained(
    settings: Settings,
    bridge: IngestBridge,
    reason: str,
    readings: list[tuple[str, bytes]],
    fatals: list[str],
) -> Any:
    """Poison dead-lettered once with ``reason``, every reading behind it produced; returns it."""
    assert bridge.wait_until(
        lambda b: b.counters["produced"] + b.counters["dead_lettered"] == len(readings) + 1
    )
    assert bridge.dead_reasons == {reason: 1}, bridge.dead_reasons
    assert bridge.counters["produced"] == len(readings)
    assert bridge.dead_parts() == [] and fatals == []
    telemetry = drain_envelopes(settings, ["telemetry"], lambda e: len(e) >= len(readings))
    dead = drain(settings, ["deadletter"], lambda r: len(r) >= 1)
    assert sorted(d.envelope["seq"] for d in telemetry) == list(range(len(readings)))
    assert len(dead) == 1 and headers_of(dead[0])["reason"] == reason.encode()
    return dead[0]


def poison_cases(device: str) -> dict[str, tuple[tuple[str, bytes], str]]:
    deep = b"[" * 500 + b"]" * 500  # orjson.loads takes 1,024 levels, orjson.dumps refuses past 254
    return {
        "one_megabyte": (reading(device, 999, NOW, note="x" * 1_000_000), "oversize"),
        "deep_json": (
            (
                f"sesmon/v1/elevator/{device}/event",
                b'{"device_id":"%s","detail":%s}' % (device.encode(), deep),
            ),
            "too_deep",
        ),
        "vendor_fault_id_list": (vendor_fault(device, faultId=[11, 12]), "bad_vendor_payload"),
        "vendor_fault_type_object": (vendor_fault(device, faultType={"list": "A"}), "bad_vendor_payload"),
        "vendor_bad_month": (vendor_fault(device, time="20261322093015"), "bad_vendor_payload"),
        "invalid_utf8_body": (
            (
                f"sesmon/v1/elevator/{device}/telemetry",
                b'{"device_id":"%s","x":"\xff\xfe"}' % device.encode(),
            ),
            "not_json",
        ),
        "handler_raises": (reading("TRAP", 1, NOW), "internal_error"),
    }


CASES = list(poison_cases("D"))


@pytest.mark.parametrize("case", CASES)
def test_poison_is_dead_lettered_and_readings_behind_it_arrive(
    case: str, settings: Settings, fleet_registry: Registry, bridge_factory: Any, elevator: str
) -> None:
    poison, reason = poison_cases(elevator)[case]
    registry = TrappedRegistry(units=fleet_registry.units) if reason == "internal_error" else None
    bridge = bridge_factory(registry)
    client = mqtt_client(settings)
    readings = [reading(elevator, i, NOW + i) for i in range(BEHIND)]
    publish_all(client, [poison, *readings])
    dead = assert_poison_contained(settings, bridge, reason, readings, bridge_factory.fatals)
    client.disconnect()
    headers = headers_of(dead)
    assert int(headers["size"]) == len(poison[1])
    assert len(dead.value()) == min(len(poison[1]), settings.deadletter_max_bytes)
    assert dead.value() == poison[1][: settings.deadletter_max_bytes]  # the raw bytes, cut to the bound
    if reason == "oversize":
        assert headers["truncated"] == b"1"
    if reason == "internal_error":
        assert bridge.counters["internal_errors"] == 1 and b"RuntimeError" in headers["detail"]
    else:
        assert bridge.counters["internal_errors"] == 0


def test_topic_that_is_not_utf8_or_too_long(settings: Settings, bridge_factory: Any, elevator: str) -> None:
    """Brokers refuse such topics, so they are fed to the callback directly (paho raises on ``msg.topic``)."""
    bridge = bridge_factory()
    body = reading(elevator, 1, NOW)[1]
    bridge.handle_raw(b"sesmon/v1/elevator/\xff\xfe/telemetry", body)
    long_topic = "sesmon/v1/elevator/" + "é" * 30_000 + "/telemetry"
    client = mqtt_client(settings)
    readings = [reading(elevator, i, NOW + i) for i in range(BEHIND)]
    publish_all(client, [(long_topic, body), *readings])
    client.disconnect()
    assert bridge.wait_until(lambda b: b.counters["produced"] + b.counters["dead_lettered"] == BEHIND + 2)
    assert bridge.dead_reasons == {"bad_topic": 2} and bridge.counters["produced"] == BEHIND
    records = drain(settings, ["deadletter"], lambda r: len(r) >= 2)
    by_size = sorted(records, key=lambda r: len(headers_of(r)["mqtt_topic"]))
    assert headers_of(by_size[0])["mqtt_topic"] == b"sesmon/v1/elevator/\xff\xfe/telemetry"  # raw bytes kept
    long_headers = headers_of(by_size[1])
    assert len(long_headers["mqtt_topic"]) == TOPIC_HEADER_MAX and len(by_size[1].key()) == TOPIC_HEADER_MAX
    assert int(long_headers["topic_size"]) == len(long_topic.encode())
    assert bridge.dead_parts() == [] and bridge.counters["internal_errors"] == 0


def test_record_kafka_refuses_becomes_a_small_dead_letter(
    settings: Settings, bridge_factory: Any, elevator: str
) -> None:
    """A valid reading larger than Kafka takes (limit raised above message.max.bytes): produce() raises
    MSG_SIZE_TOO_LARGE, which must not escape the callback; the message is dead-lettered and acked."""
    bridge = bridge_factory(max_payload_bytes=2_000_000)
    big = reading(elevator, 999, NOW, note="x" * 1_000_000)
    client = mqtt_client(settings)
    readings = [reading(elevator, i, NOW + i) for i in range(BEHIND)]
    publish_all(client, [big, *readings])
    client.disconnect()
    dead = assert_poison_contained(settings, bridge, "kafka_refused", readings, bridge_factory.fatals)
    assert (
        len(dead.value()) == settings.deadletter_max_bytes
        and b"MSG_SIZE_TOO_LARGE" in headers_of(dead)["detail"]
    )


def test_poison_then_crash_then_restart_does_not_wedge(
    settings: Settings, fleet_registry: Registry, bridge_factory: Any, elevator: str
) -> None:
    """The poison was acked, so the persistent session has nothing poisonous to hand the next bridge."""
    first = bridge_factory()
    client = mqtt_client(settings)
    publish_all(client, [vendor_fault(elevator, faultId={"x": [1]}), reading(elevator, 0, NOW)])
    assert first.wait_until(lambda b: b.counters["dead_lettered"] == 1 and b.counters["produced"] == 1)
    # a QoS 1 publish by the bridge's own client: its PUBACK proves the broker processed the acks before it
    fence = first.client.publish(f"fence/{settings.topic_prefix}", b"", qos=1)
    fence.wait_for_publish(30)
    assert fence.is_published()
    first.crash()

    second = bridge_factory()
    readings = [reading(elevator, i, NOW + i) for i in range(1, BEHIND + 1)]
    publish_all(client, readings)
    client.disconnect()
    assert second.wait_until(lambda b: b.counters["produced"] >= BEHIND)
    assert second.counters["dead_lettered"] == 0 and second.counters["internal_errors"] == 0
    assert second.dead_parts() == [] and bridge_factory.fatals == []
    envelopes = drain_envelopes(
        settings, ["telemetry"], lambda e: len({d.envelope["seq"] for d in e}) > BEHIND
    )
    assert {d.envelope["seq"] for d in envelopes} == set(range(BEHIND + 1))


def test_full_local_queue_waits_in_the_paho_thread_and_honours_shutdown(
    settings: Settings, fleet_registry: Registry, elevator: str, tmp_path: Any
) -> None:
    """Kafka away and librdkafka's queue full: the paho thread waits (no spin in a delivery callback),
    the poll thread keeps running, a crash ends the wait at once, and a later bridge delivers all.
    Groups of two: 50 readings are at least 25 records for a queue of 10."""
    from sesmon.runtime.services import free_port

    port = free_port()
    away = settings.model_copy(update={"kafka_url": f"127.0.0.1:{port}", "ingest_group_max": 2})
    fatals: list[str] = []
    doomed = IngestBridge(
        away,
        fleet_registry,
        create_topics=False,
        on_fatal=fatals.append,
        # no topic auto-created by this one (Tansu's default: 4 partitions) once Kafka is up
        producer_config={"queue.buffering.max.messages": 10, "allow.auto.create.topics": False},
    ).start()
    assert doomed.wait_connected(30)
    client = mqtt_client(settings)
    publish_all(client, [reading(elevator, i, NOW + i) for i in range(50)])
    assert doomed.wait_until(lambda b: b.counters["producer_queue_full"] >= 1)
    assert doomed.dead_parts() == [] and doomed.counters["produced"] == 0
    doomed.crash()  # Stopping ends the BufferError wait; nothing was acked
    assert not doomed._poller.is_alive()

    kafka = start_kafka(tmp_path / "tansu", port=port)
    try:
        survivor = IngestBridge(away, fleet_registry, on_fatal=fatals.append).start()
        assert survivor.wait_until(lambda b: b.counters["produced"] >= 50, 60)
        survivor.stop()
        envelopes = drain_envelopes(away, ["telemetry"], lambda e: len({d.envelope["seq"] for d in e}) >= 50)
        assert {d.envelope["seq"] for d in envelopes} == set(range(50))
        assert fatals == []
    finally:
        client.disconnect()
        kafka.stop()


def test_failed_deliveries_are_retried_from_the_poll_thread(
    settings: Settings, fleet_registry: Registry, elevator: str, tmp_path: Any
) -> None:
    """Deliveries that time out (Kafka not there yet) go to the retry queue, not back into produce()
    inside the callback; once Kafka is up they are delivered and acked, none lost."""
    from sesmon.runtime.services import free_port

    port = free_port()
    away = settings.model_copy(update={"kafka_url": f"127.0.0.1:{port}"})
    fatals: list[str] = []
    bridge = IngestBridge(
        away,
        fleet_registry,
        create_topics=False,
        on_fatal=fatals.append,
        producer_config={"message.timeout.ms": 500},
    ).start()
    assert bridge.wait_connected(30)
    client = mqtt_client(settings)
    publish_all(client, [reading(elevator, i, NOW + i) for i in range(40)])
    assert bridge.wait_until(lambda b: b.counters["kafka_errors"] >= 40, 60)
    assert bridge.counters["produced"] == 0 and bridge.dead_parts() == []
    # as a PRODUCER_FENCED delivery report does (Tansu under load): the poll thread swaps producers
    old_producer = bridge.producer
    bridge._fenced = True
    assert bridge.wait_until(lambda b: b.counters["producer_replaced"] == 1, 30)
    assert bridge.producer is not old_producer
    kafka = start_kafka(tmp_path / "tansu", port=port)
    try:
        assert bridge.wait_until(lambda b: b.counters["produced"] == 40, 60), bridge.snapshot()
        assert bridge.counters["kafka_retries"] >= 40 and bridge.snapshot()["unacked"] == 0
        bridge.stop()
        envelopes = drain_envelopes(away, ["telemetry"], lambda e: len(e) >= 40)
        assert sorted(d.envelope["seq"] for d in envelopes) == list(range(40))
        assert fatals == []
    finally:
        client.disconnect()
        kafka.stop()
