"""The MQTT 3.1.1 wire pieces shared by sesmon's own bulk clients (ingest's subscriber session,
the alerts stage's pager) and the simulator pool: packet framing, CONNECT/CONNACK, TLS.

Why our own: paho costs ~90 µs of Python and several system calls per message; the bulk
clients read and write many packets per system call. Everything here follows the settings
:func:`sesmon.runtime.mqtt.make_client` gives paho, so a broker that paho can reach these reach.
"""

from __future__ import annotations

import socket
import ssl
import struct

from sesmon.runtime.settings import MqttEndpoint, Settings

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
#: CONNACK return codes (MQTT 3.1.1 §3.2.2.3)
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class ConnectionLost(ConnectionError):
    """The connection ended (closed by the broker, reset, or silent past the keepalive): reconnect."""


class MqttProtocolError(ConnectionError):
    """The broker sent something MQTT 3.1.1 does not allow here, or refused us: reconnect."""


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS settings :func:`sesmon.runtime.mqtt.make_client` gives paho, as an ``SSLContext``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.mqtt_tls_cert:
        context.load_cert_chain(str(settings.mqtt_tls_cert), str(settings.mqtt_tls_key or "") or None)
    if settings.mqtt_tls_ca:
        context.load_verify_locations(str(settings.mqtt_tls_ca))
    else:
        context.load_default_certs()
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = not settings.mqtt_tls_insecure
    return context


def utf8_field(text: str) -> bytes:
    """An MQTT UTF-8 string: two-byte big-endian length, then the bytes."""
    data = text.encode("utf-8")
    return struct.pack(">H", len(data)) + data


def packet(header: int, body: bytes) -> bytes:
    """Fixed header (type and flags, remaining length as MQTT's base-128 varint) + body."""
    length = len(body)
    out = bytearray([header])
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


def connect_packet(endpoint: MqttEndpoint, client_id: str, keepalive_s: int, clean_session: bool) -> bytes:
    """CONNECT with the endpoint's username and password (MQTT 3.1.1, no will)."""
    flags = 0x02 if clean_session else 0x00
    payload = utf8_field(client_id)
    if endpoint.username:
        flags |= 0x80
        payload += utf8_field(endpoint.username)
        if endpoint.password is not None:
            flags |= 0x40
            payload += utf8_field(endpoint.password)
    variable = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack(">H", keepalive_s)
    return packet(0x10, variable + payload)


def open_connection(
    settings: Settings,
    client_id: str,
    *,
    keepalive_s: int,
    clean_session: bool,
    timeout_s: float,
    endpoint: MqttEndpoint | None = None,
) -> tuple[socket.socket, bool]:
    """TCP (+TLS when the endpoint or a CA asks), CONNECT, CONNACK: the socket and the broker's
    ``session present`` flag; ``endpoint`` overrides the settings' broker. Raises ``OSError``; a
    refusal is :class:`MqttProtocolError` naming why."""
    endpoint = endpoint or settings.mqtt_endpoint
    sock: socket.socket = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.tls or settings.mqtt_tls_ca:
            sock = tls_context(settings).wrap_socket(sock, server_hostname=endpoint.host)
        sock.sendall(connect_packet(endpoint, client_id, keepalive_s, clean_session))
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                raise ConnectionLost("closed by the broker before CONNACK")
            data += chunk
        if data[0] != 0x20 or data[1] != 0x02:
            raise MqttProtocolError(f"expected CONNACK, got {data[:4].hex()}")
        if data[3] != 0:
            reason = CONNACK_REASONS.get(data[3], f"code {data[3]}")
            raise MqttProtocolError(f"broker refused the connection: {reason}")
    except BaseException:
        sock.close()
        raise
    return sock, bool(data[2] & 0x01)
