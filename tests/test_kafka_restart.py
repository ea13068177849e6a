"""Restart the Kafka broker under load: the pipeline recovers by itself and alerts flow again.

The real pipeline (ingest, worker, alerts as child processes under ``sesmon.runtime.supervisor``)
runs on its own Tansu, which is stopped and started again on the same port while readings
keep coming. Tansu keeps nothing (stack.md K7): every topic, offset and changelog is gone, so
this is the worst restart a broker can do. Trapped events sent after the restart must still
become alerts over MQTT, with no hand of ours on the stages: whatever died (a stage that ends
itself on a fatal Kafka error, status 70) the supervisor restarted, and the board shows it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sesmon.app.board import BoardFeed
from sesmon.app.demo import wait_for_ingest
from sesmon.contract.registry import Registry, Unit, write_registry
from sesmon.runtime.kafka import ensure_topics
from sesmon.runtime.services import ManagedProcess, ServiceError, start_kafka, wait_for_port
from sesmon.runtime.settings import Settings
from sesmon.runtime.supervisor import Supervisor
from simulators.fleet import generate_fleet
from tests.conftest import clock_date
from tests.pipeline_support import AlertInbox, stage_env, wait_until

log = logging.getLogger(__name__)


class Tansu:
    """Our own Tansu (the session's one must not be restarted under the other tests)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: ManagedProcess = start_kafka(workdir)
        self.port = self.server.port

    def restart(self, timeout: float = 60.0) -> float:
        """SIGTERM, wait until the port is free (Tansu needs > 2 s), start again; seconds taken."""
        began = time.monotonic()
        self.server.stop()
        wait_until(lambda: not wait_for_port(self.port, 0.2), timeout, every=0.2)

        def started() -> bool:
            try:
                self.server = start_kafka(self.workdir, port=self.port)
            except ServiceError:  # AddrInUse: the old socket is not released yet
                return False
            return True

        if not wait_until(started, max(0.0, began + timeout - time.monotonic()), every=0.5):
            self.server = start_kafka(self.workdir, port=self.port)  # the last try: its error says why
        return time.monotonic() - began

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    broker = Tansu(tmp_path / "tansu")
    yield broker
    broker.stop()


class Fleet:
    """Publishes a steady stream of readings for every unit, and trapped events on demand."""

    def __init__(self, settings: Settings, units: list[Unit]) -> None:
        self.units = units
        self.seq = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex[:6]}")
        self.client.connect(*settings.mqtt_host_port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._readings, daemon=True)
        self.thread.start()

    def _publish(self, unit: Unit, leaf: str, body: dict[str, object]) -> None:
        with self.lock:
            self.seq += 1
            body = {"device_id": unit.device_id, "ts": int(time.time() * 1000), "seq": self.seq, **body}
        self.client.publish(f"sesmon/v1/elevator/{unit.device_id}/{leaf}", json.dumps(body), qos=1)

    def _readings(self) -> None:
        calm = {"mode": "normal", "moving": False, "door": "closed", "door_zone": True, "floor": 1}
        while not self.stop.wait(0.5):
            for unit in self.units:
                self._publish(unit, "telemetry", calm)

    def trapped(self, unit: Unit) -> None:
        self._publish(unit, "event", {"code": "trapped", "state": "occur", "detail": {"floor": 3}})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def trapped_units(inbox: AlertInbox) -> set[str]:
    return {a["device_id"] for _, a in inbox.firing() if "trapped" in str(a.get("rule"))}


