"""The alerts stage: routing, the durable per-page delivery record, holding alerts through an MQTT
outage, and stopping promptly while the broker is away."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from alerts.incidents import ResponseLoop
from alerts.publisher import AlertPublisher, DeliveryLog, receivers_for
from alerts.routing import BadRecord, route_change, route_hazard
from sesmon.contract.schemas import Alert, Level
from sesmon.runtime.kafka import ensure_topics, make_producer
from sesmon.runtime.retry import call_with_retry
from sesmon.runtime.services import ManagedProcess, ServiceError, free_port, mosquitto_path, start_kafka
from sesmon.runtime.settings import Settings
from tests.pipeline_support import wait_until
from tests.test_alerts_crash import PageInbox


def alert(alert_id: str, level: Level = Level.P1, state: str = "firing") -> Alert:
    return Alert(
        alert_id=alert_id,
        rule="elevator.trapped",
        level=level,
        device_id="E1",
        kind="elevator",
        district="天河",
        firm_id="F001",
        user_unit_id="U01",
        opened_at=1_795_300_000_000,
        changed_at=1_795_300_000_000,
        state=state,  # type: ignore[arg-type]
    )


def produce(settings: Settings, alerts: list[Alert]) -> None:
    producer = make_producer(settings)
    for a in alerts:
        producer.produce(
            settings.topic("alerts"), key=a.alert_id.encode(), value=orjson.dumps(a.model_dump(mode="json"))
        )
    assert producer.flush(10) == 0


def persistent_mosquitto(workdir: Path, port: int | None = None) -> ManagedProcess:
    """A mosquitto that keeps sessions across its restart, so a subscriber needs no race to resubscribe."""
    binary = mosquitto_path()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {workdir}/\n"
    )
    return ManagedProcess(
        "mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log", port=port
    ).start()


def test_routing_without_receivers_from_the_rules() -> None:
    kinds = {(r.kind, r.id) for r in receivers_for(alert("A", Level.P1), "96333")}
    assert kinds == {("firm", "F001"), ("user_unit", "U01"), ("centre", "96333")}
    assert ("centre", "96333") not in {(r.kind, r.id) for r in receivers_for(alert("B", Level.P3), "96333")}


def test_pages_carry_an_idempotency_key() -> None:
    a = alert("E1.elevator.trapped.1", state="resolved")
    (change,) = ResponseLoop().on_alert(a)  # first seen resolved: one change
    route = route_change(change)
    page = orjson.loads(route.payload)
    assert page["idempotency_key"] == change.change_id == "E1.elevator.trapped.1|resolved"
    assert page["alert_id"] == a.alert_id and page["state"] == "resolved" and len(page["receivers"]) == 3
    assert route.topics == (
        "sesmon/v1/alerts/firm/F001",
        "sesmon/v1/alerts/user_unit/U01",
        "sesmon/v1/alerts/centre/96333",
    )
    hazard = {"hazard_id": "HZ.E1.rule.1", "status": "open", "grade": "major", "firm_id": "F001"}
    hazard |= {"district": "天河", "supervision": "district", "updated_at": 5}
    route = route_hazard(orjson.dumps(hazard))
    assert orjson.loads(route.payload) == hazard | {"idempotency_key": "HZ.E1.rule.1|open|district|5"}
    assert route.topics == ("sesmon/v1/hazards/firm/F001", "sesmon/v1/hazards/regulator/district:天河")
    with pytest.raises(BadRecord):
        route_hazard(b"[1]")


def test_delivery_record_is_per_page_and_survives_reopening(tmp_path: Path) -> None:
    record = DeliveryLog(tmp_path / "d.sqlite")
    first = alert("A1")
    record.record(first.dedup_key(), "sesmon/v1/alerts/firm/F001", first.alert_id)
    reopened = DeliveryLog(tmp_path / "d.sqlite")
    topics = ["sesmon/v1/alerts/firm/F001", "sesmon/v1/alerts/centre/96333"]
    assert reopened.missing(first.dedup_key(), topics) == ["sesmon/v1/alerts/centre/96333"]
    assert reopened.seen(first.dedup_key(), "sesmon/v1/alerts/firm/F001")
    assert not reopened.seen(alert("A1", state="resolved").dedup_key())  # a new state is a new delivery
    assert reopened.count() == 1


def test_a_record_of_the_per_change_version_counts_for_every_receiver(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    legacy = sqlite3.connect(path)
    legacy.execute("CREATE TABLE delivered (dedup_key TEXT PRIMARY KEY, alert_id TEXT, at_ms INTEGER)")
    legacy.execute("INSERT INTO delivered VALUES ('A1|firing|0', 'A1', 1)")
    legacy.commit()
    legacy.close()
    assert DeliveryLog(path).missing("A1|firing|0", ["t1", "t2"]) == []
    assert DeliveryLog(path).missing("A2|firing|0", ["t1"]) == ["t1"]


def test_alerts_wait_out_an_mqtt_outage_and_are_delivered_once(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    broker = persistent_mosquitto(tmp_path / "broker")
    settings = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{broker.port}"})
    # a persistent session: the centre's subscription outlives the outage and its pages wait for it
    inbox = PageInbox(settings, "sesmon/v1/alerts/centre/#", client_id="test-centre", clean_session=False)
    broker.stop()  # the stage starts while the broker is down
    publisher = AlertPublisher(settings).start()
    worker = threading.Thread(target=publisher.run_forever, daemon=True)
    worker.start()
    records = [alert(f"E1.elevator.trapped.{i}") for i in range(3)]
    records.append(alert("E1.elevator.trapped.0"))  # a repeat, as a restarted worker would send
    produce(settings, records)
    restarted: ManagedProcess | None = None
    try:
        # the consumer group joins in ~5-8 s on Tansu; then it has the alerts and holds them
        assert wait_until(lambda: publisher.counters["waiting_for_mqtt"] >= 2, 60)
        assert publisher.deliveries.count() == 0  # nothing delivered, so nothing committed or dropped
        restarted = persistent_mosquitto(tmp_path / "broker", port=broker.port)
        # 3 changes x 3 receivers recorded, the repeat taken and dropped, nothing in flight
        assert wait_until(
            lambda: (
                publisher.deliveries.count() == 9
                and publisher.counters["duplicates_dropped"] == 1
                and publisher.counters["delivered"] == 3
            ),
            60,
        )
        assert inbox.wait(lambda box: len(box.pages) >= 3, 60)
        assert sorted(page["alert_id"] for _, page in inbox.pages) == [
            f"E1.elevator.trapped.{i}" for i in range(3)
        ]
        assert publisher.counters["mqtt_publishes"] == 9  # one publish per page, none repeated
    finally:
        publisher.stop()
        worker.join(10)
        inbox.close()
        if restarted is not None:
            restarted.stop()
    assert not worker.is_alive()


def test_stop_is_prompt_during_an_outage_and_the_next_run_delivers(
    settings: Settings, mqtt_server: ManagedProcess, tmp_path: Path
) -> None:
    ensure_topics(settings)
    mqtt_server.stop()
    publisher = AlertPublisher(settings).start()
    worker = threading.Thread(target=publisher.run_forever, daemon=True)
    worker.start()
    produce(settings, [alert("E1.elevator.trapped.7")])
    try:
        assert wait_until(lambda: publisher.counters["waiting_for_mqtt"] >= 2, 60)  # holding the alert
        asked = time.monotonic()
        publisher.stop()
        worker.join(10)
        assert not worker.is_alive()
        took = time.monotonic() - asked
        print(f"stop() with the broker down took {took:.2f} s")
        assert took < 5, "stop() took too long while the broker is down"
        assert publisher.deliveries.count() == 0

        # the next run (same durable state) gets the uncommitted alert again and delivers it
        mqtt_server.start()  # same port; the fixture stops it
        inbox = PageInbox(settings, "sesmon/v1/alerts/centre/#")
        again = AlertPublisher(settings).start()
        rerun = threading.Thread(target=again.run_forever, daemon=True)
        rerun.start()
        try:
            assert inbox.wait(lambda box: len(box.pages) >= 1, 60)
            assert wait_until(lambda: again.deliveries.count() == 3, 30)
            assert [page["idempotency_key"] for _, page in inbox.pages] == ["E1.elevator.trapped.7|opened"]
        finally:
            again.stop()
            rerun.join(10)
            inbox.close()
    finally:
        publisher.stop()


def test_the_stage_keeps_delivering_after_kafka_comes_back_empty(settings: Settings, tmp_path: Path) -> None:
    """Tansu keeps nothing across a restart (stack.md K7): topics, offsets and group are gone."""
    kafka = start_kafka(tmp_path / "tansu")
    settings = settings.model_copy(update={"kafka_url": f"127.0.0.1:{kafka.port}"})
    ensure_topics(settings)
    inbox = PageInbox(settings, "sesmon/v1/alerts/centre/#")
    publisher = AlertPublisher(settings).start()
    worker = threading.Thread(target=publisher.run_forever, daemon=True)
    worker.start()
    try:
        produce(settings, [alert("E1.elevator.trapped.1")])
        assert inbox.wait(lambda box: len(box.pages) == 1, 60)
        assert kafka.proc is not None
        os.killpg(kafka.proc.pid, signal.SIGKILL)  # a crash: faster than Tansu's slow SIGTERM
        kafka.proc.wait(10)
        kafka = call_with_retry(  # the old process may hold the port a moment longer
            lambda: start_kafka(tmp_path / "tansu-again", port=kafka.port),
            on=ServiceError,
            give_up_after_s=30,
        )
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        # the stage recreates its topics by itself (nobody else does here)...
        assert wait_until(lambda: settings.topic("alerts") in admin.list_topics(timeout=5).topics, 60)
        produce(settings, [alert("E1.elevator.trapped.1"), alert("E1.elevator.trapped.2")])
        # ...and consumes again: the new alert is paged, the repeat of the old one is dropped
        assert inbox.wait(lambda box: len(box.pages) >= 2, 90)
        assert wait_until(lambda: publisher.counters["duplicates_dropped"] == 1, 30)
        assert [page["alert_id"] for _, page in inbox.pages] == [
            "E1.elevator.trapped.1",
            "E1.elevator.trapped.2",
        ]
        assert worker.is_alive() and publisher.health.snapshot()["health"]["ok"]
    finally:
        publisher.stop()
        worker.join(10)
        inbox.close()
        kafka.stop()
