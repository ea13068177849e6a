"""Real servers for the tests: mosquitto per test, one Tansu Kafka broker per session.

Tests isolate themselves on the shared Kafka broker by a unique topic prefix, consumer group
and Faust app id (see the ``settings`` fixture), not by mocks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import pytest

from sesmon.contract.groups import envelopes_of
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.kafka import make_reader
from sesmon.runtime.services import ManagedProcess, start_kafka, start_mqtt
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet

GUANGZHOU = timezone(timedelta(hours=8))


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    server = start_kafka(tmp_path_factory.mktemp("tansu"))
    yield server
    server.stop()


@pytest.fixture
def mqtt_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    server = start_mqtt(tmp_path / "mqtt")
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, kafka_server: ManagedProcess, mqtt_server: ManagedProcess) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_server.port}",
        kafka_url=f"127.0.0.1:{kafka_server.port}",
        data_dir=tmp_path / "state",
        topic_prefix=f"t{tag}",
        mqtt_client_id=f"ingest-{tag}",
        faust_app_id=f"streams-{tag}",
        kafka_partitions=2,
    )


def clock_date(epoch_ms: int | None = None) -> date:
    """Guangzhou calendar date of a device clock (epoch ms; default: the live one)."""
    ms = int(time.time() * 1000) if epoch_ms is None else epoch_ms
    return datetime.fromtimestamp(ms / 1000, GUANGZHOU).date()


@pytest.fixture(scope="session")
def fleet_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    path = tmp_path_factory.mktemp("fleet") / "registry.csv"
    # the fleet is registered as of the day the pipeline tests' readings are stamped (they run
    # on live clocks: lateness bound, deadman), so its inspections are in date whenever it runs
    write_registry(generate_fleet(40, 10, seed=11, today=clock_date()), path)
    return Registry.load(path)


def mqtt_client(settings: Settings, client_id: str = "") -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(*settings.mqtt_host_port)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    """Publish and wait for every PUBACK; fail loudly on any refused publish."""
    infos = []
    for topic, payload in messages:
        info = client.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish refused rc={info.rc}"
        infos.append(info)
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()


def reading(device_id: str, seq: int, ts: int, kind: str = "elevator", **fields: Any) -> tuple[str, bytes]:
    body = {"device_id": device_id, "ts": ts, "seq": seq, **fields}
    return f"sesmon/v1/{kind}/{device_id}/telemetry", json.dumps(body).encode()


def _read_until(
    settings: Settings, streams: list[str], until: Any, timeout: float, add: Callable[[Any, list[Any]], None]
) -> list[Any]:
    """Consume ``streams`` from the start, ``add`` each record to a list, until ``until(list)`` or timeout."""
    consumer = make_reader(settings, streams)
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(found):
            for record in consumer.consume(5000, 0.5):
                if not record.error():
                    add(record, found)
    finally:
        consumer.close()
    return found


def drain(settings: Settings, streams: list[str], until: Any, timeout: float = 90.0) -> list[Any]:
    """Consume ``streams`` from the start until ``until(records)`` is true or time runs out."""
    return _read_until(settings, streams, until, timeout, lambda record, out: out.append(record))


class Drained(NamedTuple):
    """One envelope read back from a device stream, with the record that carried it."""

    envelope: dict[str, Any]
    topic: str
    partition: int
    offset: int
    count: int  # envelopes in that record (ingest groups them per partition)


def _add_envelopes(record: Any, out: list[Any]) -> None:
    found = envelopes_of(record.value())
    where = (record.topic(), record.partition(), record.offset(), len(found))
    out += [Drained(env, *where) for env in found]


def drain_envelopes(
    settings: Settings, streams: list[str], until: Any, timeout: float = 90.0
) -> list[Drained]:
    """Like :func:`drain`, flattening grouped records: ``until(envelopes)`` sees every envelope so far."""
    return _read_until(settings, streams, until, timeout, _add_envelopes)


from tests.pipeline_support import pipeline  # noqa: E402,F401  (fixture shared by pipeline tests)
