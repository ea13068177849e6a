"""Ingest's own MQTT session against real mosquitto (plain, TLS, passwords) and a hostile raw peer.

What ingest relies on: every message arrives once per delivery with its exact bytes, a PUBACK
goes out only when asked, unacknowledged messages come back after a reconnect (persistent
session), a broker restart (SIGTERM) mid-stream loses nothing the broker acknowledged and the
session subscribes again, keepalive holds an idle connection, and nothing a peer sends (bad
lengths, QoS 2, unknown packets, refusals, a packet cut off, 2 MB in 1-byte pieces) ends the
thread: it reconnects. Every wait is on an event (a message, an accept, an EOF, a SUBACK).
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ingest import mqtt_session
from ingest.bridge import IngestBridge
from ingest.mqtt_session import MqttProtocolError, MqttSession, tls_context
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.broker_auth import write_credentials
from sesmon.runtime.services import ManagedProcess, free_port, mosquitto_conf, mosquitto_path, start_mqtt
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet
from tests.conftest import drain_envelopes, publish_all, reading
from tests.pipeline_support import wait_until

NOW = 1_795_299_000_000


class Inbox:
    """What a session delivered, in order; acks each message at once unless told otherwise."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.messages: list[tuple[bytes, bytes, int, int]] = []
        self.auto_ack = auto_ack
        self.session: MqttSession | None = None
        self.subacks: list[list[int]] = []
        self._cv = threading.Condition()

    def on_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        with self._cv:
            self.messages.append((topic, payload, mid, qos))
            self._cv.notify_all()
        if self.auto_ack and self.session is not None:
            self.session.ack(mid, qos)

    def on_subscribed(self, codes: list[int]) -> None:
        with self._cv:
            self.subacks.append(codes)
            self._cv.notify_all()

    def wait(self, predicate: Callable[[Inbox], bool], timeout: float = 60.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self), timeout)

    def payloads(self) -> list[bytes]:
        with self._cv:
            return [m[1] for m in self.messages]


def session_of(settings: Settings, inbox: Inbox, topics: list[str], client_id: str = "sess") -> MqttSession:
    session = MqttSession(
        settings, client_id, [(t, 1) for t in topics], inbox.on_message, on_subscribed=inbox.on_subscribed
    )
    inbox.session = session
    return session


def open_settings(port: int, **extra: Any) -> Settings:
    return Settings(mqtt_url=f"mqtt://127.0.0.1:{port}", **extra)


