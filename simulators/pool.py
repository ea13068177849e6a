"""One MQTT connection per account, so every simulated terminal logs in as itself.

On a secure broker (``sesmon mqtt credentials``) a device may publish only under its own
topics, with its own username and password, and a dead link fires its own Last Will; people
publish under ``firm-{id}``, ``inspector-1`` and ``operator``. So the simulator opens one
connection per device and per person: about 2,260 for the demo fleet.

A paho client with its own loop thread each would be 2,260 threads. Here the paho clients
have no thread of their own: a few :class:`_Loop` threads drive them through paho's
external-loop API (``loop_read``/``loop_write``/``loop_misc`` and the socket callbacks) on an
epoll selector. Every paho call on a client happens in the loop thread that owns it (paho is
not meant to be called from two threads without its own loop); the simulation hands messages
over through a queue and wakes the loop with one byte on a socketpair.

A dropout is real: the Will message the network layer emits for a device (the bare retained
``offline``) makes the pool cut that device's TCP connection without a DISCONNECT, once its
QoS 1 publishes are acknowledged, and the broker publishes the Will. The device connects
again when it next has something to say (its ``online`` status on reconnect). On exit,
``close(wills=True)`` cuts every device the same way: the broker marks them all offline.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from sesmon.contract.identity import INSPECTOR, OPERATOR, firm_username
from sesmon.runtime.broker_auth import read_credentials_csv
from sesmon.runtime.mqtt import make_client
from sesmon.runtime.mqtt_wire import tls_context
from sesmon.runtime.settings import MqttEndpoint, Settings
from simulators.common import TOPIC_ROOT, WILL_PAYLOAD, Msg

log = logging.getLogger("sesmon.simulate")

#: how often each client's keepalive is looked after (PINGREQ, dead-broker detection)
MISC_EVERY_S = 1.0
#: a cut link stays down at least this long before the device connects again, so the broker
#: has seen the old connection close (and fired its Will) before the new one takes the client id
SEVER_SETTLE_S = 1.0
#: reconnect backoff after a lost connection: full jitter, doubling up to the cap
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.5, 30.0
#: identity topics (sesmon.contract.identity): people's reports and dispatch actions end with the username
IDENTITY_LEAVES = ("report", "dispatch")

_PUB, _SEVER, _CONNECT, _STOP = range(4)


class PoolError(ConnectionError):
    """The pool cannot publish: connections refused, or a loop thread died."""


@dataclass(eq=False)
class _Conn:
    """One account's connection and the loop thread's bookkeeping for it."""

    username: str
    client: mqtt.Client
    loop: _Loop
    will_topic: str | None = None
    connected: bool = False
    settled: bool = False  # its first CONNACK came (accepted or refused)
    refused: str | None = None  # CONNACK refusal (bad credentials): never retried
    severed: bool = False  # link cut on purpose (a dropout): down until it publishes again
    sever_pending: bool = False  # cut as soon as its in-flight publishes are acknowledged
    severed_at: float = 0.0
    reconnect_at: float | None = None
    attempts: int = 0
    inflight: int = 0  # QoS 1 publishes awaiting PUBACK
    backlog: deque[tuple[str, bytes, bool]] = field(default_factory=deque)


class _Loop(threading.Thread):
    """Drives many paho clients from one thread with an epoll selector."""

    def __init__(self, pool: AccountPool, index: int) -> None:
        super().__init__(name=f"sim-mqtt-{index}", daemon=True)
        self.pool = pool
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.commands: deque[tuple[Any, ...]] = deque()
        self.conns: list[_Conn] = []
        self.writers: set[_Conn] = set()  # paho has bytes queued for them
        self.polled_for_write: set[_Conn] = set()  # the selector watches them for writability
        self.timers: list[tuple[float, int, _Conn]] = []  # (monotonic time, n, conn): reconnects
        self.n = 0
        self.counts: Counter[str] = Counter()  # touched only by this thread
        self.stopping = False
        self.stop_deadline = 0.0
        self.wills_on_stop = False

    # ------------------------------------------------------------------ called from other threads
    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self.wake_w.send(b"\0")

    # ------------------------------------------------------------------ paho callbacks (this thread)
    def attach(self, conn: _Conn) -> None:
        c = conn.client
        c.user_data_set(conn)
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.conns.append(conn)

    def _on_socket_open(self, _c: mqtt.Client, conn: _Conn, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _on_socket_close(self, _c: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        self.writers.discard(conn)
        self.polled_for_write.discard(conn)

    def _on_register_write(self, _c: mqtt.Client, conn: _Conn, _sock: Any) -> None:
        self.writers.add(conn)  # written after this round of commands, or when writable

    def _on_unregister_write(self, _c: mqtt.Client, conn: _Conn, sock: Any) -> None:
        self.writers.discard(conn)
        if conn in self.polled_for_write:
            self.polled_for_write.discard(conn)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.modify(sock, selectors.EVENT_READ, conn)

    def _on_connect(self, client: mqtt.Client, conn: _Conn, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            conn.refused = str(reason)
            self.counts["refused"] += 1
            self.pool._settled(conn)
            return
        conn.connected = True
        conn.attempts = 0
        self.counts["connects"] += 1
        if conn.username == self.pool.listen_as and self.pool.listen_topics:
            client.subscribe([(topic, 1) for topic in self.pool.listen_topics])
        self.pool._settled(conn)

    def _on_subscribe(self, _c: mqtt.Client, _conn: _Conn, _mid: int, codes: Any, _p: Any) -> None:
        if all(not code.is_failure for code in codes):
            self.pool.listening.set()
        else:
            log.error("the broker refused the alert subscription of %s: %s", self.pool.listen_as, codes)

    def _on_disconnect(self, _c: mqtt.Client, conn: _Conn, _f: Any, _reason: Any, _p: Any) -> None:
        conn.connected = False
        if self.stopping or conn.refused or conn.severed:
            return
        self.counts["disconnects"] += 1
        self._schedule_reconnect(conn, self._backoff(conn))

    def _on_publish(self, _c: mqtt.Client, conn: _Conn, _mid: int, _reason: Any, _p: Any) -> None:
        self.counts["acked"] += 1
        if self.pool.qos > 0:
            conn.inflight -= 1
            self.pool._acked()
            if conn.sever_pending and conn.inflight <= 0:
                self._sever(conn)

    def _on_message(self, _c: mqtt.Client, _conn: _Conn, message: mqtt.MQTTMessage) -> None:
        self.pool.inbox.append((message.topic, message.payload))

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        try:
            self._main()
        except BaseException as exc:  # a dead loop would silently stop its devices: tell the pool
            log.exception("MQTT loop %s died", self.name)
            self.pool.error = exc
            self.pool._wake_waiters()

    def _main(self) -> None:
        next_misc = time.monotonic() + MISC_EVERY_S
        while True:
            self._run_commands()
            if self.stopping and (time.monotonic() >= self.stop_deadline or self._all_closed()):
                break
            self._write_pending()
            now = time.monotonic()
            timeout = max(0.0, min(next_misc, self.timers[0][0] if self.timers else next_misc) - now)
            for key, mask in self.sel.select(timeout):
                conn = key.data
                if conn is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        self.wake_r.recv(4096)
                    continue
                if conn.client.socket() is not key.fileobj:
                    continue  # closed (and maybe replaced) while this batch was pending
                if mask & selectors.EVENT_READ:
                    conn.client.loop_read()
                if mask & selectors.EVENT_WRITE and conn.client.socket() is key.fileobj:
                    conn.client.loop_write()
            now = time.monotonic()
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                for conn in self.conns:
                    if conn.client.socket() is not None:
                        conn.client.loop_misc()
            while self.timers and self.timers[0][0] <= now:
                _, _, conn = heapq.heappop(self.timers)
                if conn.reconnect_at is not None and conn.reconnect_at <= now:
                    conn.reconnect_at = None
                    self._connect(conn)
        for conn in self.conns:  # whatever is left open at the deadline
            sock = conn.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _all_closed(self) -> bool:
        return all(conn.client.socket() is None for conn in self.conns)

    def _run_commands(self) -> None:
        commands = self.commands
        while commands:
            cmd = commands.popleft()
            op = cmd[0]
            if op == _PUB:
                self._publish(cmd[1], cmd[2], cmd[3], cmd[4])
            elif op == _SEVER:
                conn = cmd[1]
                if conn.inflight > 0:
                    conn.sever_pending = True  # after its last PUBACK (_on_publish)
                else:
                    self._sever(conn)
            elif op == _CONNECT:
                for conn in self.conns:
                    self._connect(conn)
            elif op == _STOP:
                self._begin_stop(cmd[1], cmd[2])

    def _write_pending(self) -> None:
        for conn in list(self.writers):
            if conn.client.socket() is None:
                self.writers.discard(conn)
                continue
            conn.client.loop_write()  # unregisters itself (callback) once everything is written
        for conn in self.writers - self.polled_for_write:  # the socket buffer is full: wait for it
            sock = conn.client.socket()
            if sock is not None:
                self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                self.polled_for_write.add(conn)

    # ------------------------------------------------------------------ actions
    def _publish(self, conn: _Conn, topic: str, payload: bytes, retain: bool) -> None:
        if conn.severed or conn.sever_pending:
            conn.backlog.append((topic, payload, retain))  # sent once the device is back
            if conn.severed and conn.reconnect_at is None:
                self._schedule_reconnect(conn, max(0.0, conn.severed_at + SEVER_SETTLE_S - time.monotonic()))
            return
        qos = self.pool.qos
        info = conn.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0):
            # NO_CONN at QoS 1: paho keeps it and sends it after the next CONNACK
            if qos > 0:
                conn.inflight += 1
            return
        self.counts["failed"] += 1
        if qos > 0:
            self.pool._acked()  # its reservation: nothing will acknowledge it

    def _sever(self, conn: _Conn) -> None:
        """Cut the link without DISCONNECT: the broker publishes the device's Will."""
        conn.sever_pending = False
        conn.severed = True
        conn.severed_at = time.monotonic()
        self.counts["wills"] += 1
        sock = conn.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the EOF reaches paho at the next read

    def _connect(self, conn: _Conn) -> None:
        if self.stopping or conn.refused:
            return
        was_severed = conn.severed
        conn.severed = False
        try:
            conn.client.reconnect()  # also closes what is left of a cut connection
        except (OSError, ssl.SSLError) as exc:
            self.counts["connect_errors"] += 1
            if conn.attempts in (0, 5) or conn.attempts % 50 == 0:
                log.warning("MQTT connect as %s failed: %s", conn.username, exc)
            conn.severed = was_severed
            self._schedule_reconnect(conn, self._backoff(conn))
            return
        if was_severed:
            self.counts["reconnects_after_dropout"] += 1
        elif conn.attempts:
            self.counts["reconnects"] += 1
        while conn.backlog:  # queued by paho until CONNACK
            self._publish(conn, *conn.backlog.popleft())

    def _backoff(self, conn: _Conn) -> float:
        conn.attempts += 1
        return min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(conn.attempts - 1, 8)) * random.random()

    def _schedule_reconnect(self, conn: _Conn, delay: float) -> None:
        conn.reconnect_at = time.monotonic() + delay
        self.n += 1
        heapq.heappush(self.timers, (conn.reconnect_at, self.n, conn))

    def _begin_stop(self, wills: bool, grace_s: float) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + grace_s
        for conn in self.conns:
            sock = conn.client.socket()
            if sock is None:
                continue
            if wills and conn.will_topic is not None:
                self._sever(conn)
            else:
                conn.client.disconnect()  # DISCONNECT: no Will


