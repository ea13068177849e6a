"""Publish a simulated fleet to an MQTT broker in (scaled) real time.

Two transports:

- an open broker: one paho-mqtt 2.x connection (:class:`FleetPublisher`) carries every
  simulated terminal. A broker holds one Will per connection, so a dropout is emulated by
  publishing the bare retained word ``offline`` on the device's status topic (exactly what
  the broker would publish for its Will), and on exit every device gets ``offline`` the
  same way unless ``offline_on_exit=False``;
- a secure broker (``credentials``: the ``credentials.csv`` of ``sesmon mqtt credentials``):
  one connection per account (:class:`simulators.pool.AccountPool`): each device logs in
  as itself with its own real Will, people as their firm, the inspector or the operator,
  on the identity topics of ``sesmon.contract.identity``.

The broker URL keeps TLS and credentials (``mqtts://user:pass@host``): clients are made by
``sesmon.runtime.mqtt.make_client``.
- paho trap (stack.md): at QoS 1 more than 65,535 un-acked publishes reuse message ids
  and paho drops messages. We bound un-acked publishes (``max_unacked``, default 20,000),
  check the rc of every publish and retry on ``MQTT_ERR_QUEUE_SIZE``; failures are counted.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from sesmon.runtime.mqtt import make_client
from sesmon.runtime.settings import MqttEndpoint, Settings, get_settings
from sesmon.runtime.signals import StopSignals
from simulators.common import TOPIC_ROOT, Msg, iso_ms
from simulators.engine import FleetSim, SimOptions
from simulators.network import NetworkOptions
from simulators.pool import AccountPool

StatsCallback = Callable[[dict[str, Any]], None]


class FleetPublisher:
    """A paho client with bounded in-flight QoS 1 publishing and an alerts subscription."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        qos: int = 1,
        client_id: str | None = None,
        max_unacked: int = 20_000,
        keepalive: int = 30,
        subscribe_alerts: bool = True,
        endpoint: MqttEndpoint | None = None,
        settings: Settings | None = None,
    ) -> None:
        endpoint = endpoint or MqttEndpoint(host, port)
        self.host, self.port, self.qos = endpoint.host, endpoint.port, qos
        self.max_unacked = max_unacked
        self.client = make_client(
            settings or get_settings(), client_id or f"sesmon-sim-{os.getpid()}", endpoint=endpoint
        )
        self.client.max_queued_messages_set(0)
        self.keepalive = keepalive
        self.subscribe_alerts = subscribe_alerts
        self.cond = threading.Condition()
        self.unacked = 0
        self.connected = threading.Event()
        self.listening = threading.Event()  # SUBACK of the alerts subscription
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.counts: Counter[str] = Counter()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _u, _mid, _codes, _p: self.listening.set()

    # ---- paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.counts["connect_failed"] += 1
            return
        if self.subscribe_alerts:
            client.subscribe([(f"{TOPIC_ROOT}/alerts/#", 1), (f"{TOPIC_ROOT}/hazards/#", 1)])
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        self.counts["disconnects"] += 1

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.cond:
            self.unacked -= 1
            self.counts["acked"] += 1
            if self.unacked <= self.max_unacked // 2:
                self.cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.inbox.append((message.topic, message.payload))

    # ---- control
    def connect(self, timeout: float = 10.0) -> FleetPublisher:
        self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if not self.connected.wait(timeout) or (self.subscribe_alerts and not self.listening.wait(timeout)):
            self.client.loop_stop()
            raise ConnectionError(f"no MQTT connection to {self.host}:{self.port} within {timeout} s")
        return self

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int | None = None) -> bool:
        """Publish one message; returns False if it was dropped (counted in ``failed``)."""
        qos = self.qos if qos is None else qos
        if qos > 0:
            with self.cond:
                while self.unacked >= self.max_unacked:
                    self.counts["waits"] += 1
                    if not self.cond.wait(timeout=5.0) and not self.connected.is_set():
                        break
                self.unacked += 1
        for attempt in range(50):
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
            rc = info.rc
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self.counts["sent"] += 1
                return True
            if rc == mqtt.MQTT_ERR_NO_CONN and qos > 0:
                self.counts["queued_offline"] += 1  # paho keeps QoS>0 messages and sends on reconnect
                self.counts["sent"] += 1
                return True
            if rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                self.counts["retries"] += 1
                time.sleep(0.01 * (attempt + 1))
                continue
            break
        if qos > 0:
            with self.cond:
                self.unacked -= 1
        self.counts["failed"] += 1
        return False

    def publish_msgs(self, msgs: list[Msg]) -> int:
        ok = 0
        for m in msgs:
            body = m.body
            payload = body if isinstance(body, bytes) else orjson.dumps(body)
            ok += self.publish(m.topic, payload, m.retain)
        return ok

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS 1 publish is acknowledged (or timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.unacked > 0 and time.monotonic() < deadline:
                self.cond.wait(timeout=0.1)
            return self.unacked <= 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def drain_inbox(self) -> list[tuple[str, bytes]]:
        out = []
        while self.inbox:
            out.append(self.inbox.popleft())
        return out


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """Host and port of a broker URL (see :func:`mqtt_endpoint` for TLS and credentials)."""
    endpoint = mqtt_endpoint(url)
    return endpoint.host, endpoint.port


def mqtt_endpoint(url: str, settings: Settings | None = None) -> MqttEndpoint:
    """A broker URL with nothing dropped: ``mqtts://user:pass@host:port`` keeps TLS and the account
    (falling back to ``SESMON_MQTT_USERNAME``/``_PASSWORD``)."""
    settings = settings or get_settings()
    return MqttEndpoint.from_url(url, username=settings.mqtt_username, password=settings.mqtt_password)


def _stop_signals() -> contextlib.AbstractContextManager[StopSignals]:
    """SIGINT/SIGTERM → a clean stop; handlers are only installable from the main thread."""
    if threading.current_thread() is threading.main_thread():
        return StopSignals()
    return contextlib.nullcontext(StopSignals())  # never raised: the caller's stop_event stops it


def run_simulation(
    registry_path: str | Path | None,
    host: str = "127.0.0.1",
    port: int = 1883,
    time_scale: float = 1.0,
    duration: float | None = None,
    faults: str = "none",
    seed: int = 1,
    stats_callback: StatsCallback | None = None,
    *,
    scenario: str | Path | None = None,
    qos: int = 1,
    network: NetworkOptions | None = None,
    human: bool = True,
    responders: bool = True,
    fault_rate_multiplier: float = 1.0,
    start_ms: int | None = None,
    offline_on_exit: bool = True,
    stop_event: threading.Event | None = None,
    progress: bool = False,
    tick_s: float = 0.05,
    sim: FleetSim | None = None,
    endpoint: MqttEndpoint | None = None,
    settings: Settings | None = None,
    credentials: str | Path | None = None,
    threads: int = 2,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Publish a fleet (or a scenario) to MQTT until ``duration`` wall seconds or a stop.

    Simulated time runs at ``time_scale`` × wall time from ``start_ms`` (default: ``clock()``,
    i.e. now, so device timestamps are current at scale 1; tests pass a fixed start, since
    the traffic profile follows the simulated hour). ``endpoint`` (else ``host``/``port``)
    is the broker with its TLS and account; with ``credentials`` (``credentials.csv``) every
    device and person publishes over its own connection (``threads`` loops drive them all).
    Returns the final statistics.
    """
    stop = stop_event or threading.Event()
    endpoint = endpoint or MqttEndpoint(host, port)
    if sim is None:
        sim = build_sim(
            registry_path,
            seed=seed,
            faults=faults,
            time_scale=time_scale,
            scenario=scenario,
            network=network,
            human=human,
            responders=responders,
            fault_rate_multiplier=fault_rate_multiplier,
            start_ms=start_ms if start_ms is not None else int(clock() * 1000),
        )
    pub: FleetPublisher | AccountPool
    if credentials is not None:
        pub = AccountPool.for_fleet(
            credentials,
            {d: dev.topic("status") for d, dev in sim.devices.items()},
            {u.firm_id for u in sim.units.values()},
            endpoint,
            responders=responders,
            settings=settings,
            qos=qos,
            threads=threads,
        )
    else:
        pub = FleetPublisher(qos=qos, subscribe_alerts=responders, endpoint=endpoint, settings=settings)
    pub.connect()
    counts: Counter[str] = Counter()
    display = _Progress(sim, enabled=progress)
    wall0 = time.monotonic()
    last_stats = wall0
    sent_at_last = 0
    rate = 0.0
    stats: dict[str, Any] = {}
    try:
        with _stop_signals() as signalled, display:
            while not stop.is_set() and signalled.raised is None:
                now = time.monotonic()
                elapsed = now - wall0
                if duration is not None and elapsed >= duration:
                    break
                for topic, payload in pub.drain_inbox():
                    _handle_inbound(sim, topic, payload, counts)
                target = sim.start_ms + int(elapsed * time_scale * 1000)
                msgs = sim.advance(target)
                for m in msgs:
                    counts[m.leaf] += 1
                pub.publish_msgs(msgs)
                if now - last_stats >= 1.0:
                    sent = pub.counts["sent"]
                    rate = (sent - sent_at_last) / (now - last_stats)
                    sent_at_last, last_stats = sent, now
                    stats = _stats(sim, pub, counts, elapsed, rate)
                    display.update(stats)
                    if stats_callback is not None:
                        stats_callback(stats)
                spare = tick_s - (time.monotonic() - now)
                if spare > 0:
                    stop.wait(spare)
            if offline_on_exit and isinstance(pub, FleetPublisher):
                pub.publish_msgs(sim.shutdown_messages())  # the Wills, emulated
            pub.flush(10.0)
    finally:
        if isinstance(pub, AccountPool):
            pub.close(wills=offline_on_exit)  # each device's link cut: the broker publishes its Will
        else:
            pub.close()
    stats = _stats(sim, pub, counts, time.monotonic() - wall0, rate)
    if stats_callback is not None:
        stats_callback(stats)
    return stats


def _handle_inbound(sim: FleetSim, topic: str, payload: bytes, counts: Counter[str]) -> None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict):
        return
    if topic.startswith(f"{TOPIC_ROOT}/alerts/"):
        counts["alerts_in"] += 1
        sim.on_alert(body)
    elif topic.startswith(f"{TOPIC_ROOT}/hazards/"):
        counts["hazards_in"] += 1
        sim.on_hazard(body)


def _stats(
    sim: FleetSim, pub: FleetPublisher | AccountPool, counts: Counter[str], elapsed: float, rate: float
) -> dict[str, Any]:
    totals = pub.counts
    out = {
        "elapsed_s": round(elapsed, 1),
        "sim_ms": sim.now,
        "sim_time": iso_ms(sim.now),
        "sent": totals["sent"],
        "acked": totals["acked"],
        "failed": totals["failed"],
        "unacked": pub.unacked,
        "rate_msg_s": round(rate, 1),
        "telemetry": counts["telemetry"],
        "events": counts["event"],
        "status": counts["status"],
        "reports": counts["report"],
        "dispatch": counts["dispatch"],
        "alerts_in": counts["alerts_in"],
        "faults": sum(v for k, v in sim.stats.items() if k.startswith("fault:")),
        "devices": len(sim.devices),
        "network": dict(sim.net.counts),
    }
    if isinstance(pub, AccountPool):
        out["connections"] = {
            k: totals[k]
            for k in ("connections", "connected", "wills", "reconnects_after_dropout", "disconnects",
                      "reconnects", "refused", "no_account")
        }  # fmt: skip
    return out


class _Progress:
    """A rich live panel for ``sesmon simulate``; a no-op when quiet."""

    def __init__(self, sim: FleetSim, enabled: bool) -> None:
        self.enabled = enabled
        self.live: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.live import Live

            self.live = Live(self._render({}), refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, stats: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.update(self._render(stats))

    @staticmethod
    def _render(stats: dict[str, Any]) -> Any:
        from rich.table import Table

        table = Table(title="sesmon simulate", show_header=False, expand=False)
        table.add_column("what", style="bold")
        table.add_column("value", justify="right")
        rows = [
            ("simulated time", stats.get("sim_time", "…")),
            ("wall elapsed", f"{stats.get('elapsed_s', 0)} s"),
            ("devices", stats.get("devices", 0)),
            ("published", stats.get("sent", 0)),
            ("rate", f"{stats.get('rate_msg_s', 0)} msg/s"),
            ("un-acked / failed", f"{stats.get('unacked', 0)} / {stats.get('failed', 0)}"),
            (
                "telemetry / events / status",
                f"{stats.get('telemetry', 0)} / {stats.get('events', 0)} / {stats.get('status', 0)}",
            ),
            ("reports / dispatch", f"{stats.get('reports', 0)} / {stats.get('dispatch', 0)}"),
            ("faults injected", stats.get("faults", 0)),
            ("alerts seen", stats.get("alerts_in", 0)),
        ]
        for k, v in rows:
            table.add_row(k, str(v))
        return table


def build_sim(
    registry_path: str | Path | None,
    *,
    seed: int = 1,
    faults: str = "none",
    time_scale: float = 1.0,
    scenario: str | Path | None = None,
    network: NetworkOptions | None = None,
    human: bool = True,
    responders: bool = True,
    fault_rate_multiplier: float = 1.0,
    start_ms: int | None = None,
) -> FleetSim:
    """A FleetSim from a registry file, or from a scenario file (which may name its own units)."""
    if scenario is not None:
        from simulators.scenario import load_scenario

        scen = load_scenario(scenario)
        return scen.build(registry_path, start_ms=start_ms, seed=seed, time_scale=time_scale)
    if registry_path is None:
        raise ValueError("a registry file or a scenario is needed")
    from sesmon.contract.registry import Registry

    registry = Registry.load(registry_path)
    options = SimOptions(
        faults=faults,
        time_scale=time_scale,
        network=network or NetworkOptions(),
        human=human,
        responders=responders,
        fault_rate_multiplier=fault_rate_multiplier,
    )
    return FleetSim(list(registry), seed=seed, start_ms=start_ms, options=options)


class RawQos0Publisher:
    """Bulk QoS 0 publishing over a plain socket: many PUBLISH packets per ``sendall``.

    Why: paho spends ~20 µs of Python per publish and shares the GIL with its network
    thread; for load tests the simulator needs more than that. MQTT 3.1.1 QoS 0 needs no
    packet ids or acks, so a batch of PUBLISH packets is just bytes. Not for production
    telemetry (no reconnect, no acks): use :class:`FleetPublisher` with QoS 1 for that.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, client_id: str | None = None) -> None:
        self.host, self.port = host, port
        self.client_id = (client_id or f"sesmon-sim-raw-{os.getpid()}").encode()
        self.sock: Any = None
        self.counts: Counter[str] = Counter()

    def connect(self, timeout: float = 10.0) -> RawQos0Publisher:
        import socket

        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        var = b"\x00\x04MQTT\x04\x02\x00\x00"  # protocol 3.1.1, clean session, keepalive 0 (off)
        body = var + len(self.client_id).to_bytes(2, "big") + self.client_id
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        ack = self.sock.recv(4)
        if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"MQTT CONNACK refused: {ack!r}")
        return self

    def publish_batch(self, items: list[tuple[str, bytes, bool]]) -> int:
        """Send many messages in one write; returns how many."""
        parts: list[bytes] = []
        for topic, payload, retain in items:
            t = topic.encode()
            rest = len(t) + 2 + len(payload)
            parts.append(b"\x31" if retain else b"\x30")
            parts.append(_varint(rest))
            parts.append(len(t).to_bytes(2, "big"))
            parts.append(t)
            parts.append(payload)
        self.sock.sendall(b"".join(parts))
        self.counts["sent"] += len(items)
        return len(items)

    def publish_msgs(self, msgs: list[Msg]) -> int:
        dumps = orjson.dumps
        return self.publish_batch(
            [(m.topic, m.body if isinstance(m.body, bytes) else dumps(m.body), m.retain) for m in msgs]
        )

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
                self.sock.close()
            self.sock = None


def _varint(n: int) -> bytes:
    """MQTT remaining-length encoding."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)
