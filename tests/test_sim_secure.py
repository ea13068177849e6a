"""The simulator on a secure broker: every device logs in as itself, people as their accounts.

Real mosquitto with the password file and ACL of ``sesmon mqtt credentials``. What is
checked is what the ACL would refuse if the simulator cut corners: each device's readings
arrive (a device may write only its own topics), its Will is the broker's (the link is cut,
not a message sent), and people's reports arrive on the identity topics that end with the
sender's username.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from sesmon.contract.identity import INSPECTOR, firm_username
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.broker_auth import BrokerCredentials, write_credentials
from sesmon.runtime.services import ManagedProcess, start_mqtt
from sesmon.runtime.settings import MqttEndpoint, Settings
from simulators.common import Msg
from simulators.fleet import generate_fleet
from simulators.pool import AccountPool, PoolError
from simulators.publisher import run_simulation

START_MS = 1_793_500_000_000  # 2026-11-01 daytime in Guangzhou: a fixed simulated clock


@pytest.fixture(scope="module")
def registry_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fleet") / "registry.csv"
    write_registry(generate_fleet(12, 3, seed=11), path)
    return path


@pytest.fixture(scope="module")
def creds(registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> BrokerCredentials:
    return write_credentials(Registry.load(registry_path), tmp_path_factory.mktemp("mqtt"))


@pytest.fixture(scope="module")
def broker(creds: BrokerCredentials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    server = start_mqtt(tmp_path_factory.mktemp("secure"), secure=creds)
    yield server
    server.stop()


class Listener:
    """The bridge's account (reads everything), recording what arrives."""

    def __init__(self, port: int, creds: BrokerCredentials) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sesmon-ingest")
        self.client.username_pw_set("sesmon-ingest", creds.password("sesmon-ingest"))
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe("sesmon/v1/#", qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(30), "the bridge account could not subscribe"

    def until(self, done: object, timeout: float = 60.0) -> list[tuple[str, bytes, bool]]:
        """Messages until ``done(all_so_far)`` is true (each arrival is a chance to stop)."""
        got: list[tuple[str, bytes, bool]] = []
        while not done(got):  # type: ignore[operator]
            got.append(self.messages.get(timeout=timeout))
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_each_device_publishes_as_itself_and_its_will_is_the_brokers(
    broker: ManagedProcess, creds: BrokerCredentials, registry_path: Path
) -> None:
    units = Registry.load(registry_path).units.values()
    devices = {u.device_id for u in units if u.status != "scrapped"}  # a scrapped unit says nothing
    assert len(devices) >= 10
    listener = Listener(broker.port, creds)
    stop = threading.Event()
    stats: dict[str, object] = {}
    sim = threading.Thread(
        target=lambda: stats.update(
            run_simulation(
                registry_path,
                "127.0.0.1",
                broker.port,
                time_scale=10.0,
                duration=120.0,
                start_ms=START_MS,
                stop_event=stop,
                credentials=creds.csv,
                settings=Settings(),
                responders=True,
            )
        ),
        daemon=True,
    )
    sim.start()
    try:
        telemetry_from = lambda got: {t.split("/")[3] for t, _, _ in got if t.endswith("/telemetry")}  # noqa: E731
        listener.until(lambda got: telemetry_from(got) >= devices, timeout=60)
    finally:
        stop.set()
        sim.join(60)
    assert not sim.is_alive()
    offline = lambda got: {t.split("/")[3] for t, p, _ in got if t.endswith("/status") and p == b"offline"}  # noqa: E731
    listener.until(lambda got: offline(got) >= devices, timeout=60)  # every Will, from the broker
    listener.close()
    conns = stats["connections"]
    assert isinstance(conns, dict)
    assert conns["refused"] == 0 and conns["no_account"] == 0
    assert conns["wills"] >= len(devices)  # the links were cut, no "offline" was published by hand
    assert stats["failed"] == 0


def test_people_publish_on_their_identity_topics(
    broker: ManagedProcess, creds: BrokerCredentials, registry_path: Path
) -> None:
    unit = next(iter(Registry.load(registry_path).units.values()))
    firm = firm_username(unit.firm_id)
    listener = Listener(broker.port, creds)
    pool = AccountPool.for_fleet(
        creds.csv,
        {unit.device_id: f"sesmon/v1/{unit.kind}/{unit.device_id}/status"},
        {unit.firm_id},
        MqttEndpoint("127.0.0.1", broker.port),
        responders=False,
        settings=Settings(),
    ).connect(30)
    body = {"device_id": unit.device_id, "firm_id": unit.firm_id, "start": START_MS, "end": START_MS + 1}
    check = {"device_id": unit.device_id, "result": "pass", "ts": START_MS}
    pool.publish_msgs(
        [
            Msg(START_MS, "sesmon/v1/reports/maintenance", body, False, "", "report", firm),
            Msg(START_MS, "sesmon/v1/reports/inspection", check, False, "", "report", INSPECTOR),
        ]
    )
    assert pool.flush(30)
    got = listener.until(lambda got: len([m for m in got if "/reports/" in m[0]]) >= 2)
    pool.close()
    listener.close()
    reports = {t: orjson.loads(p) for t, p, _ in got if "/reports/" in t}
    assert reports == {
        f"sesmon/v1/reports/maintenance/{firm}": body,
        f"sesmon/v1/reports/inspection/{INSPECTOR}": check,
    }


def test_a_wrong_password_is_a_clear_error(
    broker: ManagedProcess, creds: BrokerCredentials, tmp_path: Path
) -> None:
    bad = tmp_path / "credentials.csv"
    lines = creds.csv.read_text().splitlines()
    row = next(line.split(",") for line in lines[1:] if line.split(",")[3])  # a device's account
    device, row[1] = row[0], "not-the-password"
    bad.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    pool = AccountPool.for_fleet(
        bad, {device: f"sesmon/v1/elevator/{device}/status"}, set(), MqttEndpoint("127.0.0.1", broker.port),
        responders=False, settings=Settings(),
    )  # fmt: skip
    with pytest.raises(PoolError, match="refused"):
        pool.connect(30)