def test_pipeline_recovers_from_a_kafka_restart_by_itself(
    tmp_path: Path, tansu: Tansu, mqtt_server: ManagedProcess
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_server.port}",
        kafka_url=f"127.0.0.1:{tansu.port}",
        data_dir=tmp_path / "state",
        topic_prefix=f"k{tag}",
        mqtt_client_id=f"ingest-{tag}",
        faust_app_id=f"streams-{tag}",
        kafka_partitions=4,  # as the demo; also what Tansu gives a topic created by a produce
    )
    registry_path = tmp_path / "fleet.csv"
    write_registry(generate_fleet(30, 0, seed=21, today=clock_date()), registry_path)
    registry = Registry.load(registry_path)
    soon = clock_date() + timedelta(days=40)  # an overdue inspection raises its own alert; avoid it
    units = [
        u for u in registry if u.in_use and (u.next_inspection_due is None or u.next_inspection_due > soon)
    ]
    assert len(units) >= 10
    ensure_topics(settings)
    env = stage_env(settings, registry)
    logs = tmp_path / "logs"
    supervisor = Supervisor(settings, log_path=logs / "supervisor.log")
    for name in ("alerts", "worker", "ingest"):
        supervisor.add(name, [name], env, logs / f"{name}.log")
    fleet: Fleet | None = None
    inbox: AlertInbox | None = None
    try:
        supervisor.start()
        assert wait_for_ingest(settings, 90), (logs / "ingest.log").read_text()[-3000:]
        inbox = AlertInbox(settings)
        fleet = Fleet(settings, units)

        # before: the pipeline works
        fleet.trapped(units[0])
        assert inbox.wait(lambda box: units[0].device_id in trapped_units(box), 120), (
            "no alert before restart"
        )

        took_s = tansu.restart()
        back = time.monotonic()
        log.warning(
            "Tansu restarted on port %d in %.1f s (every topic and offset is gone)", tansu.port, took_s
        )

        # after: fresh units get trapped one after another, through the recovery and beyond;
        # every one of them must become an alert (the issue measured 0 of 30)
        after = units[1:9]
        sent_after: dict[str, float] = {}
        first_alert_s: float | None = None
        deadline = back + 150

        def alerted() -> set[str]:
            return trapped_units(inbox) & set(sent_after)  # type: ignore[arg-type]

        for unit in after:
            fleet.trapped(unit)
            sent_after[unit.device_id] = time.monotonic() - back
            if inbox.wait(lambda _box: bool(alerted()), 3) and first_alert_s is None:
                first_alert_s = time.monotonic() - back
        every = set(sent_after)
        inbox.wait(lambda _box: alerted() == every, max(1.0, deadline - time.monotonic()))
        if first_alert_s is None and alerted():
            first_alert_s = time.monotonic() - back
        tails = "\n".join(s.process.log_tail(15) for s in supervisor.stages.values())
        assert alerted() == every, (
            f"trapped after the restart without an alert: {sorted(every - alerted())} of {len(every)}; "
            f"restarts {supervisor.restarts()}\n{tails}"
        )
        log.warning(
            "alerts flowed again %.1f s after Tansu was back; %d/%d trapped events sent at +%s s alerted; "
            "restarts %s",
            first_alert_s or -1,
            len(alerted()),
            len(every),
            [round(t, 1) for t in sent_after.values()],
            supervisor.restarts(),
        )

        # whatever died was restarted by the supervisor, and the board (reading Kafka) says so
        restarts = supervisor.restarts()
        assert restarts["worker"] >= 1  # it ends itself when the broker goes: its offsets are stale
        assert all(stage.alive for stage in supervisor.stages.values())
        exits = {s.name: s.last_exit_status for s in supervisor.stages.values() if s.restarts}
        assert exits["worker"] == 70, exits
        feed = BoardFeed(settings)
        try:
            end = time.monotonic() + 60

            def board_caught_up() -> bool:
                seen = feed.state.restarts()
                reporting = {"ingest", "streams", "alerts"} <= set(feed.state.stages)
                return (
                    reporting
                    and seen.get("streams", 0) >= restarts["worker"]
                    and not feed.state.silent_stages()
                )

            while time.monotonic() < end and not board_caught_up():
                feed.poll(0.5)
            assert board_caught_up(), (
                feed.state.restarts(),
                feed.state.silent_stages(),
                list(feed.state.stages),
            )
            rows = {row["stage"]: row for row in feed.state.stage_rows()}
            assert rows["streams"]["restarts"] >= 1 and rows["streams"]["status"] == "ok", rows
        finally:
            feed.close()
    finally:
        if fleet is not None:
            fleet.close()
        if inbox is not None:
            inbox.client.loop_stop()
        supervisor.stop()
    assert not any(stage.alive for stage in supervisor.stages.values())
