"""Deliver alert and hidden-danger changes to their receivers over MQTT and to a log, each once.

The rules run at-least-once (a restarted worker may emit an alert change again, with the
same ``alert_id``), so this stage makes the effect idempotent: a durable SQLite record of
every (alert_id, state, escalation) delivered. The Kafka offset is committed only after the
MQTT broker acknowledged every publish of the batch and the delivery was recorded, so a
crash re-delivers rather than loses. The one remaining window (broker acked, record not yet
written) can repeat a delivery once; receivers see the same ``alert_id`` and state.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from pydantic import ValidationError

from sesmon.kafka import ensure_topics, make_consumer, make_producer, stats_record
from sesmon.schemas import TOPIC_ROOT, Alert, Level, Receiver
from sesmon.settings import Settings

log = logging.getLogger("sesmon.alerts")


def receivers_for(alert: Alert, centre_id: str) -> list[Receiver]:
    """Who gets it (DESIGN.md §4): the rules' list, or firm + user unit (+ 96333 for P1)."""
    if alert.receivers:
        return alert.receivers
    out = [Receiver(kind="firm", id=alert.firm_id or "unknown")]
    if alert.user_unit_id:
        out.append(Receiver(kind="user_unit", id=alert.user_unit_id))
    if alert.level == Level.P1:
        out.append(Receiver(kind="centre", id=centre_id))
    return out


def _safe(level: str) -> str:
    return level.replace("/", "_").replace("+", "_").replace("#", "_")


def mqtt_topic(receiver: Receiver) -> str:
    return f"{TOPIC_ROOT}/alerts/{receiver.kind}/{_safe(receiver.id)}"


def hazard_topic(receiver: Receiver) -> str:
    """Hidden dangers go to the firm that must rectify them (and the regulator if major)."""
    return f"{TOPIC_ROOT}/hazards/{receiver.kind}/{_safe(receiver.id)}"


class DeliveryLog:
    """Durable record of deliveries (SQLite, WAL): the dedup memory of this stage."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS delivered (dedup_key TEXT PRIMARY KEY, alert_id TEXT, at_ms INTEGER)"
        )

    def seen(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM delivered WHERE dedup_key=?", (key,)).fetchone() is not None

    def record(self, rows: list[tuple[str, str]]) -> None:
        now = int(time.time() * 1000)
        self.db.executemany(
            "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)", [(k, a, now) for k, a in rows]
        )

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM delivered").fetchone()[0])


class AlertPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_topics(settings)
        self.counters: Counter[str] = Counter()
        self.deliveries = DeliveryLog(settings.data_dir / "alerts" / "delivered.sqlite")
        self.log_path = settings.data_dir / "alerts" / "alerts.jsonl"
        self.consumer = make_consumer(settings, "sesmon-alerts", ["alerts", "hazards"])
        self.hazards_topic = settings.topic("hazards")
        self.stats_producer = make_producer(settings, **{"enable.idempotence": False, "acks": "1"})
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="sesmon-alerts", clean_session=True
        )
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(1, 10)
        self.connected = threading.Event()
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self._stop = threading.Event()

    def start(self) -> AlertPublisher:
        host, port = self.settings.mqtt_host_port
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        return self

    def run_forever(self) -> None:
        next_stats = 0.0
        with self.log_path.open("ab") as journal:
            while not self._stop.is_set():
                batch = self.consumer.consume(500, 0.2)
                if batch:
                    self._deliver_batch(batch, journal)
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self.settings.stats_every_s
                    self.stats_producer.produce(
                        self.settings.topic("pipeline"),
                        key=b"alerts",
                        value=stats_record("alerts", dict(self.counters)),
                    )
                    self.stats_producer.poll(0)
        self.stats_producer.flush(2)
        self.consumer.close()
        self.client.disconnect()
        self.client.loop_stop()

    def _deliver_batch(self, batch: list[Any], journal: Any) -> None:
        pending: list[mqtt.MQTTMessageInfo] = []
        recorded: list[tuple[str, str]] = []
        seen_in_batch: set[str] = set()
        for record in batch:
            if record.error():
                self.counters["kafka_errors"] += 1
                continue
            routed = self._route(record)
            if routed is None:
                continue
            key, item_id, payload, topics, counter = routed
            if key in seen_in_batch or self.deliveries.seen(key):
                self.counters["duplicates_dropped"] += 1
                continue
            seen_in_batch.add(key)
            pending.extend(self._publish(topic, payload) for topic in topics)
            journal.write(payload + b"\n")
            recorded.append((key, item_id))
            self.counters[counter] += 1
        for info in pending:
            self._wait_published(info)
        journal.flush()
        if recorded:
            self.deliveries.record(recorded)
            self.counters["delivered"] += len(recorded)
        self.consumer.commit(asynchronous=False)

    def _route(self, record: Any) -> tuple[str, str, bytes, list[str], str] | None:
        """(dedup key, id, payload, MQTT topics, counter) for an alert or hazard record."""
        if record.topic() == self.hazards_topic:
            try:
                hazard = orjson.loads(record.value())
                hazard_id, status = hazard["hazard_id"], hazard["status"]
            except (ValueError, KeyError, TypeError):
                self.counters["bad_hazard_records"] += 1
                return None
            key = f"{hazard_id}|{status}|{hazard.get('supervision')}|{hazard.get('updated_at')}"
            receivers = [Receiver(kind="firm", id=str(hazard.get("firm_id") or "unknown"))]
            if hazard.get("grade") == "major":
                receivers.append(Receiver(kind="regulator", id=f"district:{hazard.get('district', '')}"))
            topics = [hazard_topic(r) for r in receivers]
            return key, hazard_id, record.value(), topics, f"hazards_{status}"
        try:
            alert = Alert.model_validate_json(record.value())
        except ValidationError as exc:
            self.counters["bad_alert_records"] += 1
            log.error("undecodable alert record: %s", exc)
            return None
        receivers = receivers_for(alert, self.settings.centre_id)
        payload = orjson.dumps(
            alert.model_dump(mode="json") | {"receivers": [r.model_dump() for r in receivers]}
        )
        topics = [mqtt_topic(r) for r in receivers]
        return alert.dedup_key(), alert.alert_id, payload, topics, f"delivered_{alert.level}_{alert.state}"

    def _publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        while True:
            if not self.connected.wait(1.0):
                self.counters["waiting_for_mqtt"] += 1
                continue
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.counters["mqtt_publishes"] += 1
                return info
            # MQTT_ERR_QUEUE_SIZE / NO_CONN: never drop an alert, wait and try again
            self.counters["mqtt_publish_retries"] += 1
            time.sleep(0.2)

    def _wait_published(self, info: mqtt.MQTTMessageInfo) -> None:
        while not info.is_published():
            if self._stop.is_set() and not self.connected.is_set():
                raise RuntimeError("stopping with unacknowledged alert publishes; they will be re-sent")
            info.wait_for_publish(1.0)

    def stop(self) -> None:
        self._stop.set()


def run(settings: Settings) -> None:
    """``sesmon alerts``: run until SIGINT/SIGTERM."""
    publisher = AlertPublisher(settings).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: publisher.stop())
    publisher.run_forever()
