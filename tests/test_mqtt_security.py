"""The secure broker, for real: passwords, the ACL, client ids bound to usernames, persistence.

MQTT 3.1.1 gives a publisher no error for a publish the ACL refuses: mosquitto acks and drops
it. So each "cannot publish" check sends the refused message and then an allowed marker on
the same connection; the broker handles one connection's messages in order, so once the
marker has arrived, the refused message would have arrived before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.broker_auth import BrokerCredentials, mosquitto_hash, verify_hash, write_credentials
from sesmon.runtime.services import ManagedProcess, start_mqtt
from simulators.fleet import generate_fleet


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    path = tmp_path_factory.mktemp("fleet") / "registry.csv"
    write_registry(generate_fleet(5, 2, seed=3), path)
    return Registry.load(path)


@pytest.fixture(scope="module")
def creds(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> BrokerCredentials:
    return write_credentials(registry, tmp_path_factory.mktemp("mqtt"), operators=2)


@pytest.fixture(scope="module")
def broker(creds: BrokerCredentials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    server = start_mqtt(tmp_path_factory.mktemp("secure"), secure=creds)
    yield server
    server.stop()


class Conn:
    """A paho client that records connect results, SUBACK codes and messages, in order."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str = "") -> None:
        self.connack: queue.Queue[bool] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(not rc.is_failure)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put([r.value for r in rcs])
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        self.ok = self.connack.get(timeout=30)

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=30)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(30)
        assert info.is_published()

    def received_until(self, marker: bytes) -> list[tuple[str, bytes]]:
        got = []
        while True:
            topic, payload = self.messages.get(timeout=30)
            if payload == marker:
                return got
            got.append((topic, payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def devices(registry: Registry) -> list[tuple[str, str]]:
    return [(u.device_id, str(u.kind)) for u in registry]


def login(broker: ManagedProcess, creds: BrokerCredentials, username: str, client_id: str = "") -> Conn:
    conn = Conn(broker.port, username, creds.password(username), client_id)
    assert conn.ok, f"{username} could not log in"
    return conn


def test_password_hashes_are_mosquitto_pbkdf2_sha512() -> None:
    hashed = mosquitto_hash("s3cret", salt=b"0123456789ab")
    assert hashed.startswith("$7$101$")
    assert verify_hash("s3cret", hashed) and not verify_hash("other", hashed)


def test_rerunning_keeps_passwords_and_files_are_private(registry: Registry, tmp_path: Path) -> None:
    first = write_credentials(registry, tmp_path)
    again = write_credentials(registry, tmp_path)
    assert {u: a.password for u, a in first.accounts.items()} == {
        u: a.password for u, a in again.accounts.items()
    }
    for path in (again.passwd, again.acl, again.csv):
        assert path.stat().st_mode & 0o077 == 0
    header = again.csv.read_text().splitlines()[0]
    assert header == "username,password,role,device_id"
    roles = {a.role for a in again.accounts.values()}
    assert roles == {"device", "firm", "inspector", "operator", "ingest", "alerts"}


def test_anonymous_and_wrong_password_are_refused(broker: ManagedProcess, registry: Registry) -> None:
    assert not Conn(broker.port, None, None).ok
    device_id = devices(registry)[0][0]
    assert not Conn(broker.port, device_id, "not-the-password").ok


def test_a_device_publishes_only_as_itself(
    broker: ManagedProcess, creds: BrokerCredentials, registry: Registry
) -> None:
    (a, kind_a), (b, kind_b) = devices(registry)[:2]
    watcher = login(broker, creds, "sesmon-ingest")
    assert watcher.subscribe("sesmon/v1/#") == [1]
    device = login(broker, creds, a)
    device.publish(f"sesmon/v1/{kind_b}/{b}/telemetry", b"spoofed")  # as B: refused
    device.publish("sesmon/v1/alerts/centre/96333", b"fake alert")  # an alert: refused
    device.publish("sesmon/v1/reports/hazard/operator", b"fake report")  # as the operator: refused
    device.publish(f"sesmon/v1/{kind_a}/{a}/telemetry", b"marker-1")  # its own topic: allowed
    assert watcher.received_until(b"marker-1") == []
    device.close()
    watcher.close()


def test_a_device_reads_nothing_and_the_operator_reads_alerts(
    broker: ManagedProcess, creds: BrokerCredentials, registry: Registry
) -> None:
    device_id, kind = devices(registry)[0]
    device = login(broker, creds, device_id)
    device.subscribe("sesmon/v1/alerts/#")  # mosquitto grants it, then filters every delivery
    operator = login(broker, creds, "operator")
    assert operator.subscribe("sesmon/v1/alerts/#") == [1]
    alerts = login(broker, creds, "sesmon-alerts")
    alerts.publish("sesmon/v1/alerts/centre/96333", b"a real alert")
    assert operator.messages.get(timeout=30) == ("sesmon/v1/alerts/centre/96333", b"a real alert")
    # a PUBACK to the device comes after anything already queued for it: then its inbox is final
    device.publish(f"sesmon/v1/{kind}/{device_id}/telemetry", b"round trip")
    assert device.messages.empty()
    # the operator's dispatch and reports go on topics that name it, and only there
    ingest = login(broker, creds, "sesmon-ingest")
    assert ingest.subscribe("sesmon/v1/dispatch/#") == [1]
    operator.publish("sesmon/v1/dispatch/E1.elevator.trapped.1/firm-F001", b"as a firm: refused")
    operator.publish("sesmon/v1/dispatch/E1.elevator.trapped.1/operator", b"marker-2")
    assert ingest.received_until(b"marker-2") == []
    for conn in (device, operator, alerts, ingest):
        conn.close()


def test_a_firm_reads_only_its_own_alerts(broker: ManagedProcess, creds: BrokerCredentials) -> None:
    firms = sorted(u for u, a in creds.accounts.items() if a.role == "firm")
    mine = firms[0]
    firm_id = mine.removeprefix("firm-")
    conn = login(broker, creds, mine)
    conn.subscribe("sesmon/v1/alerts/#")  # granted, but each delivery is checked against the ACL
    alerts = login(broker, creds, "sesmon-alerts")
    alerts.publish("sesmon/v1/alerts/centre/96333", b"for the centre")
    alerts.publish(f"sesmon/v1/alerts/firm/{firms[1].removeprefix('firm-')}", b"for another firm")
    alerts.publish(f"sesmon/v1/alerts/firm/{firm_id}", b"for this firm")
    assert conn.messages.get(timeout=30) == (f"sesmon/v1/alerts/firm/{firm_id}", b"for this firm")
    conn.close()
    alerts.close()


def test_nobody_takes_over_the_ingest_session(
    broker: ManagedProcess, creds: BrokerCredentials, registry: Registry
) -> None:
    """With use_username_as_clientid, a device presenting client id ``sesmon-ingest`` gets its own id."""
    device_id, kind = devices(registry)[0]
    ingest = login(broker, creds, "sesmon-ingest", client_id="sesmon-ingest")
    assert ingest.subscribe("sesmon/v1/#") == [1]
    disconnected = threading.Event()
    ingest.client.on_disconnect = lambda *_: disconnected.set()
    intruder = login(broker, creds, device_id, client_id="sesmon-ingest")
    intruder.publish(f"sesmon/v1/{kind}/{device_id}/telemetry", b"marker-3")
    assert ingest.received_until(b"marker-3") == []  # the real session still receives
    assert not disconnected.is_set()
    intruder.close()
    ingest.close()


def test_two_operator_desks_each_hear_the_alerts(broker: ManagedProcess, creds: BrokerCredentials) -> None:
    """One account per desk: a second desk on the same account would take the first one's session."""
    desks = [login(broker, creds, name) for name in ("operator", "operator-2")]
    for desk in desks:
        assert desk.subscribe("sesmon/v1/alerts/#") == [1]
    alerts = login(broker, creds, "sesmon-alerts")
    alerts.publish("sesmon/v1/alerts/centre/96333", b"to both desks")
    for desk in desks:
        assert desk.messages.get(timeout=30) == ("sesmon/v1/alerts/centre/96333", b"to both desks")
    for conn in (*desks, alerts):
        conn.close()
