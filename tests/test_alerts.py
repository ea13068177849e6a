"""The alerts stage: routing, the durable delivery record, and holding alerts through an MQTT outage."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson

from alerts.publisher import AlertPublisher, DeliveryLog, receivers_for
from sesmon.kafka import ensure_topics, make_producer
from sesmon.schemas import Alert, Level
from sesmon.services import ManagedProcess, start_mqtt
from sesmon.settings import Settings
from tests.pipeline_support import AlertInbox


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


def test_routing_without_receivers_from_the_rules() -> None:
    kinds = {(r.kind, r.id) for r in receivers_for(alert("A", Level.P1), "96333")}
    assert kinds == {("firm", "F001"), ("user_unit", "U01"), ("centre", "96333")}
    assert ("centre", "96333") not in {(r.kind, r.id) for r in receivers_for(alert("B", Level.P3), "96333")}


def test_delivery_record_survives_reopening(tmp_path: Path) -> None:
    record = DeliveryLog(tmp_path / "d.sqlite")
    first = alert("A1")
    record.record([(first.dedup_key(), first.alert_id)])
    reopened = DeliveryLog(tmp_path / "d.sqlite")
    assert reopened.seen(first.dedup_key())
    assert not reopened.seen(alert("A1", state="resolved").dedup_key())  # a new state is a new delivery
    assert reopened.count() == 1


def test_alerts_wait_out_an_mqtt_outage_and_are_delivered_once(
    settings: Settings, mqtt_server: ManagedProcess, tmp_path: Path
) -> None:
    ensure_topics(settings)
    mqtt_server.stop()  # the stage starts while the broker is down
    publisher = AlertPublisher(settings).start()
    worker = threading.Thread(target=publisher.run_forever, daemon=True)
    worker.start()
    producer = make_producer(settings)
    records = [alert(f"E1.elevator.trapped.{i}") for i in range(3)]
    records.append(alert("E1.elevator.trapped.0"))  # a repeat, as a restarted worker would send
    for a in records:
        producer.produce(
            settings.topic("alerts"), key=a.alert_id.encode(), value=orjson.dumps(a.model_dump(mode="json"))
        )
    producer.flush(10)
    restarted: ManagedProcess | None = None
    try:
        deadline = time.monotonic() + 30  # the consumer group joins in ~5 s on Tansu
        while publisher.counters["waiting_for_mqtt"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert publisher.counters["waiting_for_mqtt"] >= 2  # it has the alerts and holds them
        assert publisher.counters["delivered"] == 0  # nothing delivered, so nothing committed or dropped
        restarted = start_mqtt(tmp_path / "again", port=mqtt_server.port)
        inbox = AlertInbox(settings, "sesmon/v1/alerts/centre/#")  # connects before the stage's 1 s retry
        assert inbox.wait(lambda box: len(box.items) >= 3, 30)
        time.sleep(2)
        assert sorted(a["alert_id"] for _, a in inbox.items) == [f"E1.elevator.trapped.{i}" for i in range(3)]
        assert publisher.counters["duplicates_dropped"] == 1
        assert publisher.deliveries.count() == 3
    finally:
        publisher.stop()
        worker.join(10)
        if restarted is not None:
            restarted.stop()
