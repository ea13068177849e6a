"""The MQTT -> Kafka bridge on real mosquitto and real Tansu: nothing lost, bad input explained,
publishers' identities checked, and a fatal Kafka error ends the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.bridge import IngestBridge
from sesmon.app.demo import wait_for_ingest
from sesmon.contract.groups import GROUP_COUNT_HEADER, envelopes_of, partition_of
from sesmon.contract.registry import Registry
from sesmon.runtime.health import FATAL_EXIT
from sesmon.runtime.kafka import ensure_topics
from sesmon.runtime.services import ManagedProcess, ServiceError, start_kafka, wait_for_port
from sesmon.runtime.settings import Settings
from tests.conftest import drain, drain_envelopes, mqtt_client, publish_all, reading
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

    telemetry = drain_envelopes(settings, ["telemetry"], lambda e: len(e) >= len(good))
    dead = drain(settings, ["deadletter"], lambda r: len(r) >= len(bad))
    # processed + dead-lettered = published, and nothing twice
    assert len(telemetry) == len(good) and len(dead) == len(bad)
    assert sorted(d.envelope["seq"] for d in telemetry) == list(range(2000))
    # on the partition the Kafka key device_id gave (and the worker's ticks get)
    assert all(d.partition == partition_of(d.envelope["device_id"].encode(), 2) for d in telemetry)
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
    envelopes = drain_envelopes(settings, ["telemetry"], lambda e: len(e) >= 500)
    assert {d.envelope["seq"] for d in envelopes} == set(range(500))


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
    envelopes = drain_envelopes(settings, ["telemetry", "events"], lambda e: len(e) >= 2)
    by_topic = {d.topic.rsplit(".", 1)[1]: d.envelope for d in envelopes}
    telemetry = by_topic["telemetry"]
    assert telemetry["mqtt_topic"] == f"gbt24476/v1/{device}/status"
    assert telemetry["body"]["mode"] == "inspection" and telemetry["body"]["door"] == "open"
    assert telemetry["ts"] == 1795311015000  # 09:30:15 Beijing time
    event = by_topic["events"]
    assert event["body"]["code"] == "trapped" and event["body"]["state"] == "occur"
    (dead,) = drain(settings, ["deadletter"], lambda r: len(r) >= 1)
    assert dict(dead.headers())["reason"] == b"vendor_unmapped_code"


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
    assert {k: partition_of(k, 4) for k in keys} == landed  # where ingest's groups go
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


# --------------------------------------------------------------------------- grouped records (issue 9)

LONG_LINGER_MS = 600_000.0  # groups leave only when full or at stop(): record counts are exact


def fleet_readings(registry: Registry, count: int, first_seq: int = 0) -> list[tuple[str, bytes]]:
    """``count`` readings round-robin over every unit of the test fleet (40 elevators, 10 boilers)."""
    units = list(registry)
    return [
        reading(units[i % len(units)].device_id, i, NOW + i, kind=units[i % len(units)].kind.value)
        for i in range(first_seq, first_seq + count)
    ]


def test_readings_travel_in_groups_per_partition(settings: Settings, fleet_registry: Registry) -> None:
    """2,000 readings from 50 units: a few records, every envelope once, each unit on its murmur2
    partition, in publish order; stop() produces the groups still open."""
    settings = settings.model_copy(
        update={"kafka_partitions": 4, "ingest_group_max": 100, "ingest_group_linger_ms": LONG_LINGER_MS}
    )
    bridge = bridge_of(settings, fleet_registry).start()
    assert bridge.wait_connected()
    client = mqtt_client(settings)
    messages = fleet_readings(fleet_registry, 2000)
    publish_all(client, messages)
    client.disconnect()
    assert bridge.wait_until(lambda b: b.counters["received"] == 2000)
    assert bridge.snapshot()["open_groups"] > 0  # the partial groups wait for a full count or the stop
    bridge.stop()
    assert bridge.counters["produced"] == 2000 and bridge.snapshot()["unacked"] == 0

    records = drain(settings, ["telemetry"], lambda r: sum(len(envelopes_of(x.value())) for x in r) >= 2000)
    per_partition = Counter(partition_of(topic.split("/")[3].encode(), 4) for topic, _ in messages)
    assert len(records) == sum(-(-n // 100) for n in per_partition.values())  # ceil(n / 100) each: 22
    assert bridge.counters["groups"] == len(records)
    seen: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition(), r.offset())):
        envelopes = envelopes_of(record.value())
        assert dict(record.headers())[GROUP_COUNT_HEADER] == str(len(envelopes)).encode()
        assert record.key() is None and len(envelopes) <= 100
        for env in envelopes:
            assert record.partition() == partition_of(env["device_id"].encode(), 4)
            seen.setdefault(env["device_id"], []).append(env["seq"])
    assert sorted(seq for seqs in seen.values() for seq in seqs) == list(range(2000))  # each exactly once
    assert len(seen) == 50 and all(seqs == sorted(seqs) for seqs in seen.values())  # publish order


def test_a_lone_reading_goes_out_after_the_linger(settings: Settings, fleet_registry: Registry) -> None:
    """Nothing follows it, nothing stops the bridge: the poll thread produces its group on time."""
    bridge = bridge_of(settings, fleet_registry).start()
    assert bridge.wait_connected()
    client = mqtt_client(settings)
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    publish_all(client, [reading(device, 7, NOW)])
    client.disconnect()
    assert bridge.wait_until(lambda b: b.counters["produced"] == 1, 30)
    assert bridge.snapshot()["open_groups"] == 0 and bridge.counters["groups"] == 1
    bridge.stop()
    (got,) = drain_envelopes(settings, ["telemetry"], lambda e: len(e) >= 1)
    assert got.envelope["seq"] == 7 and got.count == 1


def test_a_group_kafka_refuses_is_split_and_nothing_is_lost(
    settings: Settings, fleet_registry: Registry
) -> None:
    """Kafka takes at most 10,000 bytes a record (producer ``message.max.bytes``): 100-reading groups
    (about 30 kB) are refused, split in halves until they fit; a reading that alone is too large is
    dead-lettered as ``kafka_refused``; every other reading arrives once."""
    limit = 10_000
    settings = settings.model_copy(update={"ingest_group_max": 100, "ingest_group_linger_ms": LONG_LINGER_MS})
    bridge = bridge_of(settings, fleet_registry, producer_config={"message.max.bytes": limit}).start()
    assert bridge.wait_connected()
    device = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    readings = [reading(device, i, NOW + i, note="x" * 200) for i in range(400)]
    too_large = reading(device, 400, NOW + 400, note="y" * (limit + 1000))
    client = mqtt_client(settings)
    publish_all(client, [*readings, too_large])
    client.disconnect()
    assert bridge.wait_until(lambda b: b.counters["received"] == 401)
    bridge.stop()  # the last group (the large reading) leaves at the stop
    assert bridge.counters["produced"] == 400 and bridge.counters["dead_lettered"] == 1
    assert bridge.dead_reasons == {"kafka_refused": 1} and bridge.counters["groups_split"] >= 4
    assert bridge.snapshot()["unacked"] == 0 and FATALS == []
    records = drain(settings, ["telemetry"], lambda r: sum(len(envelopes_of(x.value())) for x in r) >= 400)
    assert all(len(r.value()) <= limit for r in records) and len(records) < 400  # still grouped
    envelopes = [env for r in sorted(records, key=lambda r: r.offset()) for env in envelopes_of(r.value())]
    assert [env["seq"] for env in envelopes] == list(range(400))  # once each, and in order
    (dead,) = drain(settings, ["deadletter"], lambda r: len(r) >= 1)
    assert b"MSG_SIZE_TOO_LARGE" in dict(dead.headers())["detail"]


def test_shared_subscription_splits_the_traffic_without_doubles(
    settings: Settings, fleet_registry: Registry
) -> None:
    """Two bridges in one ``$share`` group: each message is produced by exactly one of them. One stops
    mid-stream: the other goes on with its share, and mosquitto keeps the stopped one's share in its
    persistent session (it does not re-route it) until that client id is back, as after a restart."""
    shared = settings.model_copy(update={"ingest_shared_group": "ingest"})
    first = bridge_of(
        shared.model_copy(update={"mqtt_client_id": f"{settings.mqtt_client_id}-a"}), fleet_registry
    )
    second = bridge_of(
        shared.model_copy(update={"mqtt_client_id": f"{settings.mqtt_client_id}-b"}), fleet_registry
    )
    for bridge in (first.start(), second.start()):
        assert bridge.wait_connected()
    client = mqtt_client(settings)

    def produced(*bridges: IngestBridge) -> int:
        return sum(b.counters["produced"] for b in bridges)

    def until_produced(count: int, *bridges: IngestBridge) -> bool:
        """Counters of several bridges: each wakes only its own waiters, so ask each in turn."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(b.wait_until(lambda _b: produced(*bridges) >= count, 0.1) for b in bridges):
                return True
        return False

    publish_all(client, fleet_readings(fleet_registry, 2000))
    assert until_produced(2000, first, second)
    assert first.counters["produced"] > 0 and second.counters["produced"] > 0
    assert produced(first, second) == 2000

    publish_all(client, fleet_readings(fleet_registry, 500, first_seq=2000))
    assert until_produced(2500, first, second)
    first.stop()  # mid-stream: the next messages are routed to both members, one of them away
    before = second.counters["produced"]
    publish_all(client, fleet_readings(fleet_registry, 1500, first_seq=2500))
    assert second.wait_until(lambda b: b.counters["produced"] > before + 100, 60)  # it goes on
    back = bridge_of(first.settings, fleet_registry).start()  # the same client id, restarted
    assert until_produced(4000, first, second, back)
    client.disconnect()
    for bridge in (second, back):
        bridge.stop()
    assert produced(first, second, back) == 4000 and back.counters["produced"] > 0

    envelopes = drain_envelopes(settings, ["telemetry"], lambda e: len(e) >= 4000)
    assert sorted(d.envelope["seq"] for d in envelopes) == list(range(4000))  # each exactly once
    assert FATALS == []


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
    produced = sum(1 for _, outcome in expected if outcome == "produced")
    dead_count = len(cases) - produced
    envelopes = drain_envelopes(
        settings, ["reports", "dispatch", "telemetry"], lambda e: len(e) >= produced + 1
    )
    dead = drain(settings, ["deadletter"], lambda r: len(r) >= dead_count) if dead_count else []
    assert len(envelopes) + len(dead) == len(messages)
    outcomes: list[tuple[str, str, str | None]] = []
    for record in dead:
        headers = dict(record.headers())
        tail = headers["mqtt_topic"].decode().removeprefix("sesmon/v1/")
        outcomes.append((tail, headers["reason"].decode(), None))
    for drained in envelopes:
        if drained.topic == settings.topic("telemetry"):
            continue
        env = drained.envelope
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
        assert drain_envelopes(own, ["telemetry"], lambda e: len(e) >= 50, timeout=60), (
            "ingest delivered nothing"
        )

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
