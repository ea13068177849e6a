"""Publishing to a real mosquitto: counts, validity, responders closing the loop, clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sesmon.contract.registry import write_registry
from sesmon.contract.schemas import parse_mqtt
from sesmon.runtime.services import wait_for_port
from simulators.engine import FleetSim, SimOptions
from simulators.fleet import generate_fleet
from simulators.publisher import FleetPublisher, build_sim, run_simulation

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[1]


#: payload prefix of the collector's own end-of-stream markers
MARKER = b"collector-marker-"

#: simulated clock: a weekday 10:00 in Guangzhou, when traffic is busy (the profile follows the hour)
DAYTIME_MS = 1_793_584_800_000  # 2026-11-02 10:00 +08:00


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real mosquitto on a free loopback port, stopped afterwards."""
    port = _free_port()
    conf = tmp_path_factory.mktemp("mosq") / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n"
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not wait_for_port(port, 10, proc):
        proc.kill()
        raise RuntimeError("mosquitto did not start")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


class Collector:
    """A paho subscriber recording everything under ``topic`` (default sesmon/v1/#)."""

    def __init__(self, port: int, topic: str = "sesmon/v1/#", timeout: float = 30.0) -> None:
        self.port = port
        self.topic = topic
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.markers: set[bytes] = set()
        self.changed = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        # a message published before the SUBACK would never reach us
        assert subscribed.wait(timeout), f"no SUBACK for {topic}"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            if message.payload.startswith(MARKER):
                self.markers.add(message.payload)
            else:
                self.msgs.append((message.topic, message.payload, bool(message.retain)))
            self.changed.notify_all()

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 60
    ) -> bool:
        """Wait until ``predicate(messages so far)`` holds."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.msgs), timeout)

    def sync(self, timeout: float = 60) -> None:
        """Return once everything the broker queued for us so far has arrived.

        Publishers under test have disconnected (their messages are in our queue at the broker);
        a marker published now is queued after them and delivered in order, so once it is here
        nothing earlier is still on its way.
        """
        marker = MARKER + str(time.monotonic_ns()).encode()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"marker-{time.monotonic_ns()}")
        pub.connect("127.0.0.1", self.port)
        pub.loop_start()
        topic = self.topic.replace("/#", "/marker").replace("+", "marker")
        pub.publish(topic, marker, qos=1).wait_for_publish(timeout)
        pub.loop_stop()
        pub.disconnect()
        with self.changed:
            assert self.changed.wait_for(lambda: marker in self.markers, timeout), "marker not delivered"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_demo_fleet_reaches_the_broker_valid_and_complete(broker: int, tmp_path: Path) -> None:
    registry = tmp_path / "fleet.csv"
    write_registry(generate_fleet(300, 30, seed=1), registry)
    sub = Collector(broker)
    seen: list[dict] = []
    # demo faults spaced for scale 1 (every 3 s), played at scale 4: the whole first minute in 6 s
    sim = build_sim(registry, seed=1, faults="demo", time_scale=1.0, start_ms=DAYTIME_MS)
    stats = run_simulation(None, "127.0.0.1", broker, time_scale=4.0, duration=6.0, sim=sim,
                           stats_callback=seen.append, offline_on_exit=True)  # fmt: skip
    sub.sync()
    sub.close()
    live = [(t, p) for t, p, retained in sub.msgs if not retained]
    assert stats["failed"] == 0 and stats["unacked"] == 0
    assert len(live) == stats["sent"] > 1000
    assert len(seen) >= 4 and seen[-1]["sent"] == stats["sent"]
    leaves = Counter(t.rsplit("/", 1)[-1] for t, _ in live)
    assert leaves["telemetry"] > 500 and leaves["event"] >= 5
    for topic, payload in live:
        parse_mqtt(topic, payload, int(time.time() * 1000))
    codes = {orjson.loads(p)["code"] for t, p in live if t.endswith("/event")}
    assert {"trapped", "overspeed", "door_open_while_running", "low_water_trip"} <= codes
    offline = sum(1 for t, p in live if t.endswith("/status") and p == b"offline")
    assert offline >= 330  # every device's Will emulated on exit (+ the demo dropout)


def test_responders_act_on_alerts_from_the_broker(broker: int) -> None:
    units = generate_fleet(6, 0, seed=3)
    sim = FleetSim(units, seed=3, start_ms=DAYTIME_MS, options=SimOptions(human=False))
    dev = sim.elevator_ids[0]
    sim.inject(dev, "trapped", auto_release_s=4 * 3600)
    sub = Collector(broker, "sesmon/v1/dispatch/#")
    traffic = Collector(broker, f"sesmon/v1/+/{dev}/status")
    alert = {"alert_id": "trapped:abc", "state": "firing", "device_id": dev, "level": "P1", "rule": "trapped"}
    stop = threading.Event()

    def raise_alert_then_stop_when_freed() -> None:
        try:
            # the simulator publishes only once subscribed to alerts (FleetPublisher.connect waits
            # for the SUBACK): its first live status says it will hear the alert
            assert traffic.wait_for(lambda msgs: any(not retained for _, _, retained in msgs))
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alerter")
            pub.connect("127.0.0.1", broker)
            pub.loop_start()
            for topic in ("sesmon/v1/alerts/firm/F001", "sesmon/v1/alerts/centre/96333"):  # same alert
                pub.publish(topic, orjson.dumps(alert), qos=1).wait_for_publish(30)
            pub.loop_stop()
            pub.disconnect()
            sub.wait_for(lambda msgs: any(orjson.loads(p)["action"] == "freed" for _, p, _ in msgs), 90)
        finally:
            stop.set()

    helper = threading.Thread(target=raise_alert_then_stop_when_freed, daemon=True)
    helper.start()
    stats = run_simulation(None, "127.0.0.1", broker, time_scale=900.0, sim=sim, stop_event=stop)
    helper.join(30)
    traffic.close()
    sub.sync()
    sub.close()
    actions = [orjson.loads(p)["action"] for _, p, _ in sub.msgs]
    assert stats["alerts_in"] == 2
    assert actions.count("ack") == 1 and "on_site" in actions and "freed" in actions
    assert all(t == "sesmon/v1/dispatch/trapped:abc" for t, _, _ in sub.msgs)
    assert sim.devices[dev].fault is None  # freed by the responders, long before the fallback


def test_bounded_in_flight_qos1_loses_nothing(broker: int) -> None:
    sub = Collector(broker, "bench/#")
    pub = FleetPublisher("127.0.0.1", broker, qos=1, max_unacked=50, subscribe_alerts=False).connect()
    payload = b"x" * 200
    for i in range(5000):
        assert pub.publish(f"bench/{i % 7}", payload)
    assert pub.flush(20)
    pub.close()
    sub.sync()
    sub.close()
    assert len(sub.msgs) == 5000 and pub.counts["failed"] == 0
    assert pub.counts["waits"] > 0  # the bound was hit and respected


def test_cli_stops_cleanly_on_sigterm(broker: int, tmp_path: Path) -> None:
    registry = tmp_path / "fleet.csv"
    units = generate_fleet(20, 2, seed=2)
    write_registry(units, registry)
    sub = Collector(broker, "sesmon/v1/+/+/status")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "simulate", "--registry", str(registry),
         "--mqtt-url", f"mqtt://127.0.0.1:{broker}", "--quiet", "--faults", "background"],
        cwd=REPO, env=env,
    )  # fmt: skip
    # a live status means it runs, with its SIGTERM handler installed (it publishes only after)
    assert sub.wait_for(lambda msgs: any(not retained for _, _, retained in msgs), 60), "nothing published"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    sub.sync()
    sub.close()
    last = {}
    for topic, payload, _ in sub.msgs:
        last[topic.split("/")[3]] = payload
    ids = {u.device_id for u in units if u.status != "scrapped"}
    assert ids <= set(last) and {last[d] for d in ids} == {b"offline"}