class AccountPool:
    """Publish each message under its own account (device id, firm, inspector, operator).

    Same surface as :class:`simulators.publisher.FleetPublisher` (``connect``,
    ``publish_msgs``, ``flush``, ``drain_inbox``, ``counts``, ``unacked``) so
    :func:`simulators.publisher.run_simulation` can use either.
    """

    def __init__(
        self,
        accounts: Mapping[str, str],
        endpoint: MqttEndpoint,
        *,
        settings: Settings | None = None,
        wills: Mapping[str, str] | None = None,
        listen_as: str | None = None,
        listen_topics: Iterable[str] = (),
        qos: int = 1,
        max_unacked: int = 20_000,
        keepalive: int = 60,
        threads: int = 2,
    ) -> None:
        self.endpoint = endpoint
        self.qos = qos
        self.max_unacked = max_unacked
        self.listen_as = listen_as
        self.listen_topics = list(listen_topics)
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.listening = threading.Event()  # the listener's SUBACK came: no alert is missed after it
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.unacked = 0
        self.settled = 0  # connections that got their first CONNACK (accepted or refused)
        self._sent = 0
        self._no_account = 0
        self._closed = False
        ensure_fd_limit(len(accounts) + 256)
        self.loops = [_Loop(self, i) for i in range(max(1, threads))]
        settings = settings or Settings()
        plain = settings.model_copy(update={"mqtt_tls_ca": None, "mqtt_tls_cert": None, "mqtt_tls_key": None})
        tls = tls_context(settings) if (endpoint.tls or settings.mqtt_tls_ca) else None
        wills = wills or {}
        self.conns: dict[str, _Conn] = {}
        for i, (username, password) in enumerate(accounts.items()):
            account = replace(endpoint, tls=False, username=username, password=password)
            # client id = username, as the broker makes it (use_username_as_clientid)
            client = make_client(plain, username, endpoint=account)
            client.max_queued_messages_set(0)
            if tls is not None:
                client.tls_set_context(tls)
                if settings.mqtt_tls_insecure:
                    client.tls_insecure_set(True)
            will_topic = wills.get(username)
            if will_topic is not None:
                client.will_set(will_topic, WILL_PAYLOAD, qos=1, retain=True)
            client.connect_async(endpoint.host, endpoint.port, keepalive=keepalive)  # no I/O yet
            loop = self.loops[i % len(self.loops)]
            conn = _Conn(username, client, loop, will_topic)
            loop.attach(conn)
            if username == listen_as:
                client.on_message = loop._on_message
                client.on_subscribe = loop._on_subscribe
            self.conns[username] = conn

    @classmethod
    def for_fleet(
        cls,
        credentials_csv: str | Path,
        device_topics: Mapping[str, str],
        firm_ids: Iterable[str],
        endpoint: MqttEndpoint,
        *,
        responders: bool = True,
        **kwargs: Any,
    ) -> AccountPool:
        """The accounts a simulated fleet needs, from ``credentials.csv`` (``sesmon mqtt credentials``).

        ``device_topics`` maps each device id to its status topic (its Will's topic).
        Units or firms without an account are reported; their messages are counted
        under ``no_account`` instead of being published.
        """
        known = read_credentials_csv(Path(credentials_csv))
        if not known:
            raise PoolError(f"no accounts in {credentials_csv}")
        wanted = [*device_topics, *sorted({firm_username(f) for f in firm_ids if f}), INSPECTOR, OPERATOR]
        accounts = {name: known[name].password for name in wanted if name in known}
        missing = [name for name in wanted if name not in known]
        if missing:
            log.warning(
                "%d simulated accounts have no credentials in %s (e.g. %s): their messages are not sent",
                len(missing),
                credentials_csv,
                ", ".join(missing[:5]),
            )
        listen_as = OPERATOR if responders and OPERATOR in accounts else None
        wills = {d: topic for d, topic in device_topics.items() if d in accounts}
        topics = (f"{TOPIC_ROOT}/alerts/#", f"{TOPIC_ROOT}/hazards/#")
        return cls(accounts, endpoint, wills=wills, listen_as=listen_as, listen_topics=topics, **kwargs)

    # ------------------------------------------------------------------ control
    def connect(self, timeout: float = 120.0) -> AccountPool:
        """Open every connection; return once each has its CONNACK (and the listener its SUBACK).

        Refusals raise :class:`PoolError`.
        """
        for loop in self.loops:
            loop.start()
            loop.commands.append((_CONNECT,))
            loop.wake()
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.settled < len(self.conns) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        self._check()
        refused = [c for c in self.conns.values() if c.refused]
        if refused:
            self.close()
            names = ", ".join(f"{c.username} ({c.refused})" for c in refused[:5])
            raise PoolError(f"the broker refused {len(refused)} of {len(self.conns)} accounts: {names}")
        if self.settled < len(self.conns):
            waiting = [c.username for c in self.conns.values() if not c.connected][:5]
            self.close()
            raise PoolError(
                f"only {self.settled} of {len(self.conns)} connections to {self.endpoint.host}:"
                f"{self.endpoint.port} were answered within {timeout} s (waiting: {', '.join(waiting)})"
            )
        listener = self.listen_as in self.conns and bool(self.listen_topics)
        if listener and not self.listening.wait(max(1.0, deadline - time.monotonic())):
            self.close()
            raise PoolError(f"{self.listen_as} could not subscribe to {self.listen_topics}")
        return self

    def publish(self, username: str, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Publish one message as ``username``; False if that account is not in the pool."""
        conn = self.conns.get(username)
        if conn is None:
            self._no_account += 1
            return False
        self._reserve([conn.loop])
        conn.loop.commands.append((_PUB, conn, topic, payload, retain))
        conn.loop.wake()
        return True

    def publish_msgs(self, msgs: list[Msg]) -> int:
        """Hand a batch over to the loops, each message under its sender's account.

        A device's Will message is not published: it cuts that device's connection (the
        broker publishes the real Will). People's reports and dispatch actions go to the
        identity topics (``.../{username}``).
        """
        handed = 0
        touched: set[_Loop] = set()
        for m in msgs:
            conn = self.conns.get(m.username)
            if conn is None:
                self._no_account += 1
                continue
            loop = conn.loop
            if m.is_will and conn.will_topic == m.topic:
                loop.commands.append((_SEVER, conn))
            else:
                topic = f"{m.topic}/{m.sender}" if m.sender and m.leaf in IDENTITY_LEAVES else m.topic
                self._reserve(touched)
                loop.commands.append((_PUB, conn, topic, m.payload(), m.retain))
            touched.add(loop)
            handed += 1
        for loop in touched:
            loop.wake()
        return handed

    def _reserve(self, to_wake: Iterable[_Loop]) -> None:
        """Back-pressure: at most ``max_unacked`` QoS 1 publishes in flight over all connections."""
        self._check()
        with self.cond:
            if self.qos > 0:
                if self.unacked >= self.max_unacked:
                    for loop in to_wake:  # what is queued must go out for acks to come back
                        loop.wake()
                    while self.unacked >= self.max_unacked and self.error is None:
                        if not self.cond.wait(5.0):
                            log.warning("%d publishes un-acknowledged for 5 s", self.unacked)
                self.unacked += 1
            self._sent += 1
        self._check()

    def _acked(self) -> None:
        with self.cond:
            self.unacked -= 1
            if self.unacked <= self.max_unacked // 2 or self.unacked <= 0:
                self.cond.notify_all()

    def _settled(self, conn: _Conn) -> None:
        if conn.settled:
            return
        conn.settled = True
        with self.cond:
            self.settled += 1
            self.cond.notify_all()

    def _wake_waiters(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _check(self) -> None:
        if self.error is not None:
            raise PoolError(f"an MQTT loop thread died: {self.error!r}") from self.error

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every publish so far is handed to paho and, at QoS 1, acknowledged."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < deadline and self.error is None:
                if self.unacked <= 0 and not any(loop.commands for loop in self.loops):
                    return True
                self.cond.wait(0.05)
        return False

    def close(self, wills: bool = False, grace_s: float = 5.0) -> None:
        """Stop: devices' links cut (``wills``: the broker publishes each Will) or cleanly closed."""
        if self._closed:
            return
        self._closed = True
        for loop in self.loops:
            loop.commands.append((_STOP, wills, grace_s))
            loop.wake()
        for loop in self.loops:
            if loop.is_alive():
                loop.join(grace_s + 5.0)
            loop.sel.close()
            loop.wake_r.close()
            loop.wake_w.close()

    def drain_inbox(self) -> list[tuple[str, bytes]]:
        out = []
        while self.inbox:
            out.append(self.inbox.popleft())
        return out

    @property
    def counts(self) -> Counter[str]:
        """Totals over the loops (read while they run: good enough for statistics)."""
        total: Counter[str] = Counter()
        for loop in self.loops:
            total.update(dict(loop.counts))  # dict() copies in one step under the GIL
        total["sent"] = self._sent
        total["no_account"] = self._no_account
        total["connections"] = len(self.conns)
        total["connected"] = sum(1 for c in self.conns.values() if c.connected)
        return total


def ensure_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards the hard one: one socket per account."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < needed:
            raise PoolError(f"{needed} open files needed for one connection per account, the limit is {soft}")
