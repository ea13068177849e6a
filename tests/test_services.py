"""The embedded servers start for real on free loopback ports and stop without leftovers."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.services import EmbeddedServices, start_influxdb, start_mqtt, wait_for_port
from simulators.fleet import generate_fleet


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


def test_embedded_services_start_a_secure_mqtt_broker(tmp_path: Path) -> None:
    """``EmbeddedServices(secure=credentials)`` (``sesmon demo --secure``): anonymous is refused,
    a stage with its own credentials gets in."""
    from sesmon.runtime.broker_auth import write_credentials  # written in parallel with this test

    write_registry(generate_fleet(5, 1, seed=2), tmp_path / "fleet.csv")
    credentials = write_credentials(Registry.load(tmp_path / "fleet.csv"), tmp_path / "mqtt")
    services = EmbeddedServices(tmp_path / "servers", secure=credentials).start()
    try:
        outcomes: dict[str, bool] = {}

        def connects(name: str, username: str | None, password: str | None) -> None:
            done = threading.Event()
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{name}")
            if username:
                client.username_pw_set(username, password)

            def on_connect(_c: object, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
                outcomes[name] = not reason.is_failure
                done.set()

            client.on_connect = on_connect
            client.connect("127.0.0.1", services.mqtt.port)  # type: ignore[union-attr]
            client.loop_start()
            assert done.wait(10), name
            client.loop_stop()
            client.disconnect()

        env = credentials.env_for("sesmon-ingest")
        connects("anonymous", None, None)
        connects("ingest", env["SESMON_MQTT_USERNAME"], env["SESMON_MQTT_PASSWORD"])
        connects("wrong", env["SESMON_MQTT_USERNAME"], "not-the-password")
        assert outcomes == {"anonymous": False, "ingest": True, "wrong": False}
    finally:
        services.stop()
    assert not any(p.alive for p in services.processes)
