"""Shared pieces of the pipeline tests: the stages as child processes and an MQTT alert inbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from sesmon.app.demo import Stage, wait_for_ingest
from sesmon.contract.registry import Registry, Unit
from sesmon.runtime.kafka import client_config, ensure_topics, make_reader
from sesmon.runtime.settings import Settings
from streams.app import DEVICE_STREAMS


class AlertInbox:
    """An MQTT subscriber (default sesmon/v1/alerts/#) that keeps (topic, decoded payload) pairs."""

    def __init__(self, settings: Settings, pattern: str = "sesmon/v1/alerts/#", timeout: float = 30) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Condition()  # notified on every alert: wait() wakes at once
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-inbox-{id(self)}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(*settings.mqtt_host_port)
        self.client.subscribe(pattern, qos=1)
        self.client.loop_start()
        # an alert published before the SUBACK would never reach us: return only once subscribed
        assert subscribed.wait(timeout), f"no SUBACK for {pattern} within {timeout} s"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.items.append((msg.topic, orjson.loads(msg.payload)))
            self.lock.notify_all()

    def firing(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(t, a) for t, a in self.items if a["state"] == "firing"]

    def wait(self, predicate: Any, timeout: float) -> bool:
        """Until ``predicate(self)`` holds (looked at again on every alert); False after ``timeout`` s."""
        return wait_notified(self.lock, lambda: predicate(self), timeout)


def wait_notified(changed: threading.Condition, check: Callable[[], Any], timeout: float) -> bool:
    """Until ``check()`` holds, looked at again whenever ``changed`` is notified (and every second,
    for a check that also reads something else); False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with changed:
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            changed.wait(min(remaining, 1.0))
    return True


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` s pass (False): for state of another
    thread or process that has no event to wait on (a counter, a file, a server). Never a fixed
    sleep before an assertion: the deadline is only an upper bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(every)
    return True


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> None:
    """:func:`wait_until`, asserting; the assertion names ``what``."""
    assert wait_until(predicate, timeout, every), f"timed out after {timeout} s waiting for {what}"


def end_offsets(settings: Settings, streams: list[str], timeout: float = 30) -> dict[tuple[str, int], int]:
    """Each partition's end, found by reading it to the end: Tansu's ListOffsets is wrong (stack.md K1)."""
    reader = make_reader(settings, streams, **{"enable.partition.eof": True})
    pending = {(tp.topic, tp.partition) for tp in reader.assignment()}
    ends: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + timeout
    try:
        while pending:
            assert time.monotonic() < deadline, f"partitions {pending} not read to their end in {timeout} s"
            for record in reader.consume(5000, 0.5):
                error = record.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    ends[(record.topic(), record.partition())] = record.offset()
                    pending.discard((record.topic(), record.partition()))
    finally:
        reader.close()
    return ends


def wait_caught_up(settings: Settings, group: str, streams: list[str], timeout: float = 90) -> None:
    """Wait until consumer group ``group`` has committed every record ``streams`` hold now.

    The worker commits only after its producer flushed what the records caused (Faust), and the
    alerts stage only past records whose every page the broker acknowledged: once caught up, a
    stage has nothing left to emit for what came before.
    """
    ends = end_offsets(settings, streams)
    asker = Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    behind: dict[tuple[str, int], tuple[int, int]] = {}

    def caught_up() -> bool:
        committed = asker.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
        behind.clear()
        for tp in committed:
            end = ends[(tp.topic, tp.partition)]
            if end > 0 and tp.offset < end:
                behind[(tp.topic, tp.partition)] = (tp.offset, end)
        return not behind

    try:
        assert wait_until(caught_up, timeout, every=0.2), (
            f"group {group} not caught up in {timeout} s: (committed, end) {behind}"
        )
    finally:
        asker.close()


def wait_ingested(settings: Settings, published: int, timeout: float = 60) -> None:
    """Wait until the ingest bridge has put all ``published`` MQTT messages in Kafka (or dead-letters)."""

    from tests.conftest import drain  # conftest imports this module: not at the top

    def done(records: list[Any]) -> bool:
        stats = (orjson.loads(r.value()) for r in records)
        return any(
            s.get("stage") == "ingest" and s.get("produced", 0) + s.get("dead_lettered", 0) >= published
            for s in stats
        )

    assert done(drain(settings, ["pipeline"], done, timeout=timeout)), f"{published} messages not ingested"


def settle_alerts(
    settings: Settings, inbox: AlertInbox, client: mqtt.Client, published: int, marker: Unit
) -> None:
    """Prove that no page is still coming for the ``published`` messages, instead of sleeping.

    Ingest took them all; the worker committed past them (it flushes its alerts first); the
    alerts stage committed past every alert (each page acknowledged by the broker). Then a
    marker alert goes through the same path: the alerts stage publishes its page on the same
    connection after every earlier page, so once the inbox has it, it has all of those.
    """
    from tests.conftest import publish_all  # conftest imports this module: not at the top

    wait_ingested(settings, published)
    wait_caught_up(settings, settings.faust_app_id, list(DEVICE_STREAMS))
    wait_caught_up(settings, f"{settings.topic_prefix}-alerts", ["alerts", "hazards"])
    event = {"device_id": marker.device_id, "ts": int(time.time() * 1000), "seq": 1, "code": "trapped"}
    publish_all(
        client,
        [(f"sesmon/v1/elevator/{marker.device_id}/event", orjson.dumps(event | {"state": "occur"}))],
    )
    assert inbox.wait(lambda box: any(a["device_id"] == marker.device_id for _, a in box.firing()), 90), (
        "the marker alert did not arrive"
    )


def stage_env(settings: Settings, registry: Registry) -> dict[str, str]:
    """Environment that points child stages at the test's servers and isolated topics."""
    assert registry.path is not None
    return {
        "SESMON_MQTT_URL": settings.mqtt_url or "",
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_DATA_DIR": str(settings.data_dir),
        "SESMON_REGISTRY": str(registry.path),
        "SESMON_TOPIC_PREFIX": settings.topic_prefix,
        "SESMON_MQTT_CLIENT_ID": settings.mqtt_client_id,
        "SESMON_FAUST_APP_ID": settings.faust_app_id,
        "SESMON_KAFKA_PARTITIONS": str(settings.kafka_partitions),
    }


def start_stages(settings: Settings, registry: Registry, logs: Path) -> dict[str, Stage]:
    """alerts, worker and ingest as child processes, exactly as ``sesmon demo`` runs them."""
    env = stage_env(settings, registry)
    ensure_topics(settings)
    stages = {
        name: Stage(name, [name], env, logs / f"{name}.log").start()
        for name in ("alerts", "worker", "ingest")
    }
    assert wait_for_ingest(settings), "ingest bridge did not subscribe"
    return stages


def stop_stages(stages: dict[str, Stage]) -> None:
    for stage in reversed(list(stages.values())):
        stage.stop()
    assert all(not s.alive for s in stages.values())


@pytest.fixture
def pipeline(settings: Settings, fleet_registry: Registry, tmp_path: Path) -> Iterator[Settings]:
    stages = start_stages(settings, fleet_registry, tmp_path / "logs")
    yield settings
    stop_stages(stages)
