"""A seed-fixed run of the ingest fuzzer (bench/fuzz_ingest.py) on real mosquitto and Tansu:
every input is produced or dead-lettered, Kafka holds exactly that, nothing crashed."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest

from bench.fuzz_ingest import FuzzInputs, count_kafka, units_of
from ingest.bridge import IngestBridge
from sesmon.contract.registry import Registry
from sesmon.runtime.settings import Settings
from tests.conftest import mqtt_client

COUNT = 5_000
SEED = 20261122


def assert_all_accounted(settings: Settings, bridge: IngestBridge, inputs: int, fatals: list[str]) -> None:
    def settled(b: IngestBridge) -> bool:
        c = b.counters
        done = c["produced"] + c["dead_lettered"]
        return c["received"] + c["own_output_skipped"] == inputs and done == c["received"]

    assert bridge.wait_until(settled, 120), bridge.snapshot()
    counters = bridge.counters
    assert counters["internal_errors"] == 0, bridge.dead_reasons
    assert bridge.dead_parts() == [] and fatals == []
    produced, dead = counters["produced"], counters["dead_lettered"]
    assert produced > COUNT // 4 and dead > COUNT // 4  # the mix really has both
    streams, reasons = count_kafka(settings, produced + dead, timeout=60)  # messages, groups flattened
    assert streams["deadletter"] == dead
    assert sum(n for s, n in streams.items() if s != "deadletter") == produced
    assert reasons == bridge.dead_reasons
    # the hostile classes of the issue are all in the mix and all named
    expected = {"too_deep", "oversize", "bad_vendor_payload", "not_json", "invalid", "unauthorised"}
    assert expected <= set(reasons)


@pytest.fixture
def recording_bridge(settings: Settings, fleet_registry: Registry) -> Any:
    fatals: list[str] = []
    bridge = IngestBridge(settings, fleet_registry, on_fatal=fatals.append)
    yield bridge, fatals
    bridge.stop(2)


def test_fuzz_through_the_broker(settings: Settings, fleet_registry: Registry, recording_bridge: Any) -> None:
    bridge, fatals = recording_bridge
    bridge.start()
    assert bridge.wait_connected(30)
    client = mqtt_client(settings)
    outstanding: list[mqtt.MQTTMessageInfo] = []
    for topic, payload, _category in FuzzInputs(SEED, units_of(fleet_registry)).take(COUNT):
        info = client.publish(topic, payload, qos=1)  # type: ignore[arg-type]
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        outstanding.append(info)  # 5,000 owed at most: far from paho's 65,535-id limit
    for info in outstanding:
        info.wait_for_publish(60)
        assert info.is_published()
    client.disconnect()
    assert_all_accounted(settings, bridge, COUNT, fatals)


def test_fuzz_in_process_with_topics_no_broker_passes(
    settings: Settings, fleet_registry: Registry, recording_bridge: Any
) -> None:
    """Invalid UTF-8, control characters and wildcards in topics reach only the callback itself."""
    bridge, fatals = recording_bridge
    bridge.start(connect_mqtt=False)
    inputs = FuzzInputs(SEED + 1, units_of(fleet_registry), broker_safe=False)
    for topic, payload, _category in inputs.take(COUNT):
        bridge.handle_raw(topic if isinstance(topic, bytes) else topic.encode(), payload)
    assert_all_accounted(settings, bridge, COUNT, fatals)
