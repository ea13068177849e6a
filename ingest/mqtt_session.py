"""A minimal MQTT 3.1.1 subscriber session for ingest: what paho does for it, at a fraction of the cost.

Why: paho's pure-Python receive and PUBACK path costs ~90-105 µs of CPU a message (one select,
about five recv and two send system calls, and paho's per-packet Python), more than all the
rest of ingest together; one ingest process then tops out near 10,000 messages/s of one core
(issue 9). Ingest needs a small part of MQTT: one persistent subscriber session that receives
QoS 0/1 PUBLISH and sends PUBACKs when told. This module does just that, and does it in bulk:
one ``recv`` takes every packet waiting (up to 256 KiB) and parses them in one pass, and the
PUBACKs owed are written together, one ``send`` for all that accumulated since the last one.

What it keeps of paho's contract for ingest (``ingest.bridge``):
- CONNECT with the stage's client id, username and password, ``clean_session=False`` (the
  broker keeps the subscription and every unacknowledged message while we are away), TLS
  with the same settings as :func:`sesmon.runtime.mqtt.make_client`, keepalive (PINGREQ).
- SUBSCRIBE on every connect (a broker restarted without its store forgot the subscription);
  the SUBACK's refusals are reported; ``on_subscribed`` marks the moment nothing is missed.
- A PUBACK only when :meth:`MqttSession.ack` says so (the bridge: after Kafka confirmed), in
  the order the acks were given. A message's ``mid`` carries the connection it came on: an
  ack for a message of an earlier connection is dropped, because the broker redelivers that
  message on the new one under the same packet id, and a late ack could otherwise acknowledge
  a newer message the broker has since numbered the same (at-least-once, never early).
- The broker's ``max_inflight_messages`` bounds how many messages are unacknowledged at once.
- Reconnect with the shared retry policy (:mod:`sesmon.runtime.retry`) after any connection
  error, malformed packet or silence past the keepalive; :meth:`close` flushes the acks owed
  and sends DISCONNECT; :meth:`abort` drops the connection as a killed process would.
- One thread, ``mqtt-network``, does all socket I/O (so TLS is never used from two threads)
  and calls ``on_message(topic, payload, mid, qos)`` in arrival order; it only ends on stop,
  or on a bug, which the stage's health watch turns into a restart.

Not supported, because ingest never needs it: QoS 2, MQTT 5, will messages, publishing other
than the small QoS 0/1 :meth:`MqttSession.publish` (tests fence on it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from ingest.archive import ArchiveJournal, ReceiveMark
from sesmon.contract.archive import SEQ_SHIFT, remaining_length
from sesmon.runtime.mqtt_wire import (
    DISCONNECT,
    PINGREQ,
    ConnectionLost,
    MqttProtocolError,
    open_connection,
    packet,
    tls_context,
    utf8_field,
)
from sesmon.runtime.retry import Stopping, retrying
from sesmon.runtime.settings import MqttEndpoint, Settings

__all__ = ["CONNECTION_ERRORS", "ConnectionLost", "MqttProtocolError", "MqttSession", "tls_context"]

log = logging.getLogger("sesmon.ingest.mqtt")

RECV_BYTES = 256 * 1024
MAX_PACKET_BYTES = 268_435_455  # the protocol's own limit (4-byte remaining length)
CONNECT_TIMEOUT_S = 30.0
BARRIER_WAIT_S = 2.0  # close(): how long DISCONNECT waits for the barrier's UNSUBACK
#: reconnect backoff (the shared policy: exponential with jitter, ends when the session stops)
RECONNECT_INITIAL_S = 0.1
RECONNECT_MAX_S = 5.0
HEALTHY_S = 10.0  # a connection lost after this long is retried at once (the backoff starts afresh)
#: the stuck-delivery probe (see :class:`MqttSession`): sent after this long without a PUBLISH ...
PROBE_AFTER_S = 10.0
#: ... and a probe not back after this long means the broker stopped delivering to us: reconnect
PROBE_TIMEOUT_S = 30.0
#: a mid handed to ``on_message`` is ``connection << MID_BITS | packet id``
MID_BITS = 16
_PACKET_ID = (1 << MID_BITS) - 1


class _WasHealthy(Exception):
    """A connection that had lasted ``HEALTHY_S`` was lost: reconnect with a fresh backoff."""


#: what ends one connection and starts the reconnect (anything else is a bug and ends the thread)
CONNECTION_ERRORS = (OSError, MqttProtocolError, ConnectionLost)


def _pubacks(mids: list[int]) -> bytes:
    """PUBACKs for packet ids: 0x40 0x02 id-msb id-lsb each, i.e. one big-endian uint32 apiece."""
    return struct.pack(f">{len(mids)}I", *[0x40020000 | mid for mid in mids])


class PublishInfo:
    """Our own QoS 0/1 publish: set once the broker acknowledged it (QoS 0: once written)."""

    def __init__(self) -> None:
        self._done = threading.Event()

    def wait_for_publish(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def is_published(self) -> bool:
        return self._done.is_set()


class MqttSession:
    """One persistent MQTT 3.1.1 subscriber connection, kept up until :meth:`close` or :meth:`abort`."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        subscriptions: list[tuple[str, int]],
        on_message: Callable[[bytes, bytes, int, int], None],
        *,
        clean_session: bool = False,
        endpoint: MqttEndpoint | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_subscribed: Callable[[list[int]], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        probe_topic: str | None = None,
        probe_after_s: float = PROBE_AFTER_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        mark: ReceiveMark | None = None,
        journal: ArchiveJournal | None = None,
    ) -> None:
        """``on_message(topic, payload, mid, qos)``: topic as raw bytes (it may not be UTF-8).

        ``probe_topic``: a topic of this client alone (not under a shared subscription). After
        ``probe_after_s`` without a PUBLISH the session publishes a QoS 1 probe there and expects
        it back; a probe not back within ``probe_timeout_s`` means the broker stopped delivering
        to us although the connection is up (mosquitto 2.0.11 can lose its in-flight quota for a
        client, eclipse-mosquitto/mosquitto#2362: every message then queues at the broker), so the
        session reconnects, which resets the broker's view of what is in flight.

        ``mark``: filled before each ``on_message`` with the chunk's receive time and the message's
        seq in ``journal``, the raw archive, which gets every received chunk as it is
        (``ingest/archive.py``: the archive's hot path is here, a header per ``recv``)."""
        self.settings = settings
        self.endpoint = endpoint or settings.mqtt_endpoint
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.clean_session = clean_session
        self.keepalive_s = max(1, int(settings.mqtt_keepalive_s))
        self.on_message = on_message
        self.mark = mark if mark is not None else ReceiveMark()
        self.journal = journal
        self.on_connected = on_connected
        self.on_subscribed = on_subscribed
        self.on_disconnected = on_disconnected
        self.probe_topic = probe_topic
        self._probe_topic_bytes = probe_topic.encode() if probe_topic else b""
        self.probe_after_s = probe_after_s
        self.probe_timeout_s = probe_timeout_s
        self._probing = False  # the broker granted the probe's subscription on this connection
        self._probe_sent: float | None = None
        self._last_publish_in = 0.0
        self.probes = 0  # probes sent
        self.stuck_reconnects = 0  # connections given up because a probe did not come back
        self.connects = 0  # connections made (CONNACK accepted), also the connection number in mids
        self.pings = 0  # PINGRESPs received
        self.thread = threading.Thread(target=self._run, name="mqtt-network", daemon=True)
        self._stop = threading.Event()
        self._abort = False  # stop without flushing: as a killed process would
        # what other threads hand the network thread: packet ids to ack (int) or whole packets (bytes)
        self._outbox: deque[int | bytes] = deque()
        self._wake_r, self._wake_w = os.pipe()  # wakes the network thread out of select()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()  # no write to the pipe once it is closed (fds get reused)
        self._wake_pending = False
        self._sock: socket.socket | None = None
        self._connection = 0  # the connection acks are accepted for (0: none)
        self._publish_lock = threading.Lock()
        self._next_id = 0
        self._publishes: dict[int, tuple[bytes, PublishInfo]] = {}  # ours, awaiting PUBACK
        self._subscribe_id = 0
        self._barrier_topic: str | None = None
        self._barrier: tuple[int, float] | None = None  # (UNSUBSCRIBE id, deadline) while closing
        self._barrier_done = False
        self._last_out = 0.0
        self._ping_sent: float | None = None

    # ------------------------------------------------------------------ API (any thread)
    def start(self) -> MqttSession:
        self.thread.start()
        return self

    def ack(self, mid: int, qos: int = 1) -> None:
        """Acknowledge a message (from any thread); written with the others owed, in this order."""
        if qos > 0:
            self._outbox.append(mid)  # the network thread drops it if its connection is gone
            self._wake()

    def publish(self, topic: str, payload: bytes = b"", qos: int = 1) -> PublishInfo:
        """A small QoS 0/1 publish, written after every ack given before it (a fence for tests)."""
        if qos not in (0, 1):
            raise ValueError("this session publishes with QoS 0 or 1 only")
        info = PublishInfo()
        flags = 0x30 | (qos << 1)
        if qos == 0:
            self._outbox.append(packet(flags, utf8_field(topic) + payload))
            info._done.set()  # nothing to wait for (as paho: queued is published)
        else:
            with self._publish_lock:
                self._next_id = self._next_id % _PACKET_ID + 1
                packet_id = self._next_id
                data = packet(flags, utf8_field(topic) + struct.pack(">H", packet_id) + payload)
                self._publishes[packet_id] = (data, info)
                self._outbox.append(data)  # under the lock: a reconnect resends it once, not twice
        self._wake()
        return info

    def is_connected(self) -> bool:
        return self._sock is not None

    def close(self, timeout: float = 10.0, barrier_topic: str | None = None) -> None:
        """Write the acks owed, send DISCONNECT, close, and end the thread.

        With ``barrier_topic``, an UNSUBSCRIBE of that (never subscribed) topic goes after the
        acks and DISCONNECT waits for its UNSUBACK (at most ``BARRIER_WAIT_S``): the broker
        answers it only after it handled every ack before it, so none is lost when the socket
        closes with deliveries still unread (ingest.bridge.IngestBridge._ack_barrier says why).
        """
        self._barrier_topic = barrier_topic
        self._stop.set()
        self._wake()
        self._join(timeout)

    def abort(self, timeout: float = 10.0) -> None:
        """End without a flush or DISCONNECT: what was not acked is redelivered to the next session."""
        self._abort = True
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._wake()
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)
        if not self.thread.is_alive():
            with self._wake_lock:
                for fd in (self._wake_r, self._wake_w):
                    if fd >= 0:
                        os.close(fd)
                self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            with self._wake_lock:
                if self._wake_w >= 0:
                    with contextlib.suppress(BlockingIOError):  # full: the thread is being woken anyway
                        os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ the network thread
    def _run(self) -> None:
        """Connect and serve until stopped; after a connection is lost, connect again.

        The shared retry policy spaces the attempts; it starts afresh only after a connection
        that lasted ``HEALTHY_S``, so a broker restart is ridden out at once while a broker that
        accepts and then drops us (or sends garbage) is retried with a growing backoff, not in
        a hot loop.
        """
        while not self._stop.is_set():
            attempts = retrying(
                self._stop,
                on=CONNECTION_ERRORS,
                initial_s=RECONNECT_INITIAL_S,
                max_wait_s=RECONNECT_MAX_S,
                what=f"MQTT session with {self.endpoint.url()}",
            )
            try:
                attempts(self._connect_and_serve)
            except _WasHealthy:
                continue
            except (Stopping, *CONNECTION_ERRORS):  # the policy gives up only when the session stops
                return

    def _connect_and_serve(self) -> None:
        """One connection, until it is lost (raises) or the session stops (returns)."""
        if self._stop.is_set():
            raise Stopping("MQTT session is stopping")
        sock = self._connect()
        up_since = time.monotonic()
        try:
            self._serve(sock)
        except CONNECTION_ERRORS as exc:
            if self._stop.is_set():
                return
            log.warning("MQTT connection lost (%s: %s); reconnecting", type(exc).__name__, exc)
            if time.monotonic() - up_since >= HEALTHY_S:
                raise _WasHealthy from exc
            raise
        finally:
            self._drop(sock)
            if self.on_disconnected is not None:
                self.on_disconnected("stopped" if self._stop.is_set() else "connection lost")

    def _connect(self) -> socket.socket:
        """TCP (+TLS), CONNECT, CONNACK, SUBSCRIBE; the SUBACK is read by :meth:`_serve`."""
        sock, session_present = open_connection(
            self.settings,
            self.client_id,
            keepalive_s=self.keepalive_s,
            clean_session=self.clean_session,
            timeout_s=CONNECT_TIMEOUT_S,
            endpoint=self.endpoint,
        )
        sock.settimeout(max(CONNECT_TIMEOUT_S, self.keepalive_s))  # a stuck peer is a lost connection
        self.connects += 1
        self._connection = self.connects
        self._sock = sock
        self._ping_sent = None
        self._subscribe_id = self._subscribe_id % _PACKET_ID + 1
        body = struct.pack(">H", self._subscribe_id) + b"".join(
            utf8_field(topic) + bytes([qos]) for topic, qos in self._wire_subscriptions()
        )
        self._probing, self._probe_sent, self._last_publish_in = False, None, time.monotonic()
        out = [packet(0x82, body)]
        with self._publish_lock:  # our unacknowledged publishes again, marked duplicate, and only so
            pending = [packet for packet, _ in self._publishes.values()]
            out += [bytes([packet[0] | 0x08]) + packet[1:] for packet in pending]
            resent = set(pending)
            for _ in range(len(self._outbox)):  # in place: other threads append to this deque
                item = self._outbox.popleft()
                if type(item) is int or item not in resent:
                    self._outbox.append(item)
        sock.sendall(b"".join(out))
        self._last_out = time.monotonic()
        if self.on_connected is not None:
            self.on_connected(session_present)
        return sock

    def _wire_subscriptions(self) -> list[tuple[str, int]]:
        return [*self.subscriptions, (self.probe_topic, 1)] if self.probe_topic else self.subscriptions

    def _probe(self, now: float) -> float:
        """Send a probe when the broker has been quiet; raise if the last one never came back.
        Returns the next time this needs looking at."""
        if not self._probing:
            return now + self.probe_after_s
        if self._probe_sent is not None:
            if now - self._probe_sent > self.probe_timeout_s:
                self.stuck_reconnects += 1
                raise ConnectionLost(
                    f"the broker delivered nothing for {now - self._last_publish_in:.0f} s, not even our "
                    f"probe on {self.probe_topic}: reconnecting (a broker that lost its in-flight quota "
                    "for this client queues every message instead of sending it)"
                )
            return self._probe_sent + self.probe_timeout_s
        if now - self._last_publish_in >= self.probe_after_s:
            self._probe_sent = now
            self.probes += 1
            self.publish(self.probe_topic or "", b"probe", qos=1)
            return now + self.probe_timeout_s
        return self._last_publish_in + self.probe_after_s

    def _drop(self, sock: socket.socket) -> None:
        self._sock = None
        self._connection = 0  # acks from here on are for a gone connection
        with contextlib.suppress(OSError):
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        """Receive, parse, dispatch; write what is owed; keep alive. Returns on stop."""
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ, "sock")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        pending = b""
        keepalive = self.keepalive_s
        is_tls = isinstance(sock, ssl.SSLSocket)
        if self.journal is not None:
            self.journal.connected()  # what the last connection left cut is not a message: it comes again
        try:
            while True:
                if self._stop.is_set() and self._closed(sock):
                    return
                now = time.monotonic()
                probe_due = self._probe(now) if self.probe_topic else now + keepalive
                self._flush(sock)
                if self._ping_sent is not None and now - self._ping_sent > keepalive:
                    raise ConnectionLost(f"no PINGRESP within {keepalive} s")
                if now - self._last_out >= keepalive and self._ping_sent is None:
                    self._ping_sent = now
                    self._flush(sock, PINGREQ)
                if is_tls and sock.pending():  # already decrypted: select would not see it
                    readable = True
                else:
                    since = self._last_out if self._ping_sent is None else self._ping_sent
                    due = (
                        since + keepalive
                        if self._barrier is None
                        else min(since + keepalive, self._barrier[1])
                    )
                    events = selector.select(max(0.0, min(due, probe_due) - now))
                    readable = False
                    for key, _ in events:
                        if key.data == "wake":
                            self._wake_pending = False  # before draining: a later ack wakes us again
                            with contextlib.suppress(BlockingIOError):
                                os.read(self._wake_r, 4096)
                        else:
                            readable = True
                if readable:
                    data = sock.recv(RECV_BYTES)
                    if not data:
                        raise ConnectionLost("closed by the broker")
                    pending = self._take(data, pending)
        finally:
            selector.close()

    def _closed(self, sock: socket.socket) -> bool:
        """Stopping: acks, the barrier, DISCONNECT, in that order (abort: none of it). True when done."""
        if self._abort:
            return True
        if self._barrier is None and self._barrier_topic and not self._barrier_done:
            self._subscribe_id = self._subscribe_id % _PACKET_ID + 1
            body = struct.pack(">H", self._subscribe_id) + utf8_field(self._barrier_topic)
            self._barrier = (self._subscribe_id, time.monotonic() + BARRIER_WAIT_S)
            self._flush(sock, packet(0xA2, body))
            return False
        if self._barrier is not None and not self._barrier_done and time.monotonic() < self._barrier[1]:
            return False  # keep reading until the UNSUBACK
        if self._barrier is not None and not self._barrier_done:
            log.warning(
                "MQTT: no UNSUBACK in %.0f s; closing anyway (the broker may redeliver)", BARRIER_WAIT_S
            )
        self._flush(sock, DISCONNECT)
        return True

    def _flush(self, sock: socket.socket, last: bytes = b"") -> None:
        """Write everything owed in one send: acks packed together, packets in their place.

        An ack for a message of an earlier connection is dropped: the broker redelivers that
        message on this one under the same packet id, and may since have reused the id.
        """
        outbox = self._outbox
        if not outbox and not last:
            return
        out: list[bytes] = []
        mids: list[int] = []
        connection = self._connection
        while outbox:
            item = outbox.popleft()
            if type(item) is int:
                if item >> MID_BITS == connection:
                    mids.append(item & _PACKET_ID)
            else:
                if mids:
                    out.append(_pubacks(mids))
                    mids = []
                out.append(item)  # type: ignore[arg-type]
        if mids:
            out.append(_pubacks(mids))
        if last:
            out.append(last)
        sock.sendall(b"".join(out))
        self._last_out = time.monotonic()

    def _take(self, data: bytes, pending: bytes) -> bytes:
        """One ``recv``'s bytes: timed, journalled before any message of it is handed on (the bridge
        writes the journal before each produce), parsed; returns the unfinished rest."""
        self.mark.received_ms = received_ms = int(time.time() * 1000)
        journal = self.journal
        base = journal.add_chunk(received_ms, data, pending) << SEQ_SHIFT if journal is not None else 0
        return self._parse(pending + data if pending else data, base)

    def _parse(self, buf: bytes, base: int = 0) -> bytes:
        """Dispatch every complete packet in ``buf``; returns the incomplete rest.

        ``base``: the journal seq of ``buf``'s chunk; a message's is ``base | its offset in buf``."""
        pos = 0
        end = len(buf)
        deliver = self.on_message
        mark = self.mark
        connection = self._connection << MID_BITS
        probe = self._probe_topic_bytes
        published = False
        while end - pos >= 2:
            header = buf[pos]
            byte = buf[pos + 1]
            if byte < 0x80:
                length, start = byte, pos + 2
            else:
                try:
                    length, start = remaining_length(buf, pos + 1)
                except ValueError as exc:
                    raise MqttProtocolError(str(exc)) from None
                if length < 0:
                    break  # the length itself is not all here yet
            stop = start + length
            if stop > end:
                break
            if header >> 4 == 3:  # PUBLISH
                qos = (header >> 1) & 0x03
                if length < 2:
                    raise MqttProtocolError("PUBLISH too short for its topic length")
                topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
                if qos == 0:
                    body, mid = topic_end, 0
                elif qos == 1:
                    body = topic_end + 2
                    if body > stop:
                        raise MqttProtocolError("PUBLISH topic and packet id longer than the packet")
                    mid = connection | (buf[topic_end] << 8) | buf[topic_end + 1]
                else:
                    raise MqttProtocolError(f"PUBLISH with QoS {qos} (subscribed with QoS 1 at most)")
                if body > stop:
                    raise MqttProtocolError("PUBLISH topic longer than the packet")
                topic = buf[start + 2 : topic_end]
                if probe and topic == probe:  # our own probe is back: the broker delivers to us
                    self._probe_sent = None
                    if qos:
                        self._outbox.append(mid)
                    if self.journal is not None:
                        self.journal.note_skip(base | pos)
                else:
                    mark.seq = base | pos
                    deliver(topic, buf[body:stop], mid, qos)
                published = True
            else:
                self._control(header, buf[start:stop])
            pos = stop
        if published:
            self._last_publish_in = time.monotonic()
        return buf[pos:]

    def _control(self, header: int, body: bytes) -> None:
        kind = header >> 4
        if kind == 13:  # PINGRESP
            self._ping_sent = None
            self.pings += 1
        elif kind == 9:  # SUBACK
            if len(body) < 3 or (body[0] << 8 | body[1]) != self._subscribe_id:
                raise MqttProtocolError(f"unexpected SUBACK {body[:8].hex()}")
            codes = list(body[2:])
            if self.probe_topic:  # the probe's grant is ours, not the caller's
                probe_code = codes[len(self.subscriptions)] if len(codes) > len(self.subscriptions) else 0x80
                codes = codes[: len(self.subscriptions)]
                self._probing = probe_code < 0x80
                if not self._probing:
                    log.warning(
                        "MQTT broker refused the probe topic %s: stuck delivery goes unnoticed "
                        "(grant this user readwrite on it)",
                        self.probe_topic,
                    )
            pairs = zip(self.subscriptions, codes, strict=False)
            refused = [topic for (topic, _), code in pairs if code >= 0x80]
            if refused:
                log.error("MQTT broker refused a subscription: %s (check the ACL of this user)", refused)
            if self.on_subscribed is not None:
                self.on_subscribed(codes)
        elif kind == 11:  # UNSUBACK: the barrier of close()
            if self._barrier is not None and len(body) == 2 and (body[0] << 8 | body[1]) == self._barrier[0]:
                self._barrier_done = True
        elif kind == 4:  # PUBACK of our own publish
            if len(body) != 2:
                raise MqttProtocolError("PUBACK of the wrong length")
            with self._publish_lock:
                done = self._publishes.pop(body[0] << 8 | body[1], None)
            if done is not None:
                done[1]._done.set()
        else:
            raise MqttProtocolError(f"unexpected packet type {kind} (header 0x{header:02x})")