def paho_publisher(port: int, client_id: str = "", clean_session: bool = True) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    client.reconnect_delay_set(0.1, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def acknowledged(info: mqtt.MQTTMessageInfo, timeout: float = 60.0) -> bool:
    """Wait for a publish's PUBACK, riding out a restart (paho raises while it is disconnected)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if info.is_published():
                return True
            info.wait_for_publish(1.0)
        except (RuntimeError, ValueError):
            return False  # refused while disconnected: not acknowledged, so not counted
    return False


def fence(session: MqttSession) -> None:
    """A QoS 1 publish through the session: its PUBACK means the broker handled every ack before it."""
    info = session.publish("fence/x", b"", qos=1)
    assert info.wait_for_publish(30) and info.is_published()


# --------------------------------------------------------------------------- real mosquitto


def test_receives_exact_bytes_and_acked_messages_do_not_come_back(mqtt_server: ManagedProcess) -> None:
    settings = open_settings(mqtt_server.port)
    inbox = Inbox()
    session = session_of(settings, inbox, ["s/#"]).start()
    assert inbox.wait(lambda i: len(i.subacks) == 1) and inbox.subacks == [[1]]
    sent = [(f"s/{i % 7}/é", f"m{i}".encode() * (1 + i % 50)) for i in range(3000)]
    sent += [("s/big", bytes(range(256)) * 400), ("s/empty", b"")]  # 100 KiB, and nothing at all
    client = paho_publisher(mqtt_server.port)
    publish_all(client, sent)
    publish_all(client, [("s/qos0", b"at most once")], qos=0)
    assert inbox.wait(lambda i: len(i.messages) == len(sent) + 1)
    got = [(t.decode(), p) for t, p, _, _ in inbox.messages]
    assert got == [*sent, ("s/qos0", b"at most once")]  # in order, byte for byte
    assert [q for *_, q in inbox.messages] == [1] * len(sent) + [0]
    fence(session)
    session.close()
    assert not session.thread.is_alive()

    again = Inbox()
    second = session_of(settings, again, ["s/#"]).start()
    assert again.wait(lambda i: len(i.subacks) == 1)
    publish_all(client, [("s/marker", b"marker")])
    assert again.wait(lambda i: b"marker" in i.payloads())
    assert again.payloads() == [b"marker"]  # every earlier message was acknowledged
    second.close()
    client.disconnect()


def test_unacked_messages_come_back_after_a_reconnect(mqtt_server: ManagedProcess) -> None:
    """Persistent session: what was not acked is redelivered to the next connection, and only that."""
    settings = open_settings(mqtt_server.port)
    inbox = Inbox(auto_ack=False)
    first = session_of(settings, inbox, ["s/#"]).start()
    assert inbox.wait(lambda i: len(i.subacks) == 1)
    client = paho_publisher(mqtt_server.port)
    publish_all(client, [("s/r", str(i).encode()) for i in range(300)])
    assert inbox.wait(lambda i: len(i.messages) == 300)
    for _topic, payload, mid, qos in inbox.messages:
        if int(payload) % 2 == 0:
            first.ack(mid, qos)
    fence(first)
    first.abort()  # as a killed process: no DISCONNECT

    again = Inbox(auto_ack=False)
    second = session_of(settings, again, ["s/#"]).start()
    publish_all(client, [("s/r", b"marker")])
    assert again.wait(lambda i: b"marker" in i.payloads())
    redelivered = [p for p in again.payloads() if p != b"marker"]
    assert sorted(redelivered, key=int) == [str(i).encode() for i in range(1, 300, 2)]
    second.close()
    client.disconnect()


def test_broker_restart_mid_stream_loses_nothing_acknowledged(
    mqtt_server: ManagedProcess, tmp_path: Path
) -> None:
    """SIGTERM and restart on the same store while readings flow and acks lag (as Kafka makes them)."""
    settings = open_settings(mqtt_server.port)
    inbox = Inbox(auto_ack=False)
    session = session_of(settings, inbox, ["s/#"]).start()
    assert inbox.wait(lambda i: len(i.subacks) == 1)
    stop = threading.Event()

    def acker() -> None:  # acks a few ms late, in order, like the bridge's delivery reports
        done = 0
        while not stop.is_set():
            inbox.wait(lambda i, seen=done: len(i.messages) > seen or stop.is_set(), 1)
            with inbox._cv:
                batch = inbox.messages[done:]
            time.sleep(0.002)
            for _t, _p, mid, qos in batch:
                session.ack(mid, qos)
            done += len(batch)

    acking = threading.Thread(target=acker, daemon=True)
    acking.start()
    publisher = paho_publisher(mqtt_server.port, client_id="restart-pub", clean_session=False)
    connected = threading.Event()
    publisher.on_connect = lambda *_args: connected.set()
    acked: set[int] = set()
    restarted: ManagedProcess | None = None
    try:
        for chunk in range(0, 3000, 500):
            infos = [(n, publisher.publish("s/n", str(n).encode(), qos=1)) for n in range(chunk, chunk + 500)]
            acked |= {n for n, info in infos if acknowledged(info)}
            if chunk == 1000:
                connected.clear()
                mqtt_server.stop()  # SIGTERM: mosquitto writes its store
                restarted = start_mqtt(tmp_path / "mqtt", port=mqtt_server.port)
                connected.wait(30)  # paho reconnects by itself: its on_connect says when
        assert len(acked) >= 2500, len(acked)
        seen: set[int] = set()
        looked = [0]

        def complete(i: Inbox) -> bool:  # called on every message: only the new ones are looked at
            seen.update(int(p) for _t, p, _m, _q in i.messages[looked[0] :])
            looked[0] = len(i.messages)
            return acked <= seen

        assert inbox.wait(complete, 120), f"{len(acked - seen)} acknowledged readings lost"
        assert session.connects >= 2 and session.thread.is_alive()
    finally:
        stop.set()
        publisher.disconnect()
        publisher.loop_stop()
        session.close()
        if restarted is not None:
            restarted.stop()


def test_subscribes_again_when_the_restarted_broker_forgot_the_session(
    mqtt_server: ManagedProcess, tmp_path: Path
) -> None:
    settings = open_settings(mqtt_server.port)
    inbox = Inbox()
    session = session_of(settings, inbox, ["s/#"]).start()
    assert inbox.wait(lambda i: len(i.subacks) == 1)
    mqtt_server.stop()
    fresh = start_mqtt(tmp_path / "fresh-store", port=mqtt_server.port)  # no session, no subscription
    try:
        assert inbox.wait(lambda i: len(i.subacks) == 2)
        client = paho_publisher(fresh.port)
        publish_all(client, [("s/after", b"after the restart")])
        assert inbox.wait(lambda i: b"after the restart" in i.payloads())
        client.disconnect()
        session.close()
    finally:
        fresh.stop()


def test_keepalive_holds_an_idle_connection(mqtt_server: ManagedProcess) -> None:
    settings = open_settings(mqtt_server.port, mqtt_keepalive_s=1)
    inbox = Inbox()
    session = session_of(settings, inbox, ["s/#"]).start()
    assert inbox.wait(lambda i: len(i.subacks) == 1)
    deadline = time.monotonic() + 60
    while session.pings < 3 and time.monotonic() < deadline:  # mosquitto drops a client silent 1.5 s
        inbox.wait(lambda _i: session.pings >= 3, 1)
    assert session.pings >= 3 and session.connects == 1
    session.close()


# --------------------------------------------------------------------------- credentials and TLS


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[ManagedProcess, Any, Registry]]:
    path = tmp_path / "registry.csv"
    write_registry(generate_fleet(4, 1, seed=5), path)
    registry = Registry.load(path)
    creds = write_credentials(registry, tmp_path / "creds")
    broker = start_mqtt(tmp_path / "secure", secure=creds)
    yield broker, creds, registry
    broker.stop()


def test_logs_in_with_its_account_and_a_wrong_password_is_refused(
    secure_broker: tuple[ManagedProcess, Any, Registry],
) -> None:
    broker, creds, registry = secure_broker
    unit = next(u for u in registry if u.kind == "elevator")
    url = f"mqtt://sesmon-ingest:{creds.password('sesmon-ingest')}@127.0.0.1:{broker.port}"
    inbox = Inbox()
    session = session_of(Settings(mqtt_url=url), inbox, ["sesmon/v1/#"], client_id="sesmon-ingest").start()
    assert inbox.wait(lambda i: len(i.subacks) == 1) and inbox.subacks == [[1]]
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unit.device_id, protocol=mqtt.MQTTv311)
    device.username_pw_set(unit.device_id, creds.password(unit.device_id))
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    publish_all(device, [reading(unit.device_id, 1, NOW)])
    assert inbox.wait(lambda i: len(i.messages) == 1)
    assert inbox.messages[0][0] == f"sesmon/v1/elevator/{unit.device_id}/telemetry".encode()
    device.disconnect()
    session.close()

    wrong = MqttSession(
        Settings(mqtt_url=f"mqtt://sesmon-ingest:nope@127.0.0.1:{broker.port}"), "x", [], print
    )
    with pytest.raises(MqttProtocolError, match=r"bad user name or password|not authorised"):
        wrong._connect()


def test_the_bridge_on_the_secure_broker_keeps_its_identity_rules(
    secure_broker: tuple[ManagedProcess, Any, Registry], kafka_server: ManagedProcess, tmp_path: Path
) -> None:
    """Ingest on its own account: device readings pass; a firm's maintenance report only for its units."""
    broker, creds, registry = secure_broker
    unit = next(u for u in registry if u.kind == "elevator" and u.firm_id)
    other_firm = next(f"firm-{u.firm_id}" for u in registry if u.firm_id and u.firm_id != unit.firm_id)
    tag = f"s{time.monotonic_ns() % 10**8}"
    settings = Settings(
        mqtt_url=f"mqtt://sesmon-ingest:{creds.password('sesmon-ingest')}@127.0.0.1:{broker.port}",
        kafka_url=f"127.0.0.1:{kafka_server.port}",
        data_dir=tmp_path / "state",
        topic_prefix=tag,
        mqtt_client_id="sesmon-ingest",
        kafka_partitions=2,
        mqtt_require_identity=True,
        ingest_mqtt_client="session",
    )
    fatals: list[str] = []
    bridge = IngestBridge(settings, registry, on_fatal=fatals.append).start()
    assert isinstance(bridge.client, MqttSession) and bridge.wait_connected(30)
    assert bridge.client.thread.name == "mqtt-network" and bridge.dead_parts() == []

    def login(username: str) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv311)
        client.username_pw_set(username, creds.password(username))
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        return client

    report = {"device_id": unit.device_id, "ts": NOW, "firm_id": unit.firm_id, "kind": "routine_15d"}
    device, own, other = login(unit.device_id), login(f"firm-{unit.firm_id}"), login(other_firm)
    publish_all(device, [reading(unit.device_id, 1, NOW, moving=False)])
    publish_all(own, [(f"sesmon/v1/reports/maintenance/firm-{unit.firm_id}", json.dumps(report).encode())])
    foreign = {**report, "firm_id": other_firm.removeprefix("firm-")}
    publish_all(other, [(f"sesmon/v1/reports/maintenance/{other_firm}", json.dumps(foreign).encode())])
    assert bridge.wait_until(lambda b: b.counters["produced"] + b.counters["dead_lettered"] == 3, 60)
    assert bridge.counters["produced"] == 2 and bridge.dead_reasons == {"unauthorised": 1}
    bridge.stop()
    for client in (device, own, other):
        client.disconnect()
    envelopes = drain_envelopes(settings, ["telemetry", "reports"], lambda e: len(e) >= 2)
    assert sorted(d.envelope["type"] for d in envelopes) == ["report", "telemetry"]
    assert fatals == []


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (cryptography), as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("sesmon test CA"))
        .issuer_name(name("sesmon test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_with_the_stage_settings(tmp_path: Path) -> None:
    """mqtts:// and SESMON_MQTT_TLS_CA as paho gets them; a broker signed by another CA is refused."""
    binary = mosquitto_path()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    ca, cert, key = _certificates(tmp_path / "tls")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        mosquitto_conf(port, tmp_path / "broker") + f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    broker = ManagedProcess(
        "mosquitto", [binary, "-c", str(conf)], tmp_path / "mosquitto.log", port=port
    ).start()
    try:
        settings = Settings(mqtt_url=f"mqtts://127.0.0.1:{port}", mqtt_tls_ca=ca)
        inbox = Inbox()
        session = session_of(settings, inbox, ["s/#"]).start()
        assert inbox.wait(lambda i: len(i.subacks) == 1)
        info = session.publish("s/tls", b"over TLS", qos=1)
        assert info.wait_for_publish(30)
        assert inbox.wait(lambda i: i.payloads() == [b"over TLS"])
        session.close()

        other_ca, _, _ = _certificates(tmp_path / "other")
        stranger = MqttSession(settings.model_copy(update={"mqtt_tls_ca": other_ca}), "x", [], print)
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger._connect()
        assert tls_context(settings.model_copy(update={"mqtt_tls_insecure": True})).check_hostname is False
        assert tls_context(settings).verify_mode == ssl.CERT_REQUIRED
    finally:
        broker.stop()


# --------------------------------------------------------------------------- a hostile raw peer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: str, payload: bytes, qos: int = 1, mid: int = 1) -> bytes:
    raw = topic.encode()
    body = struct.pack(">H", len(raw)) + raw + (struct.pack(">H", mid) if qos else b"") + payload
    return bytes([0x30 | qos << 1]) + _varint(len(body)) + body


class Peer:
    """One accepted connection of the fake broker, read packet by packet."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        conn.settimeout(60)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def packet(self) -> tuple[int, bytes]:
        header = self._exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._exact(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        return header, self._exact(length)

    def handshake(self, refuse: int = 0) -> None:
        header, body = self.packet()
        assert header == 0x10 and body[:7] == b"\x00\x04MQTT\x04" and body[7] & 0x02 == 0  # persistent
        self.conn.sendall(bytes([0x20, 2, 0, refuse]))
        if refuse:
            return
        header, body = self.packet()
        assert header == 0x82
        self.conn.sendall(b"\x90\x03" + body[:2] + b"\x01")

    def closed_by_the_session(self) -> bool:
        try:
            while self.conn.recv(65536):
                pass
        except OSError:
            pass
        self.conn.close()
        return True


def test_nothing_a_raw_peer_sends_ends_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_session, "RECONNECT_MAX_S", 0.2)  # many short connections: keep it quick
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    settings = open_settings(server.getsockname()[1], mqtt_keepalive_s=60)
    inbox = Inbox()
    session = session_of(settings, inbox, ["ok/#"]).start()

    def accept(refuse: int = 0) -> Peer:
        peer = Peer(server.accept()[0])
        peer.handshake(refuse)
        return peer

    garbage = [
        b"\x30\xff\xff\xff\xff\x01",  # a remaining length longer than four bytes
        b"\x32\x0a\x01\xf4topicXYZ",  # QoS 1 PUBLISH whose topic length (500) runs past the packet
        _publish("ok/qos2", b"x", qos=2),  # QoS 2 although subscribed with QoS 1
        b"\xf0\x00",  # packet type 15 (AUTH, MQTT 5 only)
        b"\x20\x02\x00\x00",  # a second CONNACK
        b"\x30\x01\x00",  # PUBLISH too short for its topic length
    ]
    peer = accept()
    peer.conn.sendall(_publish("ok/1", b"first"))
    assert inbox.wait(lambda i: i.payloads() == [b"first"])
    for bad in garbage:
        peer.conn.sendall(bad)
        assert peer.closed_by_the_session()
        peer = accept()
    peer.conn.close()  # the peer vanishes before anything at all
    refused = Peer(server.accept()[0])
    refused.handshake(refuse=5)  # not authorised: retried with backoff
    refused.conn.close()
    peer = accept()
    big = bytes(range(256)) * 8192  # 2 MiB
    stream = _publish("ok/big", big, mid=7) + _publish("ok/2", b"second", mid=8)
    for i in range(0, 64):  # the header and the start of it a byte at a time
        peer.conn.sendall(stream[i : i + 1])
    peer.conn.sendall(stream[64:])
    assert inbox.wait(lambda i: len(i.messages) == 3)
    assert inbox.payloads()[1:] == [big, b"second"]
    assert {peer.packet(), peer.packet()} == {(0x40, b"\x00\x07"), (0x40, b"\x00\x08")}  # PUBACKs
    peer.conn.sendall(_publish("ok/cut", b"x" * 100)[:50])  # a packet cut off by a dying peer
    peer.conn.close()
    peer = accept()
    peer.conn.sendall(_publish("ok/3", b"third", mid=9))
    assert peer.packet() == (0x40, b"\x00\x09")
    assert session.thread.is_alive() and session.connects == len(garbage) + 3
    closing = threading.Thread(target=session.close, kwargs={"barrier_topic": "b/never"})
    closing.start()
    header, body = peer.packet()
    assert header == 0xA2 and body[2:] == b"\x00\x07b/never"  # the barrier UNSUBSCRIBE ...
    peer.conn.sendall(b"\xb0\x02" + body[:2])
    assert peer.packet() == (0xE0, b"")  # ... then DISCONNECT, once its UNSUBACK came
    closing.join(30)
    assert not session.thread.is_alive()
    assert inbox.payloads() == [b"first", big, b"second", b"third"]
    server.close()


def test_an_ack_for_a_message_of_an_earlier_connection_is_not_sent() -> None:
    """The broker redelivers it on the new connection under the same id, and may since reuse the id."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    inbox = Inbox(auto_ack=False)
    session = session_of(open_settings(server.getsockname()[1]), inbox, ["ok/#"]).start()
    first = Peer(server.accept()[0])
    first.handshake()
    first.conn.sendall(_publish("ok/a", b"a", mid=5))
    assert inbox.wait(lambda i: len(i.messages) == 1)
    first.conn.close()
    second = Peer(server.accept()[0])
    second.handshake()
    second.conn.sendall(_publish("ok/b", b"b", mid=6))
    assert inbox.wait(lambda i: len(i.messages) == 2)
    (_, _, old_mid, _), (_, _, new_mid, _) = inbox.messages
    session.ack(old_mid)  # Kafka confirmed the first one late: its connection is gone
    session.ack(new_mid)
    assert second.packet() == (0x40, b"\x00\x06")  # the first PUBACK on the wire is the new one's
    session.close()
    assert second.closed_by_the_session()
    server.close()


def test_a_silent_peer_is_left_after_the_keepalive() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    inbox = Inbox()
    session = session_of(open_settings(server.getsockname()[1], mqtt_keepalive_s=1), inbox, ["ok/#"]).start()
    peer = Peer(server.accept()[0])
    peer.handshake()
    assert peer.packet() == (0xC0, b"")  # PINGREQ, never answered
    assert peer.closed_by_the_session()
    again = Peer(server.accept()[0])
    again.handshake()
    session.close()
    assert again.closed_by_the_session()
    server.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_bug_in_the_callback_ends_the_thread_for_the_health_watch(mqtt_server: ManagedProcess) -> None:
    """The bridge's callback never raises; if one did, the thread must die (health sees it), not spin."""
    subscribed = threading.Event()

    def broken(*_args: Any) -> None:
        raise RuntimeError("a bug")

    settings = open_settings(mqtt_server.port)
    session = MqttSession(settings, "buggy", [("s/#", 1)], broken, on_subscribed=lambda _c: subscribed.set())
    session.start()
    assert subscribed.wait(30)
    client = paho_publisher(mqtt_server.port)
    publish_all(client, [("s/x", b"boom")])
    session.thread.join(30)
    assert not session.thread.is_alive()
    client.disconnect()


@pytest.mark.parametrize("client", ["session", "paho"])
def test_the_bridge_on_either_receive_path(client: str, settings: Settings, fleet_registry: Registry) -> None:
    """``SESMON_INGEST_MQTT_CLIENT``: both paths produce and account for everything, and stop cleanly."""
    unit = next(u.device_id for u in fleet_registry if u.kind == "elevator")
    settings = settings.model_copy(update={"ingest_mqtt_client": client})
    fatals: list[str] = []
    bridge = IngestBridge(settings, fleet_registry, on_fatal=fatals.append).start()
    assert bridge.wait_connected(30)
    assert isinstance(bridge.client, MqttSession) == (client == "session")
    publisher = paho_publisher(mqtt_server_port(settings))
    good = [reading(unit, i, NOW + i) for i in range(500)]
    publish_all(publisher, [*good, (f"sesmon/v1/elevator/{unit}/telemetry", b"{broken")])
    assert bridge.wait_until(lambda b: b.counters["produced"] + b.counters["dead_lettered"] == 501, 60)
    assert bridge.counters["validated_fast"] == 500 and bridge.dead_reasons == {"not_json": 1}
    assert bridge.dead_parts() == []
    bridge.stop()
    publisher.disconnect()
    envelopes = drain_envelopes(settings, ["telemetry"], lambda e: len(e) >= 500)
    assert sorted(d.envelope["seq"] for d in envelopes) == list(range(500))
    assert fatals == []


def mqtt_server_port(settings: Settings) -> int:
    return settings.mqtt_endpoint.port


def test_a_broker_that_stops_delivering_is_left_and_the_probe_comes_back_after_it() -> None:
    """mosquitto 2.0.11 can lose a client's in-flight quota: the connection stays up and every
    message queues at the broker. The session's probe (a QoS 1 message to a topic of its own)
    notices and reconnects; the probe never reaches the stage's callback."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    inbox = Inbox()
    settings = open_settings(server.getsockname()[1], mqtt_keepalive_s=60)
    session = MqttSession(
        settings,
        "sess",
        [("ok/#", 1)],
        inbox.on_message,
        probe_topic="probe/sess",
        probe_after_s=0.2,
        probe_timeout_s=5.0,
    ).start()

    def grant(peer: Peer) -> None:
        header, body = peer.packet()
        assert header == 0x10
        peer.conn.sendall(bytes([0x20, 2, 0, 0]))
        header, body = peer.packet()
        assert header == 0x82 and body.endswith(b"\x00\x0aprobe/sess\x01")
        peer.conn.sendall(b"\x90\x04" + body[:2] + b"\x01\x01")  # both granted

    stuck = Peer(server.accept()[0])
    grant(stuck)
    header, body = stuck.packet()  # the probe; this "broker" never delivers it back
    assert header & 0xF6 == 0x32 and body[2:12] == b"probe/sess"
    assert stuck.closed_by_the_session()  # given up after the probe timeout
    healthy = Peer(server.accept()[0])
    grant(healthy)
    header, body = healthy.packet()  # the probe again (resent or new): this broker delivers it
    assert header & 0xF6 == 0x32 and body[2:12] == b"probe/sess"
    healthy.conn.sendall(b"\x40\x02" + body[12:14])  # PUBACK of its publish
    healthy.conn.sendall(_publish("probe/sess", b"probe", mid=41))
    assert healthy.packet() == (0x40, b"\x00\x29")  # acked by the session itself
    healthy.conn.sendall(_publish("ok/1", b"data", mid=42))
    assert inbox.wait(lambda i: i.payloads() == [b"data"])
    assert session.stuck_reconnects == 1 and session.connects == 2
    session.close()
    server.close()


def test_the_probe_round_trips_through_mosquitto_without_reaching_the_stage(
    mqtt_server: ManagedProcess,
) -> None:
    inbox = Inbox()
    session = MqttSession(
        open_settings(mqtt_server.port),
        "sess-probe",
        [("ok/#", 1)],
        inbox.on_message,
        on_subscribed=inbox.on_subscribed,
        probe_topic="sesmon/probe/sess-probe",
        probe_after_s=0.2,
    ).start()
    wait_until(lambda: session.probes >= 3, 60)  # counted by the session's thread: no event to wait on
    assert session.probes >= 3  # a probe is sent only once the one before it came back
    assert session.stuck_reconnects == 0 and session.connects == 1 and inbox.messages == []
    session.close()
