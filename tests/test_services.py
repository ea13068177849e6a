"""The embedded servers start for real on free loopback ports and stop without leftovers."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from sesmon.services import start_influxdb, start_mqtt, wait_for_port


def test_influxdb_answers_ping_and_stops(tmp_path: Path) -> None:
    server = start_influxdb(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ping", timeout=10) as response:
            assert response.status == 204
            assert response.headers["X-Influxdb-Version"].startswith("1.")
    finally:
        server.stop()
    assert not server.alive
    assert not wait_for_port(server.port, 0.5)


def test_amqtt_fallback_carries_qos1(tmp_path: Path) -> None:
    """Where mosquitto is not installed the demo uses amqtt; it must really deliver."""
    server = start_mqtt(tmp_path, prefer="amqtt")
    got = threading.Event()
    try:
        assert server.name == "amqtt"
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fallback-sub")
        sub.on_message = lambda *_: got.set()
        sub.connect("127.0.0.1", server.port)
        sub.subscribe("sesmon/v1/#", qos=1)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fallback-pub")
        pub.connect("127.0.0.1", server.port)
        pub.loop_start()
        for _ in range(20):  # the subscription may take a moment to register
            pub.publish("sesmon/v1/elevator/E1/status", b"online", qos=1).wait_for_publish(5)
            if got.wait(0.5):
                break
        assert got.is_set()
        pub.disconnect()
        sub.disconnect()
    finally:
        server.stop()
    assert not server.alive
