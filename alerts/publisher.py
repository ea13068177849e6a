"""Deliver alert and hidden-danger changes to their receivers over MQTT and to a log: one page each.

The rules run at-least-once (a restarted worker may emit an alert change again, with the
same ``alert_id``), and this stage itself may be killed at any moment, so delivery is made
idempotent page by page:

- every page (change × receiver topic) is recorded durably (:class:`DeliveryLog`) from the
  paho ``on_publish`` callback, i.e. as soon as the broker's PUBACK for it arrives;
- a page already recorded, or in flight right now, is never published again;
- at most ``alerts_max_inflight`` publishes await a PUBACK at any time, so a crash can
  repeat at most that many pages (the ones the broker had but we had not recorded);
- the Kafka offset of a partition is committed only past records whose every page is
  recorded, so a crash re-reads what was not fully delivered and the record drops the rest;
- each page carries ``idempotency_key`` (``Alert.dedup_key()`` or the hazard's key) so a
  receiver can drop the rare repeat itself.

During an MQTT outage the stage holds its alerts (never drops one) and still stops
promptly on SIGTERM: unrecorded pages stay for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import IO, Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, Message, TopicPartition

from alerts.delivery_log import DeliveryLog
from alerts.routing import (
    BadRecord,
    Route,
    hazard_topic,
    mqtt_topic,
    receivers_for,
    route_alert,
    route_hazard,
)
from sesmon.runtime.health import Health, fatal
from sesmon.runtime.kafka import ensure_topics, make_consumer, make_producer, stats_record
from sesmon.runtime.mqtt import connect_async, make_client
from sesmon.runtime.retry import Stopping, call_with_retry
from sesmon.runtime.settings import Settings

__all__ = [
    "AlertPublisher",
    "DeliveryLog",
    "hazard_topic",
    "mqtt_topic",
    "receivers_for",
    "run",
]

log = logging.getLogger("sesmon.alerts")

#: Kafka records taken per poll; they are delivered one by one under the in-flight bound
CONSUME_BATCH = 500
#: how often completed offsets are committed (also after every poll)
COMMIT_EVERY_S = 0.5
#: on stop, how long to let publishes in flight be acknowledged (fewer repeats on the next run)
STOP_GRACE_S = 2.0
#: longest single wait of the main loop: the bound on how late it notices ``stop()``
WAIT_SLICE_S = 0.25


class PublishRefused(Exception):
    """paho refused a publish (its queue is full): retried under the shared policy."""


@dataclass(eq=False)
class Change:
    """One Kafka record: committable once every page it owes is recorded."""

    partition: tuple[str, int]
    offset: int
    outstanding: int = 0  # pages (own or another change's, in flight) not yet recorded
    dispatched: bool = False  # every page it owes has been published or attached
    published: bool = False  # it sent at least one page itself

    @property
    def done(self) -> bool:
        return self.dispatched and self.outstanding == 0


@dataclass(eq=False)
class Page:
    """One publish (idempotency key × receiver topic) awaiting its PUBACK."""

    key: str
    topic: str
    item_id: str
    waiters: list[Change] = field(default_factory=list)


class OffsetTracker:
    """Per partition, the records taken in order: commit only past a prefix of completed ones."""

    def __init__(self) -> None:
        self._by_partition: dict[tuple[str, int], deque[Change]] = {}

    def add(self, change: Change) -> None:
        self._by_partition.setdefault(change.partition, deque()).append(change)

    def committable(self) -> list[TopicPartition]:
        """Next offsets to commit for partitions whose completed prefix grew (pops that prefix)."""
        out = []
        for (topic, partition), changes in self._by_partition.items():
            last = None
            while changes and changes[0].done:
                last = changes.popleft().offset
            if last is not None:
                out.append(TopicPartition(topic, partition, last + 1))
        return out

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions taken away by a rebalance: their new owner re-reads what we did not commit."""
        for tp in partitions:
            self._by_partition.pop((tp.topic, tp.partition), None)

    def pending(self) -> int:
        return sum(len(c) for c in self._by_partition.values())


class AlertPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_inflight = max(1, settings.alerts_max_inflight)
        self.health = Health("alerts")
        self.counters: Counter[str] = Counter()
        self._stop = threading.Event()
        # one lock for the bookkeeping shared with paho's thread; never held while calling paho
        # (paho calls on_publish holding its own message lock: the reverse order would deadlock)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._in_flight: dict[tuple[str, str], Page] = {}  # (key, topic) -> page awaiting PUBACK
        self._by_mid: dict[int, Page] = {}
        self._early_acks: set[int] = set()  # PUBACKs that beat publish() returning the mid
        self.offsets = OffsetTracker()
        self.connected = threading.Event()
        self._journal: IO[bytes] | None = None
        self._next_stats = 0.0
        self._next_commit = 0.0
        self._topics_thread: threading.Thread | None = None
        self._started = False
        self._last_error_log = 0.0

        ensure_topics(settings)
        self.deliveries = DeliveryLog(settings.data_dir / "alerts" / "delivered.sqlite")
        self.log_path = settings.data_dir / "alerts" / "alerts.jsonl"
        self.hazards_topic = settings.topic("hazards")
        # "sesmon-alerts" for the default prefix; a test's own prefix gets its own group. Static
        # membership (the instance id is the MQTT client id, unique per instance like it): a
        # restarted stage takes its partitions back at once instead of waiting for the dead
        # member's session to expire (on Tansu 8 s instead of 18 s after a kill -9).
        self.consumer = make_consumer(
            settings,
            f"{settings.topic_prefix}-alerts",
            ["alerts", "hazards"],
            error_cb=self._on_kafka_error,
            **{"group.instance.id": settings.alerts_mqtt_client_id},
        )
        self.consumer.subscribe(
            [settings.topic("alerts"), self.hazards_topic], on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.stats_producer = make_producer(
            settings, **{"enable.idempotence": False, "acks": "1", "error_cb": self._on_kafka_error}
        )
        # clean session: a publisher keeps no subscriptions at the broker; what it still owes is
        # in paho's memory (re-sent after a reconnect) or, after a restart, in the delivery record
        self.client = make_client(settings, settings.alerts_mqtt_client_id, clean_session=True)
        self.client.max_inflight_messages_set(self.max_inflight)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish
        self.health.watch("mqtt_thread", self._mqtt_thread_alive)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AlertPublisher:
        connect_async(self.client, self.settings)
        self._started = True
        return self

    def stop(self) -> None:
        """Ask the stage to end (safe from a signal handler: it only sets an event)."""
        self._stop.set()

    def run_forever(self) -> None:
        self.health.watch_thread("main", threading.current_thread())
        with self.log_path.open("ab") as journal:
            self._journal = journal
            try:
                while not self._stop.is_set():
                    for record in self.consumer.consume(CONSUME_BATCH, WAIT_SLICE_S):
                        if self._stop.is_set():
                            break
                        self._take(record)
                    self._tick()
            finally:
                self._shutdown()

    def _shutdown(self) -> None:
        """Let in-flight pages be acknowledged briefly, commit what is complete, close everything."""
        with self._changed:
            self._changed.wait_for(
                lambda: not self._in_flight or not self.connected.is_set(), timeout=STOP_GRACE_S
            )
        self._commit(asynchronous=True)
        with self._lock:
            in_flight, uncommitted = len(self._in_flight), self.offsets.pending()
        self._publish_stats()  # the last record, while every part still runs
        self.client.disconnect()
        self.client.loop_stop()
        self.consumer.close()
        self.stats_producer.flush(2)
        log.info(
            "alerts stage stopped; %d pages unacknowledged, %d records not fully delivered: the next run"
            " re-reads them",
            in_flight,
            uncommitted,
        )

    # ------------------------------------------------------------------ Kafka side

    def _take(self, record: Message) -> None:
        """Deliver one Kafka record: publish the pages it still owes, under the in-flight bound."""
        if record.error():
            self._on_record_error(record.error())
            return
        change = Change((record.topic(), record.partition()), record.offset())
        self.offsets.add(change)
        try:
            route = self._route(record)
        except BadRecord as exc:
            log.error("%s", exc)
            with self._lock:
                self.counters[exc.counter] += 1
                change.dispatched = True
            return
        # pages in flight now: wait for them instead of sending again (checked before the record,
        # because a page leaves the in-flight map only after its row is written)
        with self._lock:
            not_in_flight = []
            for topic in route.topics:
                page = self._in_flight.get((route.key, topic))
                if page is None:
                    not_in_flight.append(topic)
                else:
                    page.waiters.append(change)
                    change.outstanding += 1
        to_send = self.deliveries.missing(route.key, not_in_flight)
        if to_send and self._journal is not None:
            # written ahead of the pages: a crash may repeat a line, never lose one
            self._journal.write(route.payload + b"\n")
            self._journal.flush()
        for topic in to_send:
            if not self._publish(route, topic, change):
                return  # stopping: this record stays uncommitted and is re-read next run
        with self._lock:
            change.dispatched = True
            if not to_send:
                self.counters["duplicates_dropped"] += 1
            else:
                self.counters[route.counter] += 1
                if len(to_send) < len(route.topics):
                    self.counters["resumed_partial"] += 1
                if change.done:
                    self.counters["delivered"] += 1

    def _route(self, record: Message) -> Route:
        if record.topic() == self.hazards_topic:
            return route_hazard(record.value())
        return route_alert(record.value(), self.settings.centre_id)

    def _tick(self) -> None:
        """Periodic work of the main loop (also while it waits): commit offsets, publish stats."""
        if self._started and not self._stop.is_set() and not self._mqtt_thread_alive():
            fatal("alerts", "the MQTT network thread died; nothing would be delivered")
        now = time.monotonic()
        if now >= self._next_commit:
            self._next_commit = now + COMMIT_EVERY_S
            self._commit(asynchronous=True)
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_every_s
            self._publish_stats()
        self.stats_producer.poll(0)

    def _commit(self, asynchronous: bool) -> None:
        with self._lock:
            offsets = self.offsets.committable()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self.counters["commits"] += 1
        except Exception as exc:  # a rebalance or a broker restart: the re-read is harmless
            self.counters["commit_errors"] += 1
            log.warning("offset commit failed (records will be re-read and dropped as delivered): %s", exc)

    def _publish_stats(self) -> None:
        with self._lock:
            counters = dict(self.counters)
            in_flight = len(self._in_flight)
            pending = self.offsets.pending()
        record = counters | {
            "mqtt_connected": self.connected.is_set(),
            "in_flight": in_flight,
            "uncommitted_records": pending,
        }
        with contextlib.suppress(BufferError):  # Kafka away and the queue full: stats are best effort
            self.stats_producer.produce(
                self.settings.topic("pipeline"),
                key=b"alerts",
                value=stats_record("alerts", record | self.health.snapshot()),
            )

    def _on_record_error(self, err: KafkaError) -> None:
        self.counters["kafka_errors"] += 1
        if err.fatal():
            fatal("alerts", f"Kafka consumer: {err}")
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            # the broker came back empty (Tansu keeps nothing): recreate the topics, keep consuming;
            # the re-read from the earliest offset is harmless, the delivery record drops repeats
            self._recreate_topics_soon(f"subscribed topics missing ({err})")
            return
        self._log_rarely("Kafka consumer error: %s", err)

    def _on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb (served by poll/consume): fatal ends the process, it retries the rest."""
        try:
            if err.fatal():
                fatal("alerts", f"Kafka client: {err}")
            self._log_rarely("Kafka: %s (librdkafka retries by itself)", err)
            if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
                # a broker that comes back may come back empty: make sure our topics exist again
                self._recreate_topics_soon(f"Kafka connection lost ({err})")
        except Exception:
            log.exception("error in Kafka error callback")

    def _recreate_topics_soon(self, why: str) -> None:
        """``ensure_topics`` in the background under the shared retry policy (the main loop keeps
        delivering and stays stoppable while Kafka is away)."""
        with self._lock:
            if self._topics_thread is not None and self._topics_thread.is_alive():
                return
            log.warning("%s; making sure the sesmon topics exist", why)
            self._topics_thread = threading.Thread(
                target=self._recreate_topics, name="alerts-topics", daemon=True
            )
            self._topics_thread.start()

    def _recreate_topics(self) -> None:
        try:
            call_with_retry(
                lambda: ensure_topics(self.settings, timeout=5.0),
                self._stop,
                on=Exception,
                max_wait_s=5.0,
                give_up_after_s=600.0,
                what="recreating Kafka topics",
            )
        except Stopping:
            pass
        except Exception:
            log.exception("could not recreate the Kafka topics")

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Commit what is complete on the partitions we lose, and stop tracking them."""
        self._commit(asynchronous=True)
        with self._lock:
            self.offsets.forget(partitions)

    # ------------------------------------------------------------------ MQTT side

    def _publish(self, route: Route, topic: str, change: Change) -> bool:
        """Publish one page once a slot is free; False if the stage is stopping first."""
        if not self._wait_for_slot():
            return False
        page = Page(route.key, topic, route.item_id, [change])
        with self._lock:
            self._in_flight[(route.key, topic)] = page
            change.outstanding += 1
            change.published = True
        try:
            info = self._send(topic, route.payload)
        except (Stopping, PublishRefused):  # refused until the stage stopped
            with self._lock:
                self._in_flight.pop((route.key, topic), None)
                change.outstanding -= 1
            return False
        with self._lock:
            self.counters["mqtt_publishes"] += 1
            acked_already = info.mid in self._early_acks
            if acked_already:
                self._early_acks.discard(info.mid)
            else:
                self._by_mid[info.mid] = page
        if acked_already:
            self._record(page)
        return True

    def _send(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """``client.publish``; a refusal is retried under the shared policy. NO_CONN means queued."""

        def publish() -> mqtt.MQTTMessageInfo:
            info = self.client.publish(topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self.counters["mqtt_publish_retries"] += 1
                raise PublishRefused(mqtt.error_string(info.rc))
            return info

        try:
            return publish()  # the common case, without building a retry policy per page
        except PublishRefused:
            return call_with_retry(
                publish, self._stop, on=PublishRefused, max_wait_s=1.0, what="MQTT publish"
            )

    def _wait_for_slot(self) -> bool:
        """Block until the broker is connected and fewer than the bound await PUBACK (or stop)."""

        def ready() -> bool:
            return self.connected.is_set() and len(self._in_flight) < self.max_inflight

        while not self._stop.is_set():
            with self._changed:
                ok = self._changed.wait_for(lambda: self._stop.is_set() or ready(), timeout=WAIT_SLICE_S)
            if self._stop.is_set():
                return False
            if ok:
                return True
            if not self.connected.is_set():
                self.counters["waiting_for_mqtt"] += 1
            self._tick()
        return False

    def _record(self, page: Page) -> None:
        """The broker acknowledged ``page``: record it durably, then free its slot and its waiters."""
        try:
            self.deliveries.record(page.key, page.topic, page.item_id)
        except Exception as exc:  # a delivery we cannot record would be repeated forever
            fatal("alerts", f"cannot write the delivery record: {exc!r}")
        with self._changed:
            self._in_flight.pop((page.key, page.topic), None)
            self.counters["pages_recorded"] += 1
            for change in page.waiters:
                change.outstanding -= 1
                if change.done and change.published:
                    self.counters["delivered"] += 1
            self._changed.notify_all()
        self.health.progress()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        try:
            with self._lock:
                page = self._by_mid.pop(mid, None)
                if page is None:
                    self._early_acks.add(mid)
                    return
            self._record(page)
        except Exception:  # a raising callback would kill paho's network thread
            log.exception("error handling a PUBACK")

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason_code: Any, _p: Any) -> None:
        try:
            if getattr(reason_code, "is_failure", False):
                self._log_rarely("MQTT broker refused the connection: %s", reason_code)
                return
            log.info("connected to the MQTT broker %s", self.settings.mqtt_endpoint.url())
            with self._changed:
                self.connected.set()
                self._changed.notify_all()
        except Exception:
            log.exception("error in on_connect")

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason_code: Any, _p: Any) -> None:
        try:
            with self._changed:
                self.connected.clear()
                self._changed.notify_all()
            if not self._stop.is_set():
                self._log_rarely("MQTT connection lost (%s); holding alerts until it is back", reason_code)
        except Exception:
            log.exception("error in on_disconnect")

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        with contextlib.suppress(Exception):
            self._log_rarely(
                "cannot reach the MQTT broker %s; holding alerts", self.settings.mqtt_endpoint.url()
            )

    def _mqtt_thread_alive(self) -> bool:
        thread = getattr(self.client, "_thread", None)  # paho keeps its loop thread here
        return thread is not None and thread.is_alive()

    def _log_rarely(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning(message, *args)


def run(settings: Settings) -> None:
    """``sesmon alerts``: run until SIGINT/SIGTERM."""
    publisher = AlertPublisher(settings).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: publisher.stop())
    publisher.run_forever()
