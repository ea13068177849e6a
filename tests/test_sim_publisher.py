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
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sesmon.contract.registry import write_registry
from sesmon.contract.schemas import parse_mqtt
from simulators.engine import FleetSim, SimOptions
from simulators.fleet import generate_fleet
from simulators.publisher import FleetPublisher, build_sim, run_simulation

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[1]


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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("mosquitto did not start")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


class Collector:
    """A paho subscriber recording everything under sesmon/v1/#."""

    def __init__(self, port: int, topic: str = "sesmon/v1/#") -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((message.topic, message.payload, bool(message.retain)))

    def wait_quiet(self, quiet_s: float = 0.7, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            n = len(self.msgs)
            if n == last:
                return
            last = n
            time.sleep(quiet_s)

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
    sub.wait_quiet()
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
    alert = {"alert_id": "trapped:abc", "state": "firing", "device_id": dev, "level": "P1", "rule": "trapped"}

    def raise_alert() -> None:
        time.sleep(1.0)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alerter")
        pub.connect("127.0.0.1", broker)
        pub.loop_start()
        pub.publish("sesmon/v1/alerts/firm/F001", orjson.dumps(alert), qos=1).wait_for_publish(5)
        pub.publish("sesmon/v1/alerts/centre/96333", orjson.dumps(alert), qos=1).wait_for_publish(
            5
        )  # same alert
        pub.loop_stop()
        pub.disconnect()

    threading.Thread(target=raise_alert, daemon=True).start()
    stats = run_simulation(None, "127.0.0.1", broker, time_scale=900.0, duration=5.0, sim=sim)
    sub.wait_quiet()
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
    sub.wait_quiet()
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
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    sub.wait_quiet()
    sub.close()
    last = {}
    for topic, payload, _ in sub.msgs:
        last[topic.split("/")[3]] = payload
    ids = {u.device_id for u in units if u.status != "scrapped"}
    assert ids <= set(last) and {last[d] for d in ids} == {b"offline"}
