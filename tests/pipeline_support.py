"""Shared pieces of the pipeline tests: the stages as child processes and an MQTT alert inbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from sesmon.app.demo import Stage, wait_for_ingest
from sesmon.contract.registry import Registry
from sesmon.runtime.kafka import ensure_topics
from sesmon.runtime.settings import Settings


class AlertInbox:
    """An MQTT subscriber (default sesmon/v1/alerts/#) that keeps (topic, decoded payload) pairs."""

    def __init__(self, settings: Settings, pattern: str = "sesmon/v1/alerts/#") -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-inbox-{id(self)}")
        self.client.on_message = self._on_message
        self.client.connect(*settings.mqtt_host_port)
        self.client.subscribe(pattern, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.items.append((msg.topic, orjson.loads(msg.payload)))

    def firing(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(t, a) for t, a in self.items if a["state"] == "firing"]

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.2)
        return bool(predicate(self))


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
