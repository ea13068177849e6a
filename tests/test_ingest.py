"""The MQTT -> Kafka bridge on real mosquitto and real Tansu: nothing lost, bad input explained,
publishers' identities checked, and a fatal Kafka error ends the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.bridge import IngestBridge
from sesmon.app.demo import wait_for_ingest
from sesmon.contract.registry import Registry
from sesmon.runtime.health import FATAL_EXIT
from sesmon.runtime.kafka import ensure_topics
from sesmon.runtime.services import ManagedProcess, ServiceError, start_kafka, wait_for_port
from sesmon.runtime.settings import Settings
from tests.conftest import drain, mqtt_client, publish_all, reading
from tests.pipeline_support import stage_env

NOW = 1_795_299_000_000  # fixed device time (2026-11-22): nothing here depends on the clock
FATALS: list[str] = []  # in-process bridges record fatal errors here instead of ending pytest


def bridge_of(settings: Settings, registry: Registry | None, **kwargs: Any) -> IngestBridge:
    return IngestBridge(settings, registry, on_fatal=FATALS.append, **kwargs)


def handled(count: int) -> Any:
    return lambda b: b.counters["produced"] + b.counters["dead_lettered"] == count


def test_valid_and_bad_messages_all_accounted(settings: Settings, fleet_registry: Registry) -> None:
    elevators = [u.device_id for u in fleet_registry if u.kind == "elevator"][:10]
    bridge = bridge_of(settings, fleet_registry).start()
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
    assert bridge.wait_until(handled(len(good) + len(bad)))
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
    doomed = bridge_of(broken, fleet_registry, create_topics=False).start()
    assert doomed.wait_connected()
    client = mqtt_client(settings)
    messages = [reading(device, i, NOW + i) for i in range(500)]
    publish_all(client, messages)
    assert doomed.wait_until(lambda b: b.counters["received"] == 500)
    assert doomed.counters["produced"] == 0
    doomed.crash()  # no flush, no DISCONNECT: the broker keeps the 500 unacked in our session

    survivor = bridge_of(settings, fleet_registry).start()
    assert survivor.wait_until(lambda b: b.counters["produced"] >= 500, 60)
    survivor.stop()
    client.disconnect()
    records = drain(settings, ["telemetry"], lambda r: len(r) >= 500)
    assert {orjson.loads(r.value())["seq"] for r in records} == set(range(500))


def test_resubscribes_after_broker_restart(
    settings: Settings, fleet_registry: Registry, mqtt_server: ManagedProcess
) -> None:
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    bridge = bridge_of(settings, fleet_registry).start()
    assert bridge.wait_connected()
    mqtt_server.stop()  # persistence off: the restarted broker knows no session, no subscription
    mqtt_server.start()
    # subscribed again (SUBACK) on a second connection: nothing published from here is missed
    assert bridge.wait_until(lambda b: b.counters["mqtt_connects"] >= 2 and b.wait_connected(0), 30)
    client = mqtt_client(settings)
    publish_all(client, [reading(device, i, NOW + i) for i in range(100)])
    assert bridge.wait_until(lambda b: b.counters["produced"] == 100, 30)
    bridge.stop()
    client.disconnect()


def test_gbt24476_terminal_publishes_directly(settings: Settings, fleet_registry: Registry) -> None:
    """A numeric GB/T 24476-style terminal is mapped on the way in; what cannot be mapped is dead-lettered."""
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    bridge = bridge_of(settings, fleet_registry).start()
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
    assert bridge.wait_until(handled(3))
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

    from sesmon.runtime.kafka import ensure_topics, make_producer

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


def test_registry_that_cannot_be_reloaded_keeps_the_old_one(
    settings: Settings, fleet_registry: Registry, tmp_path: Path
) -> None:
    """A registry file changed into something unreadable (here a field over the csv module's limit,
    which raised ``_csv.Error`` past a ValueError-only handler and ended the poll thread)."""
    path = tmp_path / "registry.csv"
    fleet_registry.write(path)
    registry = Registry.load(path)
    bridge = bridge_of(settings, registry).start()
    assert bridge.wait_connected()
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "X" * 300_000 + "\n", encoding="utf-8")
    os.utime(path, ns=(registry.mtime_ns + 10**9, registry.mtime_ns + 10**9))  # a change, whatever the clock
    assert bridge.wait_until(lambda b: b.counters["registry_reload_failures"] == 1, 30)
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    client = mqtt_client(settings)
    publish_all(client, [reading(device, 1, NOW)])
    client.disconnect()
    assert bridge.wait_until(lambda b: b.counters["produced"] == 1)  # the old registry still in force
    assert bridge.dead_parts() == [] and len(registry) == len(fleet_registry)
    bridge.stop()


# --------------------------------------------------------------------------- who may say what


def identity_cases(registry: Registry) -> tuple[str, str, str, list[tuple[str, dict[str, Any], str]]]:
    """(device, its firm, another firm, [(topic tail, body, outcome)]) for reports and dispatch."""
    unit = next(u for u in registry if u.kind == "elevator" and u.firm_id)
    other = next(u.firm_id for u in registry if u.firm_id and u.firm_id != unit.firm_id)
    device, firm = unit.device_id, unit.firm_id
    maintenance = {"device_id": device, "ts": NOW, "firm_id": firm, "kind": "routine_15d"}
    hazard = {"hazard_id": f"HZ.{device}.trapped_repeat.{NOW}", "by": "x", "ts": NOW}
    alert_id = f"{device}.trapped.{NOW}"
    dispatch = {"alert_id": alert_id, "action": "on_site", "by": "x", "ts": NOW}
    cases = [
        (f"reports/maintenance/firm-{firm}", maintenance, "produced"),
        (f"reports/maintenance/firm-{other}", {**maintenance, "firm_id": other}, "unauthorised"),
        (f"reports/maintenance/firm-{firm}", {**maintenance, "firm_id": other}, "unauthorised"),
        ("reports/maintenance/operator", maintenance, "produced"),
        (f"reports/maintenance/{device}", maintenance, "unauthorised"),  # a device's own username
        (f"reports/hazard/firm-{firm}", {**hazard, "action": "rectified"}, "produced"),
        (f"reports/hazard/firm-{firm}", {**hazard, "action": "verified"}, "unauthorised"),
        ("reports/hazard/inspector-7", {**hazard, "action": "verified"}, "produced"),
        (f"dispatch/{alert_id}/firm-{firm}", dispatch, "produced"),
        (f"dispatch/{alert_id}/firm-{other}", dispatch, "unauthorised"),
        (f"dispatch/{alert_id}/operator-2", dispatch, "produced"),
        ("reports/maintenance", maintenance, "old_topic"),
        (f"dispatch/{alert_id}", dispatch, "old_topic"),
    ]
    return device, firm, other, cases


@pytest.mark.parametrize("require_identity", [True, False])
def test_reports_and_dispatch_are_authorised_by_the_publisher_in_the_topic(
    require_identity: bool, settings: Settings, fleet_registry: Registry
) -> None:
    """Secure broker: the username level is required and checked; open broker: old topics still work."""
    device, _firm, _other, cases = identity_cases(fleet_registry)
    settings = settings.model_copy(update={"mqtt_require_identity": require_identity})
    bridge = bridge_of(settings, fleet_registry).start()
    assert bridge.wait_connected()
    messages = [(f"sesmon/v1/{tail}", orjson.dumps(body)) for tail, body, _ in cases]
    messages.append(reading(device, 1, NOW))  # device topics need no identity level
    client = mqtt_client(settings)
    publish_all(client, messages)
    client.disconnect()
    assert bridge.wait_until(handled(len(messages)))
    bridge.stop()

    old_topic = "unauthenticated" if require_identity else "produced"
    expected = sorted((tail, old_topic if outcome == "old_topic" else outcome) for tail, _, outcome in cases)
    records = drain(
        settings, ["reports", "dispatch", "telemetry", "deadletter"], lambda r: len(r) >= len(messages)
    )
    assert len(records) == len(messages)
    outcomes: list[tuple[str, str, str | None]] = []
    for record in records:
        if record.topic() == settings.topic("telemetry"):
            continue
        if record.topic() == settings.topic("deadletter"):
            headers = dict(record.headers())
            tail = headers["mqtt_topic"].decode().removeprefix("sesmon/v1/")
            outcomes.append((tail, headers["reason"].decode(), None))
        else:
            env = orjson.loads(record.value())
            outcomes.append((env["mqtt_topic"].removeprefix("sesmon/v1/"), "produced", env["publisher"]))
    assert sorted((tail, outcome) for tail, outcome, _ in outcomes) == expected
    for tail, outcome, publisher in outcomes:  # later stages see who did it
        if outcome == "produced":
            parts = tail.split("/")
            assert publisher == (parts[2] if len(parts) == 3 else None)
    assert bridge.counters["internal_errors"] == 0 and FATALS == []


# --------------------------------------------------------------------------- fatal Kafka errors


def test_kafka_losing_its_state_ends_ingest_with_status_70(
    settings: Settings, fleet_registry: Registry, tmp_path: Path
) -> None:
    """Tansu restarted (it keeps nothing): the idempotent producer's id is unknown to it. ``sesmon ingest``
    must end (status 70, clear message) instead of living on with dead threads or a producer that never
    delivers again; its unacked messages stay in the broker's session for the restarted stage."""
    kafka = start_kafka(tmp_path / "tansu")
    own = settings.model_copy(update={"kafka_url": f"127.0.0.1:{kafka.port}"})
    ensure_topics(own)
    stderr_path = tmp_path / "ingest.stderr"
    stop = threading.Event()
    proc = None
    try:
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sesmon.app.cli", "ingest"],
                env={**os.environ, **stage_env(own, fleet_registry)},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        assert wait_for_ingest(own, 60), stderr_path.read_text()[-2000:]
        device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
        client = mqtt_client(own)

        def keep_publishing() -> None:
            seq = 0
            while not stop.wait(0.005):
                client.publish(*reading(device, seq, NOW + seq), qos=1)
                seq += 1

        publisher = threading.Thread(target=keep_publishing, daemon=True)
        publisher.start()
        assert drain(own, ["telemetry"], lambda r: len(r) >= 50, timeout=60), "ingest delivered nothing"

        kafka.stop()  # SIGTERM; Tansu needs > 2 s to release its port (stack.md)
        while wait_for_port(kafka.port, 0.2):
            stop.wait(0.2)
        for _attempt in range(60):
            try:
                kafka = start_kafka(tmp_path / "tansu", port=kafka.port)
                break
            except ServiceError:  # AddrInUse: not released yet
                stop.wait(0.5)
        assert kafka.alive, "Tansu did not come back on its port"
        assert proc.wait(90) == FATAL_EXIT
        text = stderr_path.read_text()
        assert "sesmon ingest: FATAL:" in text and "UNKNOWN_PRODUCER_ID" in text, text[-3000:]
        assert "redelivered after the restart" in text
        stop.set()
        publisher.join(5)
        client.disconnect()
    finally:
        stop.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kafka.stop()
