"""A minimal MQTT 3.1.1 QoS 1 publisher for the alerts stage's pager: the pages, in bulk.

Why not paho here: paho reads each packet with three ``recv`` calls and writes each with its own
``send``, plus ~90 µs of Python a message. In a stage where a busy main loop (Kafka, incidents,
SQLite) shares the GIL, every one of those system calls is a turn at the GIL given away and
waited for again; paging stalled near 1,400-2,000 pages/s. This session writes all the pages of
a window with one ``sendall`` and reads every PUBACK waiting with one ``recv``.

What it does (all the stage needs): CONNECT with the stage's client id, username and password
(clean session) over TCP or TLS (the settings :func:`sesmon.runtime.mqtt.make_client` gives
paho), QoS 1 PUBLISH with packet ids the caller chooses, PUBACK parsing, PINGREQ keepalive and
a dead connection noticed, DISCONNECT. It runs no thread and never reconnects by itself: the
pager drives it (select on :attr:`PublisherSession.sock`), reconnects under the shared retry
policy and re-sends what was unacknowledged (marked DUP, as MQTT asks).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from sesmon.runtime.mqtt_wire import (
    DISCONNECT,
    PINGREQ,
    ConnectionLost,
    MqttProtocolError,
    open_connection,
    packet,
    utf8_field,
)
from sesmon.runtime.settings import Settings

__all__ = ["ConnectionLost", "MqttProtocolError", "PublisherSession", "publish_packet", "split_packets"]

RECV_BYTES = 64 * 1024


def split_packets(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete packets at the start of ``buf`` as (first header byte, body), and the rest."""
    out: list[tuple[int, bytes]] = []
    at, end = 0, len(buf)
    while end - at >= 2:
        length, shift, pos = 0, 0, at + 1
        while True:
            if pos >= end:
                return out, buf[at:]  # the length itself is not complete yet
            byte = buf[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ConnectionLost("malformed remaining length from the broker")
        if end - pos < length:
            break  # the packet is not complete yet
        out.append((buf[at], buf[pos : pos + length]))
        at = pos + length
    return out, buf[at:]


def publish_packet(mid: int, topic: str, payload: bytes, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH (not retained)."""
    return packet(0x3A if dup else 0x32, utf8_field(topic) + struct.pack(">H", mid) + payload)


class PublisherSession:
    """One connection to the broker at a time; not thread-safe (the pager thread alone uses it)."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        *,
        connect_timeout_s: float = 3.0,
        io_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.keepalive_s = max(5, int(settings.mqtt_keepalive_s))
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s  # a broker that takes no bytes this long is gone
        self.sock: socket.socket | None = None
        self._buf = b""
        self._last_out = self._last_in = 0.0
        self._ping_sent: float | None = None

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """TCP (+TLS), CONNECT, CONNACK. Raises ``OSError`` (a refusal: :class:`MqttProtocolError`)."""
        self.close(graceful=False)
        # clean session: what the stage still owes is in its own record, not the broker's
        sock, _ = open_connection(
            self.settings,
            self.client_id,
            keepalive_s=self.keepalive_s,
            clean_session=True,
            timeout_s=self.connect_timeout_s,
        )
        sock.settimeout(self.io_timeout_s)
        self.sock, self._buf, self._ping_sent = sock, b"", None
        self._last_out = self._last_in = time.monotonic()

    def close(self, graceful: bool = True) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            if graceful:
                sock.sendall(DISCONNECT)
        except OSError:
            pass
        finally:
            sock.close()

    # ------------------------------------------------------------------ traffic
    def send(self, packets: list[bytes]) -> None:
        """Write ``packets`` with one ``sendall``; a failure is :class:`ConnectionLost`."""
        if self.sock is None:
            raise ConnectionLost("not connected")
        try:
            self.sock.sendall(b"".join(packets))
        except OSError as exc:
            raise ConnectionLost(f"write failed: {exc!r}") from exc
        self._last_out = time.monotonic()

    def read(self) -> list[int]:
        """Read what is waiting (call when the socket is readable): the packet ids acknowledged."""
        if self.sock is None:
            raise ConnectionLost("not connected")
        try:
            data = self.sock.recv(RECV_BYTES)
            if isinstance(self.sock, ssl.SSLSocket):  # TLS may hold more decrypted bytes than select sees
                while self.sock.pending():
                    data += self.sock.recv(RECV_BYTES)
        except OSError as exc:
            raise ConnectionLost(f"read failed: {exc!r}") from exc
        if not data:
            raise ConnectionLost("closed by the broker")
        self._last_in = time.monotonic()
        self._ping_sent = None
        packets, self._buf = split_packets(self._buf + data)
        # PUBACKs carry the packet id; PINGRESP just proves the link; nothing else is expected
        return [(body[0] << 8) | body[1] for header, body in packets if header >> 4 == 4 and len(body) == 2]

    def keepalive(self) -> None:
        """PINGREQ when quiet for half the keepalive; a link silent past 1.5 of it is lost."""
        if self.sock is None:
            return
        now = time.monotonic()
        if self._ping_sent is not None and now - self._ping_sent > self.keepalive_s:
            raise ConnectionLost(f"no answer from the broker for {self.keepalive_s} s")
        if self._ping_sent is None and now - max(self._last_out, self._last_in) >= self.keepalive_s / 2:
            self.send([PINGREQ])
            self._ping_sent = now
