"""MQTT -> Kafka bridge: validate every device message, dead-letter the bad ones, lose nothing.

Why it is built this way:
- QoS 1 with paho's *manual* ack: the PUBACK for a message goes out only after Kafka
  confirmed the record (delivery report, acks=all). If the bridge dies first, the broker
  still holds the message in our persistent session (clean_session=False) and redelivers it.
- librdkafka batches records (linger 5 ms); delivery reports are served by a poll thread.
- What is owed is bounded (``ingest_max_unacked``): past it the paho thread waits, so the
  broker queues instead of us growing without limit (stack.md: paho's 65,535-id trap).
- ``on_connect`` subscribes every time: after a broker restart the session is gone and a
  client that does not resubscribe loses data silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, Message

from ingest.vendor import VENDOR_ROOT, VendorError, vendor_to_canonical
from sesmon.kafka import dumps, ensure_topics, make_producer, stats_record
from sesmon.registry import Registry
from sesmon.schemas import STREAM_OF, TOPIC_ROOT, BadInput, parse_mqtt
from sesmon.settings import Settings

log = logging.getLogger("sesmon.ingest")

SUBSCRIPTIONS = [(f"{TOPIC_ROOT}/#", 1), (f"{VENDOR_ROOT}/#", 1)]
VENDOR_PREFIX = f"{VENDOR_ROOT}/"
OWN_OUTPUT_PREFIXES = (f"{TOPIC_ROOT}/alerts/", f"{TOPIC_ROOT}/hazards/")


class IngestBridge:
    def __init__(self, settings: Settings, registry: Registry | None, create_topics: bool = True) -> None:
        self.settings = settings
        self.registry = registry
        self.counters: Counter[str] = Counter()
        self.dead_reasons: Counter[str] = Counter()
        self._unacked = 0
        self._unacked_cv = threading.Condition()
        self._stop = threading.Event()
        self._drain_deadline = float("inf")  # set by stop(): how long the poll loop may still drain
        self._connected = threading.Event()
        if create_topics:
            ensure_topics(settings)
        self.producer = make_producer(settings)
        self.topics = {name: settings.topic(stream) for name, stream in STREAM_OF.items()}
        self.deadletter_topic = settings.topic("deadletter")
        self.client = self._make_client()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)

    # ------------------------------------------------------------------ MQTT side
    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.settings.mqtt_client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        client.subscribe(SUBSCRIPTIONS)
        self.counters["mqtt_connects"] += 1
        self._connected.set()
        log.info("MQTT connected, subscribed to %s", [t for t, _ in SUBSCRIPTIONS])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects and we resubscribe", reason)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received_ms = int(time.time() * 1000)
        topic = msg.topic
        if topic.startswith(OWN_OUTPUT_PREFIXES):
            # our own outgoing alerts and hazards come back through the wildcard; not input
            self.counters["own_output_skipped"] += 1
            self._ack(msg.mid, msg.qos)
            return
        self.counters["received"] += 1
        known = self.registry.kind_of if self.registry is not None else None
        try:
            canonical_topic, payload = topic, msg.payload
            if topic.startswith(VENDOR_PREFIX):  # a GB/T 24476-style terminal publishing directly
                if len(payload) > self.settings.max_payload_bytes:
                    raise BadInput("oversize", f"{len(payload)} bytes")
                try:
                    canonical_topic, payload = vendor_to_canonical(topic, payload)
                except VendorError as err:
                    raise BadInput(f"vendor_{err.reason}", str(err)) from None
                self.counters["vendor_mapped"] += 1
            env = parse_mqtt(
                canonical_topic,
                payload,
                received_ms,
                known_device=known,
                max_bytes=self.settings.max_payload_bytes,
            )
        except BadInput as bad:
            self._dead_letter(topic, msg, bad, received_ms)
            return
        if canonical_topic != topic:
            env.mqtt_topic = topic  # provenance: where the terminal really published
        self._produce(
            self.topics[env.type],
            env.key.encode(),
            dumps(env.model_dump(mode="json")),
            msg,
            "produced",
            timestamp=env.ts,
        )

    def _dead_letter(self, topic: str, msg: mqtt.MQTTMessage, bad: BadInput, received_ms: int) -> None:
        self.dead_reasons[bad.reason] += 1
        headers = [
            ("mqtt_topic", topic.encode()),
            ("reason", bad.reason.encode()),
            ("detail", bad.detail.encode()[:1000]),
            ("received_ms", str(received_ms).encode()),
        ]
        self._produce(
            self.deadletter_topic, topic.encode(), msg.payload, msg, "dead_lettered", headers=headers
        )

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        msg: mqtt.MQTTMessage,
        outcome: str,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int = 0,
        bounded: bool = True,
    ) -> None:
        with self._unacked_cv:
            while bounded and self._unacked >= self.settings.ingest_max_unacked and not self._stop.is_set():
                self.counters["backpressure_waits"] += 1
                self._unacked_cv.wait(0.1)
            self._unacked += 1
        mid, qos = msg.mid, msg.qos

        def delivered(err: KafkaError | None, _record: Message) -> None:
            if err is not None:
                if self._stop.is_set():
                    return  # dying: the MQTT ack stays owed and the broker will redeliver
                # librdkafka already retried for message.timeout.ms; try again, keep the MQTT ack owed
                self.counters["kafka_errors"] += 1
                log.error("Kafka refused a record for %s: %s; retrying", topic, err)
                self._release()
                self._produce(topic, key, value, msg, outcome, headers, timestamp, bounded=False)
                return
            self.counters[outcome] += 1
            self._ack(mid, qos)
            self._release()

        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key, headers=headers, timestamp=timestamp, on_delivery=delivered
                )
                return
            except BufferError:
                self.counters["producer_queue_full"] += 1
                time.sleep(0.005)

    def _release(self) -> None:
        with self._unacked_cv:
            self._unacked -= 1
            self._unacked_cv.notify_all()

    def _ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    # ------------------------------------------------------------------ Kafka side
    def _poll_loop(self) -> None:
        next_stats = time.monotonic()
        next_registry = time.monotonic() + 5
        while not self._stop.is_set() or self._unacked > 0:
            self.producer.poll(0.05)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + self.settings.stats_every_s
                self._publish_stats()
            if self.registry is not None and now >= next_registry:
                next_registry = now + 5
                try:
                    if self.registry.reload_if_changed():
                        log.info("registry reloaded: %d units", len(self.registry))
                except ValueError as exc:
                    log.error("registry changed but is invalid, keeping the old one: %s", exc)
            if self._stop.is_set() and now > self._drain_deadline:
                break

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.counters,
            "dead_letter_reasons": dict(self.dead_reasons),
            "unacked": self._unacked,
            "mqtt_connected": self._connected.is_set(),
        }

    def _publish_stats(self) -> None:
        self.producer.produce(
            self.settings.topic("pipeline"), key=b"ingest", value=stats_record("ingest", self.snapshot())
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> IngestBridge:
        host, port = self.settings.mqtt_host_port
        self._poller.start()
        self.client.connect_async(host, port, keepalive=self.settings.mqtt_keepalive_s)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def stop(self, drain_s: float = 10.0) -> None:
        """Deliver what Kafka owes (so those acks go out), then disconnect; unacked ones are redelivered."""
        self._drain_deadline = time.monotonic() + drain_s
        self.producer.flush(drain_s)
        self._stop.set()
        with self._unacked_cv:
            self._unacked_cv.notify_all()
        self._poller.join(drain_s + 1)
        self._publish_stats()
        self.producer.flush(2)
        self.client.disconnect()
        self.client.loop_stop()

    def crash(self) -> None:
        """Die as a killed process does, for tests: no flush, no DISCONNECT, no acks sent."""
        self._stop.set()
        self._drain_deadline = 0.0
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self._poller.join(2)


def run(settings: Settings, registry: Registry | None) -> None:
    """``sesmon ingest``: run until SIGINT/SIGTERM."""
    import signal

    bridge = IngestBridge(settings, registry).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    log.info("ingest: %s -> Kafka %s", settings.mqtt_url, settings.kafka_bootstrap)
    done.wait()
    bridge.stop()
