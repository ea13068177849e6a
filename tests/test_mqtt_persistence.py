"""A broker restart loses nothing it acknowledged: mosquitto persistence + the bridge's session.

The publisher counts a reading as acknowledged when its PUBACK arrives; mosquitto is stopped
(SIGTERM) and started again on the same port and store in the middle of the stream, triggered
by progress, and every acknowledged reading must reach Kafka.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from ingest.bridge import IngestBridge
from sesmon.contract.registry import Registry
from sesmon.runtime.services import ManagedProcess, start_mqtt
from sesmon.runtime.settings import Settings
from tests.conftest import Drained, drain_envelopes, reading

N = 20_000
RESTART_AFTER = 6_000
T0 = 1_795_300_000_000  # 2026-11-23, a fixed device clock


def wait_acked(info: mqtt.MQTTMessageInfo, timeout: float = 60.0) -> None:
    """Until the PUBACK, riding out the restart (paho raises while it is disconnected)."""
    deadline = time.monotonic() + timeout
    while not acknowledged(info) and time.monotonic() < deadline:
        try:
            info.wait_for_publish(1.0)
        except (RuntimeError, ValueError):
            return  # refused while disconnected: not acknowledged, so not counted


def acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def test_mosquitto_restart_loses_no_acknowledged_reading(
    settings: Settings, mqtt_server: ManagedProcess, fleet_registry: Registry, tmp_path: Path
) -> None:
    units = [u.device_id for u in fleet_registry if u.kind == "elevator"][:20]
    bridge = IngestBridge(settings, fleet_registry).start()
    assert bridge.wait_connected(30)
    sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persist-pub", clean_session=False)
    publisher.reconnect_delay_set(0.1, 1)
    connected = threading.Event()
    publisher.on_connect = lambda *_args: connected.set()
    publisher.connect("127.0.0.1", mqtt_server.port)
    publisher.loop_start()
    restarted: ManagedProcess | None = None
    try:
        for chunk in range(0, N, 500):  # bounded in flight (paho's 65,535-id trap)
            batch = []
            for seq in range(chunk, chunk + 500):
                topic, payload = reading(units[seq % len(units)], seq, T0 + seq * 10, moving=False)
                batch.append((seq, publisher.publish(topic, payload, qos=1)))
            for _seq, info in batch:
                wait_acked(info)
            sent += batch
            if chunk == RESTART_AFTER:  # progress, not a timer: the broker has acked 6,500
                connected.clear()
                mqtt_server.stop()  # SIGTERM: mosquitto writes its store and exits
                restarted = start_mqtt(tmp_path / "mqtt", port=mqtt_server.port)
                connected.wait(30)  # paho reconnects by itself: its on_connect says when
        acked = {seq for seq, info in sent if acknowledged(info)}
        assert len(acked) >= N - 1_000, len(acked)
        expected = set(acked)
        assert bridge.wait_connected(60)

        def complete(envelopes: list[Drained]) -> bool:
            return expected <= {d.envelope["seq"] for d in envelopes}

        envelopes = drain_envelopes(settings, ["telemetry"], complete, timeout=120)
        seen = {d.envelope["seq"] for d in envelopes}
        assert expected - seen == set(), f"{len(expected - seen)} acknowledged readings lost"
        assert bridge.counters["mqtt_connects"] >= 2  # it reconnected and resubscribed
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        bridge.stop()
        if restarted is not None:
            restarted.stop()
