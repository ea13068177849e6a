"""MQTT -> Kafka bridge: validate every device message, dead-letter the bad ones, lose nothing.

Why it is built this way:
- QoS 1 with *manual* acks: the PUBACK for a message goes out only after Kafka confirmed its
  record (delivery report, acks=all). If the bridge dies first, the broker still holds the
  message in our persistent session (clean_session=False) and redelivers it. The MQTT client is
  ingest's own subscriber session (:mod:`ingest.mqtt_session`, ~3 µs a message where paho's
  receive and PUBACK path cost ~90; ``SESMON_INGEST_MQTT_CLIENT=paho`` keeps paho), and the
  common well-formed device message is validated by :mod:`sesmon.contract.fast_envelope`
  (the same envelope bytes as pydantic's, ~4x cheaper; anything unusual takes pydantic's way).
- Every message is accounted for: it becomes either a record on its stream or a dead letter
  with a reason, and is acked either way. Whatever a client sends cannot raise out of the
  MQTT callback (a raise there ends the network thread, the message is never acked, and
  the persistent session hands the same poison to every restart): an unexpected exception
  is itself dead-lettered as ``internal_error``. Limits (size, JSON depth, dead-letter size)
  are settings, and everything sent to the dead-letter topic is bounded to fit Kafka.
- Two threads, two jobs. The MQTT thread validates and produces; the ``kafka-poll`` thread
  serves delivery reports (acks), re-produces failed deliveries from a queue, publishes
  stats, reloads the registry and watches the other thread. Nothing that the poll thread
  must do to make progress ever waits on the MQTT thread, and a delivery callback never
  blocks: a full local queue (BufferError) is waited out in the MQTT thread, with the shared
  retry policy, while the poll thread keeps draining.
- What is owed is bounded (``ingest_max_unacked``): past it the MQTT thread waits, so the
  broker queues instead of us growing without limit (stack.md: paho's 65,535-id trap). The
  retry queue holds only records already counted there, so it is bounded too.
- A fatal Kafka client error (e.g. UNKNOWN_PRODUCER_ID after the broker lost its state) or
  a dead thread ends the process with status 70 (:func:`sesmon.runtime.health.fatal`); the
  supervisor restarts it, and whatever was not yet acked comes back from the session.
- Every connect subscribes again: after a broker restart the session is gone and a client
  that does not resubscribe loses data silently.
- Reports and dispatch actions may name their publisher in the topic (sesmon.contract.identity); the
  broker's ACL guarantees the name, and the bridge checks what that publisher may say.

Grouped records (the fast path, issue 9; format in :mod:`sesmon.contract.groups`):
- The worker pays ~190 µs of Faust machinery per Kafka record, so the device streams
  (telemetry, events, status, reports) leave as *groups*: one record per (topic, partition)
  whose value is a JSON array of envelopes, header ``sesmon-count``, no key, explicit
  ``partition = partition_of(device_id or the key used before, kafka_partitions)``, the
  murmur2 partition the keyed records had, so a unit's messages and the worker's ticks
  still meet. A group leaves when it holds ``ingest_group_max`` envelopes or
  ``ingest_group_max_bytes``, or its first envelope is ``ingest_group_linger_ms`` old: the
  paho thread produces full groups, the poll thread the ones that waited long enough (a lone
  reading at night goes out within about two lingers, not with the next reading). Both
  produce under one lock, so one partition's groups leave in order. Dead letters and
  dispatch actions (keyed by alert_id) stay single records.
- Every message of a group is PUBACKed, in order, from the group's delivery report. A group
  that failed is retried whole; one Kafka refuses for good (too large) is split in halves,
  down to single envelopes, where the dead-letter replacement applies. Counters count
  messages (``produced``, ``unacked``, ``kafka_errors``), ``groups`` counts grouped records.
- Order: a unit's envelopes are in arrival order within a group and groups of a partition
  are produced in order, but a retried group (or one that met a full local queue) may land
  after a later one. The worker orders a unit's readings by device time and ``seq``.

Several ingest processes (``SESMON_INGEST_SHARED_GROUP``): each subscription becomes
``$share/{group}/{filter}`` and the broker hands each message to one member, so the processes
split the traffic without producing anything twice. Each needs its own
``SESMON_MQTT_CLIENT_ID`` and must keep it: mosquitto (2.0) goes on routing a share of the
traffic to a stopped member's persistent session and delivers it when that client id comes
back, so a stopped process must be restarted (the supervisor does), not retired, or its queue
is lost once it passes ``max_queued_messages``. On a broker with ``use_username_as_clientid``
each process therefore needs its own account with the ingest ACL; the ACL itself needs no
``$share`` rule (mosquitto checks reads on the delivered topic).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ingest.archive import ArchiveJournal, ReceiveMark
from ingest.mqtt_session import MqttSession
from ingest.vendor import MALFORMED, VENDOR_ROOT, VendorError, vendor_to_canonical
from sesmon.contract.archive import default_archive_dir
from sesmon.contract.fast_envelope import device_envelope
from sesmon.contract.groups import GROUP_COUNT_HEADER, encode_group, partition_of
from sesmon.contract.identity import dispatch_refusal, principal_of, report_refusal
from sesmon.contract.registry import Registry
from sesmon.contract.schemas import (
    JSON_DEPTH_CEILING,
    STREAM_OF,
    TOPIC_ROOT,
    BadInput,
    Envelope,
    json_depth_exceeds,
    parse_mqtt,
)
from sesmon.runtime.health import Health, fatal
from sesmon.runtime.kafka import dumps, ensure_topics, exact_bytes, make_producer, stats_record
from sesmon.runtime.memory_report import start_memory_report
from sesmon.runtime.mqtt import connect_async, make_client
from sesmon.runtime.retry import Stopping, retrying
from sesmon.runtime.settings import Settings
from sesmon.runtime.signals import StopSignals

log = logging.getLogger("sesmon.ingest")

SUBSCRIPTIONS = [(f"{TOPIC_ROOT}/#", 1), (f"{VENDOR_ROOT}/#", 1)]
ACK_BARRIER_TOPIC = f"{TOPIC_ROOT}/_ingest_ack_barrier"  # never subscribed: see IngestBridge._ack_barrier
#: envelope types produced in groups: the device streams the worker reads (dispatch is keyed by alert_id)
GROUPED_TYPES = frozenset({"telemetry", "event", "status", "report"})
VENDOR_PREFIX = f"{VENDOR_ROOT}/"
OWN_OUTPUT_PREFIXES = (f"{TOPIC_ROOT}/alerts/", f"{TOPIC_ROOT}/hazards/")

#: dead-letter header and key bounds: an MQTT topic may be 65,535 bytes, a Kafka record may not grow so
TOPIC_HEADER_MAX = 1024
DETAIL_MAX = 1000
#: delivery errors that no retry can cure: the record is replaced by a smaller dead letter
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError._INVALID_ARG,
    }
)
RETRY_BACKOFF_MAX_S = 5.0
#: producer epoch bumps with nothing delivered in between that mean a livelock: the broker forgot
#: our producer id (Tansu after a restart) and librdkafka bumps the epoch and retries, forever
EPOCH_BUMPS_FATAL = 10
KAFKA_STATS_EVERY_MS = 1000
WATCHDOG_EVERY_S = 1.0
REGISTRY_EVERY_S = 5.0
POLL_MAX_S = 0.05  # the poll thread's longest sleep (its shortest: 1 ms)
ARCHIVE_WAIT_POLL_S = 0.002  # ... while delivered records wait for a journal write that failed
PARTITION_CACHE_MAX = 1_000_000  # device ids whose partition is remembered


def subscriptions(settings: Settings) -> list[tuple[str, int]]:
    """The bridge's topic filters: ``$share/{group}/...`` when several ingest processes split the traffic."""
    group = settings.ingest_shared_group
    if not group:
        return SUBSCRIPTIONS
    if any(c in group for c in "/+#"):
        raise ValueError(f"SESMON_INGEST_SHARED_GROUP {group!r} may not contain '/', '+' or '#'")
    return [(f"$share/{group}/{topic}", qos) for topic, qos in SUBSCRIPTIONS]


@dataclass(slots=True, eq=False)
class _Record:
    """One Kafka record owed for one MQTT message, and the PUBACK it earns once Kafka has it."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] | None
    timestamp: int
    mid: int
    qos: int
    outcome: str  # counter bumped on delivery: "produced" or "dead_lettered"
    mqtt_topic: bytes  # bounded, for a dead letter that replaces this record
    received_ms: int
    size: int  # of the MQTT payload
    reason: str | None = None  # dead-letter reason
    minimal: bool = False  # already the smallest dead letter there is
    partition: int | None = None  # a device-stream envelope: the partition whose group it joins


@dataclass(slots=True, eq=False)
class _Batch:
    """What one Kafka record carries: a group of envelopes for one partition, or a single record."""

    members: list[_Record]  # in arrival order; each earns its PUBACK when this record is delivered
    grouped: bool  # a JSON array of envelopes (explicit partition), else members[0] as it is (keyed)
    topic: str
    partition: int  # grouped only
    opened: float = 0.0  # monotonic time the group got its first envelope
    nbytes: int = 1  # size of the group's value so far: "[" + envelopes and their separators + "]"
    attempts: int = 0
    archive_mark: int = 0  # the raw journal's mark when first produced: its acks wait until it is written


class _Every:
    """Rate limit for log lines that an attacker or an outage could repeat a million times."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.next, self.skipped = seconds, 0.0, 0

    def due(self) -> bool:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + self.seconds
            return True
        self.skipped += 1
        return False


def _raw_topic(msg: mqtt.MQTTMessage) -> bytes:
    """The topic as bytes: ``msg.topic`` raises UnicodeDecodeError on invalid UTF-8."""
    raw = getattr(msg, "_topic", b"")
    return raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "backslashreplace")


def _bounded_text(text: str, limit: int) -> bytes:
    """UTF-8 of at most ``limit`` bytes, cut on a character boundary, never raising on odd text."""
    data = text.encode("utf-8", "backslashreplace")[:limit]
    return data.decode("utf-8", "ignore").encode()


class IngestBridge:
    def __init__(
        self,
        settings: Settings,
        registry: Registry | None,
        create_topics: bool = True,
        on_fatal: Callable[[str], None] | None = None,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        """``on_fatal`` ends the process (status 70) by default; tests in one process record instead.

        ``producer_config`` overrides librdkafka settings (tests: a tiny queue, a short timeout).
        """
        self.settings = settings
        self.registry = registry
        self.counters: Counter[str] = Counter()
        self.dead_reasons: Counter[str] = Counter()
        self.health = Health("ingest")
        self._on_fatal = on_fatal or partial(fatal, "ingest")
        self.fatal_error: str | None = None
        self._unacked = 0
        self._unacked_cv = threading.Condition()
        self._watchers = 0  # threads in wait_until(): only they need a wake-up per message taken
        self._retry_heap: list[tuple[float, int, _Batch]] = []
        self._retry_lock = threading.Lock()
        self._retry_order = itertools.count()
        self._stop = threading.Event()
        self._drain_deadline = float("inf")  # set by stop(): how long the poll loop may still drain
        self._connected = threading.Event()
        self._log_internal = _Every(10.0)
        self._log_kafka = _Every(5.0)
        if create_topics:
            ensure_topics(settings)
        self._last_kafka_error: str | None = None
        self._delivered_total = 0  # successful deliveries, for the stall checks
        self._epoch_mark: tuple[int, int] | None = None  # (producer epoch, deliveries) when last delivered
        self._last_delivery = time.monotonic()
        self._producer_config = producer_config or {}
        self._fenced = False  # set by a delivery report, acted on by the poll thread
        self._retired: list[Producer] = []  # fenced producers still owing delivery reports
        self.producer = self._new_producer()
        self.topics = {name: settings.topic(stream) for name, stream in STREAM_OF.items()}
        self.deadletter_topic = settings.topic("deadletter")
        # open groups by (topic, partition), oldest first (a dict keeps insertion order); one lock
        # for appending (paho thread), flushing on time (poll thread) and producing groups in order
        self._open: dict[tuple[str, int], _Batch] = {}
        self._groups_lock = threading.Lock()
        self._group_max = max(1, settings.ingest_group_max)
        self._group_max_bytes = settings.ingest_group_max_bytes
        self._linger_s = max(0.0, settings.ingest_group_linger_ms / 1000)
        self._partitions: dict[str, int] = {}  # device id -> partition (murmur2 in Python is not free)
        if create_topics:
            self._check_partitions()
        # the raw archive (issue 12): every received chunk journalled before what it holds is produced
        # (ingest/archive.py); the mark says where the message being handled is
        self.mark = ReceiveMark()
        self.archive: ArchiveJournal | None = None
        if settings.archive:
            self.archive = ArchiveJournal(
                settings.archive_dir or default_archive_dir(settings.data_dir),
                known_device=registry.kind_of if registry is not None else None,
                retention_days=settings.archive_retention_days,
                flush_s=settings.archive_flush_s,
            )
        self._archive_waits: deque[_Batch] = deque()  # delivered, acks waiting for a journal write
        self.subscriptions = subscriptions(settings)
        self.client = self._make_client()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self.health.watch_thread("kafka-poll", self._poller)

    def _new_producer(self) -> Producer:
        return make_producer(
            self.settings,
            error_cb=self._on_kafka_error,
            stats_cb=self._on_kafka_stats,
            **{"statistics.interval.ms": KAFKA_STATS_EVERY_MS, **self._producer_config},
        )

    def _check_partitions(self) -> None:
        """Groups go to ``partition_of(key, kafka_partitions)``: topics of another count would split units."""
        metadata = self.producer.list_topics(timeout=10)
        counts = {
            name: len(metadata.topics[name].partitions)
            for kind, name in self.topics.items()
            if kind in GROUPED_TYPES and name in metadata.topics
        }
        wrong = {name: n for name, n in counts.items() if n != self.settings.kafka_partitions}
        if wrong:
            raise ValueError(
                f"SESMON_KAFKA_PARTITIONS is {self.settings.kafka_partitions} but the topics have {wrong} "
                "partitions: set it to the topics' partition count"
            )

    def _replace_fenced_producer(self) -> None:
        """Poll thread: a fenced idempotent producer never delivers again; swap in a new one.

        Seen on Tansu under load: deliveries timed out, librdkafka bumped its epoch, and every
        later produce came back PRODUCER_FENCED (not fatal to librdkafka) -- a livelock with the
        process up. The new producer gets a fresh producer id; the old one's queue is purged, so
        its records come back through ``_delivered`` as errors and go to the retry queue.
        """
        self._fenced = False
        old, self.producer = self.producer, self._new_producer()
        self._epoch_mark = None
        log.warning("Kafka fenced our producer; replacing it, %d records go to the retry queue", len(old))
        self._retired.append(old)
        self._drain_retired()
        self.counters["producer_replaced"] += 1

    def _drain_retired(self) -> None:
        """Poll thread: purge replaced producers until empty (a paho produce may still race in)."""
        for old in list(self._retired):
            old.purge()
            old.poll(0)
            if len(old) == 0:
                self._retired.remove(old)

    # ------------------------------------------------------------------ MQTT side
    def _make_client(self) -> mqtt.Client | MqttSession:
        """The receive path (``SESMON_INGEST_MQTT_CLIENT``): ingest's own MQTT session, or paho."""
        settings = self.settings
        if settings.ingest_mqtt_client == "session":
            return MqttSession(
                settings,
                settings.mqtt_client_id,
                self.subscriptions,
                self._receive,
                clean_session=False,
                on_connected=self._on_session_connected,
                on_subscribed=lambda _codes: self._subscribed(),
                on_disconnected=self._on_session_disconnected,
                probe_topic=f"sesmon/probe/{settings.mqtt_client_id}",  # see MqttSession: stuck delivery
                mark=self.mark,
                journal=self.archive,
            )
        client = make_client(settings, settings.mqtt_client_id, clean_session=False, manual_ack=True)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        client.subscribe(self.subscriptions)
        self.counters["mqtt_connects"] += 1
        log.info("MQTT connected, subscribing to %s", [t for t, _ in self.subscriptions])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any = None) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT broker refused a subscription: %s (check the ACL of this user)", refused)
        self._subscribed()

    def _subscribed(self) -> None:
        self._connected.set()  # subscribed: from here on nothing published is missed
        with self._unacked_cv:
            self._unacked_cv.notify_all()  # for wait_until()

    def _on_session_connected(self, _session_present: bool) -> None:
        self.counters["mqtt_connects"] += 1
        log.info("MQTT connected, subscribing to %s", [t for t, _ in self.subscriptions])

    def _on_session_disconnected(self, reason: str) -> None:
        self._on_disconnect(None, None, None, reason)

    def _on_disconnect(self, _c: mqtt.Client | None, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting, then we resubscribe", reason)

    def _on_message(self, _client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's callback: must never raise (a raise ends paho's network thread)."""
        self._receive_whole(_raw_topic(msg), msg.payload, msg.mid, msg.qos)

    def _receive_whole(self, raw_topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        """A message that came without its packet's bytes (paho, handle_raw): timed and journalled here."""
        mark = self.mark
        mark.received_ms = int(time.time() * 1000)
        try:
            mark.seq = self.archive.add_message(mark.received_ms, raw_topic, payload) if self.archive else 0
        except Exception:  # a bug: the message is still handled (and dead-lettered, if it must be)
            log.exception("ingest: could not journal a message")
        self._receive(raw_topic, payload, mid, qos)

    def _receive(self, raw_topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        """Every message, from either receive path: must never raise (it would end the network thread).

        Its receive time and journal seq are in ``self.mark`` (the MQTT session's chunk)."""
        received_ms = self.mark.received_ms
        try:
            if self._stop.is_set():
                if self.archive is not None:
                    self.archive.note_skip(self.mark.seq)  # not acked: the broker resends it, archived then
                return  # shutting down: not acked, so the broker keeps it for the next session
            record = self._decide(raw_topic, payload, received_ms, mid, qos)
        except Exception as exc:
            record = self._internal_error(exc, raw_topic, payload, received_ms, mid, qos)
        if record is not None:
            self.counters["received"] += 1  # received = produced + dead-lettered, once delivered
            self._submit(record)

    def _internal_error(
        self, exc: Exception, raw_topic: bytes, payload: bytes, received_ms: int, mid: int, qos: int
    ) -> _Record:
        self.counters["internal_errors"] += 1
        if self._log_internal.due():
            log.exception(
                "ingest: unexpected %s on a message from %r; dead-lettered as internal_error "
                "(%d more not logged)",
                type(exc).__name__,
                raw_topic[:200],
                self._log_internal.skipped,
            )
            self._log_internal.skipped = 0
        detail = f"{type(exc).__name__}: {exc}"
        return self._dead_record(raw_topic, payload, "internal_error", detail, received_ms, mid, qos)

    def _decide(
        self, raw_topic: bytes, payload: bytes, received_ms: int, mid: int, qos: int
    ) -> _Record | None:
        """The record this message becomes (None: our own output, acked and skipped)."""
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"topic is not UTF-8: {exc}"
            return self._dead_record(raw_topic, payload, "bad_topic", detail, received_ms, mid, qos)
        if topic.startswith(OWN_OUTPUT_PREFIXES):
            # our own outgoing alerts and hazards come back through the wildcard; not input
            self.counters["own_output_skipped"] += 1
            if self.archive is not None:
                self.archive.note_skip(self.mark.seq)
            self._ack(mid, qos)
            return None
        settings = self.settings
        fast = device_envelope(
            topic,
            payload,
            received_ms,
            known_device=self.registry.kind_of if self.registry is not None else None,
            max_bytes=settings.max_payload_bytes,
            max_depth=settings.max_json_depth,
        )
        if fast is not None:  # the common well-formed device message: the same bytes, without pydantic
            self.counters["validated_fast"] += 1
            key, stream, value, timestamp = fast.device_id, fast.type, fast.value, fast.ts
        else:
            try:
                env = self._validate(topic, payload, received_ms)
            except BadInput as bad:
                return self._dead_record(raw_topic, payload, bad.reason, bad.detail, received_ms, mid, qos)
            key, stream, value, timestamp = env.key, env.type, dumps(env.model_dump(mode="json")), env.ts
            if self.archive is not None:  # the fast path's readings need no note: their bytes say it all
                self.archive.note_valid(self.mark.seq, raw_topic, timestamp, stream)
        # held until Kafka has it: up to ingest_max_unacked (20,000) records, 80 MB with orjson's buffers
        value = exact_bytes(value)
        partition = None
        if stream in GROUPED_TYPES:
            partition = self._partitions.get(key)
            if partition is None:
                if len(self._partitions) >= PARTITION_CACHE_MAX:
                    self._partitions.clear()
                partition = self._partitions[key] = partition_of(key.encode(), settings.kafka_partitions)
        return _Record(
            topic=self.topics[stream],
            key=key.encode(),
            value=value,
            headers=None,
            timestamp=timestamp,
            mid=mid,
            qos=qos,
            outcome="produced",
            mqtt_topic=raw_topic[:TOPIC_HEADER_MAX],
            received_ms=received_ms,
            size=len(payload),
            partition=partition,
        )

    def _validate(self, topic: str, payload: bytes, received_ms: int) -> Envelope:
        """Topic and bytes -> envelope, or BadInput with the reason: the whole rule book of ingest."""
        settings = self.settings
        if len(payload) > settings.max_payload_bytes:
            raise BadInput("oversize", f"{len(payload)} bytes > {settings.max_payload_bytes}")
        canonical_topic = topic
        if topic.startswith(VENDOR_PREFIX):  # a GB/T 24476-style terminal publishing directly
            depth = min(settings.max_json_depth, JSON_DEPTH_CEILING)
            if json_depth_exceeds(payload, depth):
                raise BadInput("too_deep", f"JSON nested deeper than {depth} levels")
            try:
                parts = topic.split("/")
                unit = self.registry.get(parts[2]) if self.registry is not None and len(parts) > 2 else None
                # escalators (33xx) number their service modes differently from lifts
                type_code = unit.type_code if unit is not None else ""
                canonical_topic, payload = vendor_to_canonical(topic, payload, type_code=type_code)
            except VendorError as err:
                if err.reason in MALFORMED:
                    raise BadInput("bad_vendor_payload", str(err)) from None
                raise BadInput(f"vendor_{err.reason}", str(err)) from None
            except Exception as exc:  # an adapter bug must not be a crash: the terminal's bytes are at fault
                raise BadInput("bad_vendor_payload", f"{type(exc).__name__}: {exc}") from None
            self.counters["vendor_mapped"] += 1
        known = self.registry.kind_of if self.registry is not None else None
        env = parse_mqtt(
            canonical_topic,
            payload,
            received_ms,
            known_device=known,
            max_bytes=settings.max_payload_bytes,
            max_depth=settings.max_json_depth,
            require_identity=settings.mqtt_require_identity,
        )
        if canonical_topic != topic:
            env.mqtt_topic = topic  # provenance: where the terminal really published
        if env.publisher is not None:
            self._authorise(env)
        return env

    def _firm_of(self, device_id: str | None) -> str | None:
        unit = self.registry.get(device_id) if self.registry is not None and device_id else None
        return (unit.firm_id or None) if unit is not None else None

    def _authorise(self, env: Envelope) -> None:
        """May this publisher say this? The broker's ACL vouches for the name in the topic."""
        assert env.publisher is not None
        principal = principal_of(env.publisher)
        if env.type == "report":
            firm_id = self._firm_of(env.device_id)
            refusal = report_refusal(principal, env.report or "", env.body, firm_id)
            claimed = env.body.get("firm_id")
            own_name = principal.role != "firm" or claimed == principal.id
            if refusal is None and env.report == "maintenance" and not own_name:
                refusal = f"{principal.username} reports maintenance in the name of firm {claimed!r}"
        else:  # dispatch: alert ids are {device_id}.{rule}.{opened_ms}
            unit = (env.alert_id or "").split(".", 1)[0]
            refusal = dispatch_refusal(principal, self._firm_of(unit))
        if refusal is not None:
            raise BadInput("unauthorised", refusal)

    def _dead_record(
        self, raw_topic: bytes, payload: bytes, reason: str, detail: str, received_ms: int, mid: int, qos: int
    ) -> _Record:
        """A dead letter that always fits Kafka: value, key and every header are bounded (and noted in
        the raw archive: the message being received is the one dead-lettered)."""
        if self.archive is not None:
            try:
                self.archive.note_dead(self.mark.seq, raw_topic, payload, reason, detail)
            except Exception:  # a bug: the dead letter itself must still go out
                log.exception("ingest: could not note a dead letter in the archive")
        limit = self.settings.deadletter_max_bytes
        topic = raw_topic[:TOPIC_HEADER_MAX]
        headers = [
            ("mqtt_topic", topic),
            ("reason", reason.encode()),
            ("detail", _bounded_text(detail, DETAIL_MAX)),
            ("received_ms", str(received_ms).encode()),
            ("size", str(len(payload)).encode()),
        ]
        if len(payload) > limit:
            headers.append(("truncated", b"1"))
        if len(raw_topic) > TOPIC_HEADER_MAX:
            headers.append(("topic_size", str(len(raw_topic)).encode()))
        return _Record(
            self.deadletter_topic,
            topic,
            payload[:limit],
            headers,
            0,
            mid,
            qos,
            "dead_lettered",
            topic,
            received_ms,
            len(payload),
            reason,
        )

    def _smaller(self, record: _Record, why: str) -> _Record | None:
        """What to send when Kafka refuses ``record`` for good (None: even the smallest was refused)."""
        if record.minimal:
            return None
        if record.outcome == "produced":  # a valid message Kafka will not take: its envelope, cut short
            value = record.value[: self.settings.deadletter_max_bytes]
            reason, topic = "kafka_refused", record.mqtt_topic
        else:  # a dead letter Kafka will not take: headers only, the smallest record there is
            reason, value, topic = record.reason or "kafka_refused", b"", record.mqtt_topic[:256]
        replacement = _Record(
            self.deadletter_topic,
            topic,
            value,
            [
                ("mqtt_topic", topic),
                ("reason", reason.encode()),
                ("detail", _bounded_text(f"Kafka refused the {record.outcome} record: {why}", DETAIL_MAX)),
                ("received_ms", str(record.received_ms).encode()),
                ("size", str(record.size).encode()),
            ],
            0,
            record.mid,
            record.qos,
            "dead_lettered",
            topic,
            record.received_ms,
            record.size,
            reason,
            minimal=record.outcome != "produced",
        )
        self.counters["kafka_refused"] += 1
        return replacement

    # ------------------------------------------------------------------ producing
    def _submit(self, record: _Record) -> None:
        """From the paho thread: wait for room, then add to a group or produce. Never raises."""
        try:
            with self._unacked_cv:
                while self._unacked >= self.settings.ingest_max_unacked and not self._stop.is_set():
                    self.counters["backpressure_waits"] += 1
                    self._unacked_cv.wait(0.1)
                if self._stop.is_set():
                    return  # not acked: redelivered to the next session
                self._unacked += 1
                if self._watchers:  # a notify per message costs the paho thread ~3 % when nobody waits
                    self._unacked_cv.notify_all()  # wakes wait_until() watching ``received``
            if record.partition is None:
                self._send_waiting([_Batch([record], False, record.topic, -1)])
            else:
                self._send_waiting(self._append(record))
        except Exception:  # a bug: the message stays unacked (and its slot owed: the watchdog sees a stall)
            self.counters["internal_errors"] += 1
            log.exception("ingest: could not hand a record to Kafka; the message stays unacked")

    def _append(self, record: _Record) -> list[_Batch]:
        """paho thread: add an envelope to its partition's open group and produce the group if it is due.

        Due: full (count or bytes; an envelope that would overflow the group starts the next one)
        or its first envelope older than the linger. Produced under the lock, so the groups of
        one partition leave in order; returns what met a full local queue, for the caller to wait out.
        """
        key = (record.topic, record.partition)
        size = len(record.value) + 1
        now = time.monotonic()
        assert record.partition is not None
        with self._groups_lock:
            group = self._open.get(key)
            due: list[_Batch] = []
            if group is not None and group.nbytes + size > self._group_max_bytes:
                due.append(self._open.pop(key))
                group = None
            if group is None:
                group = self._open[key] = _Batch([], True, record.topic, record.partition, now)
            group.members.append(record)
            group.nbytes += size
            if (
                len(group.members) >= self._group_max
                or group.nbytes >= self._group_max_bytes
                or now - group.opened >= self._linger_s
            ):
                due.append(self._open.pop(key))
            return self._send(due) if due else []

    def _flush_due(self, now: float, everything: bool = False) -> None:
        """Poll thread: produce the groups whose first envelope waited out the linger (all when stopping)."""
        with self._groups_lock:
            if not self._open:
                return
            keys = []
            for key, group in self._open.items():  # oldest first
                if not everything and now - group.opened < self._linger_s:
                    break
                keys.append(key)
            if not keys:
                return
            stuck = self._send([self._open.pop(key) for key in keys])
        if stuck:
            self.counters["producer_queue_full"] += 1
            for batch in stuck:  # in order, on a later round; poll() drains meanwhile
                self._queue_retry(batch, 0.05)

    def _poll_timeout(self) -> float:
        """How long poll() may wait: until the oldest open group is due, else one linger (1-50 ms)."""
        with self._groups_lock:
            oldest = next(iter(self._open.values()), None)
        idle = min(POLL_MAX_S, max(0.001, self._linger_s))
        if self._archive_waits:
            idle = min(idle, ARCHIVE_WAIT_POLL_S)  # acks wait for the archive writer: look again soon
        if oldest is None:
            return idle
        return min(idle, max(0.0, oldest.opened + self._linger_s - time.monotonic()))

    def _send(self, batches: list[_Batch]) -> list[_Batch]:
        """Produce in order, each refused one replaced (halves, a dead letter); never waits.

        Returns the batches that met a full local queue (BufferError), in order, not produced.
        """
        if batches and self.archive is not None:  # journalled before produced: acks need not wait
            mark = self.archive.write_pending()  # (ingest/archive.py)
            for batch in batches:
                batch.archive_mark = batch.archive_mark or mark
        pending = list(batches)
        while pending:
            batch = pending[0]
            try:
                self._produce(batch)
            except BufferError:
                return pending
            except KafkaException as exc:
                replacements = self._refused_now(batch, exc)
                if replacements is None:
                    self._release(len(batch.members))  # fatal: unacked, redelivered after the restart
                    replacements = []
                pending[:1] = replacements
                continue
            del pending[0]
        return []

    def _send_waiting(self, batches: list[_Batch]) -> None:
        """paho thread: produce; a full local queue is waited out with the shared policy while the poll
        thread drains it. Shutdown ends the wait: what is left is released, unacked, redelivered later."""
        pending = self._send(batches)
        if not pending:
            return
        self.counters["producer_queue_full"] += 1
        with self._unacked_cv:
            self._unacked_cv.notify_all()  # for wait_until()

        def again() -> None:
            nonlocal pending
            pending = self._send(pending)
            if pending:
                raise BufferError("local queue full")

        try:
            retrying(
                self._stop, on=BufferError, initial_s=0.005, max_wait_s=0.5, what="Kafka produce (queue full)"
            )(again)
        except (Stopping, BufferError):  # BufferError: the stop came between two attempts
            self._release(sum(len(b.members) for b in pending))

    def _produce(self, batch: _Batch) -> None:
        on_delivery = partial(self._delivered, batch)
        if batch.grouped:
            members = batch.members
            self.producer.produce(
                batch.topic,
                value=encode_group([m.value for m in members]),
                partition=batch.partition,
                headers=[(GROUP_COUNT_HEADER, str(len(members)).encode())],
                timestamp=min(m.timestamp for m in members),  # the oldest device time in it
                on_delivery=on_delivery,
            )
            return
        record = batch.members[0]
        self.producer.produce(
            record.topic,
            value=record.value,
            key=record.key,
            headers=record.headers,
            timestamp=record.timestamp,
            on_delivery=on_delivery,
        )

    def _refused_now(self, batch: _Batch, exc: KafkaException) -> list[_Batch] | None:
        """produce() raised: fatal ends the stage (None); a refused batch is replaced (``_replacements``)."""
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None or err.fatal() or err.code() == KafkaError._FATAL:
            self._fatal(f"Kafka producer refuses every record ({exc}); unacked messages are redelivered")
            return None
        return self._replacements(batch, err)

    def _replacements(self, batch: _Batch, err: KafkaError) -> list[_Batch] | None:
        """What to send instead of a batch Kafka refuses for good: its two halves, or for a single
        message a smaller dead letter (None, after a fatal report: not even the smallest was taken)."""
        members = batch.members
        if len(members) > 1:
            self.counters["groups_split"] += 1
            half = len(members) // 2
            return [
                _Batch(part, True, batch.topic, batch.partition, attempts=batch.attempts)
                for part in (members[:half], members[half:])
            ]
        smaller = self._smaller(members[0], f"{err.name()}: {err.str()}")
        if smaller is None:
            self._fatal(f"Kafka refuses even a minimal dead letter ({err.str()})")
            return None
        return [_Batch([smaller], False, smaller.topic, -1)]

    def _delivered(self, batch: _Batch, err: KafkaError | None, _msg: Message) -> None:
        """Delivery report, served by poll()/flush(): acks on success, queues a retry on failure.

        Never produces or waits here: a callback that blocks inside poll() stops the only
        thread that could drain the queue.
        """
        try:
            members = batch.members
            count = len(members)
            if err is None:
                archive = self.archive
                if archive is not None and (self._archive_waits or not archive.covers(batch.archive_mark)):
                    self.counters["archive_ack_waits"] += 1  # in order, behind earlier waits
                    self._archive_waits.append(batch)
                    return
                self._complete(batch)
                return
            if err.fatal():
                self._fatal(f"Kafka delivery failed with fatal error {err.name()}: {err.str()}")
                return
            if err.code() == KafkaError._FENCED or err.code() == KafkaError.PRODUCER_FENCED:
                self._fenced = True  # the poll thread replaces the producer; this record is retried
            if self._stop.is_set():
                self._release(count)  # dying: the MQTT acks stay owed and the broker will redeliver
                return
            self.counters["kafka_errors"] += count
            with self._unacked_cv:
                self._unacked_cv.notify_all()  # for wait_until()
            if self._log_kafka.due():
                log.error(
                    "Kafka refused a record for %s (%d messages): %s; queued for retry",
                    batch.topic,
                    count,
                    err,
                )
            if err.code() in PERMANENT_ERRORS:
                replacements = self._replacements(batch, err)
                if replacements is None:
                    self._release(count)
                    return
                for replacement in replacements:
                    self._queue_retry(replacement, 0.0)  # at once, and the halves in order
                return
            batch.attempts += 1
            self._queue_retry(batch)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("ingest: error in a Kafka delivery report")

    def _complete(self, batch: _Batch) -> None:
        """A delivered record whose messages are archived: ack them, count them, free their slots."""
        members = batch.members
        count = len(members)
        for member in members:  # in order: the broker sees the acks as the messages came
            self._ack(member.mid, member.qos)
        if batch.grouped:
            self.counters["produced"] += count
            self.counters["groups"] += 1
        else:
            record = members[0]
            self.counters[record.outcome] += 1
            if record.reason is not None:
                self.dead_reasons[record.reason] += 1
        self._delivered_total += count
        self._last_delivery = time.monotonic()
        self.health.progress()
        self._release(count)  # last: it wakes wait_until(), which then sees the counters

    def _release_archived(self) -> None:
        """Poll thread (and stop): complete the delivered records the archive writer has caught up with."""
        waits, archive = self._archive_waits, self.archive
        while waits and archive is not None and archive.covers(waits[0].archive_mark):
            self._complete(waits.popleft())

    def _queue_retry(self, batch: _Batch, delay: float | None = None) -> None:
        if delay is None:
            delay = min(RETRY_BACKOFF_MAX_S, 0.05 * 2 ** min(batch.attempts, 10)) * random.random()
        with self._retry_lock:
            heapq.heappush(self._retry_heap, (time.monotonic() + delay, next(self._retry_order), batch))

    def _drain_retries(self) -> None:
        """Poll thread: re-produce failed deliveries that are due; never blocks."""
        now = time.monotonic()
        while True:
            with self._retry_lock:
                if not self._retry_heap or self._retry_heap[0][0] > now:
                    return
                _, _, batch = heapq.heappop(self._retry_heap)
            stuck = self._send([batch])
            if stuck:  # full: try again on a later round, poll() drains meanwhile
                for left in stuck:
                    self._queue_retry(left, 0.05)
                return
            self.counters["kafka_retries"] += len(batch.members)

    def _release(self, count: int = 1) -> None:
        with self._unacked_cv:
            self._unacked -= count
            self._unacked_cv.notify_all()

    def _ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            try:
                self.client.ack(mid, qos)
            except Exception as exc:  # a connection gone: the broker redelivers, Kafka dedups nothing
                log.warning("MQTT ack of %d failed: %s", mid, exc)

    def _on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: fatal errors (an idempotent producer that lost its broker state) end us."""
        if err.fatal():
            self._fatal(f"Kafka producer fatal error {err.name()}: {err.str()}")
            return
        self.counters["kafka_client_errors"] += 1
        self._last_kafka_error = f"{err.name()}: {err.str()}"
        if self._log_kafka.due():
            log.warning("Kafka: %s (librdkafka keeps retrying)", err.str())

    def _on_kafka_stats(self, stats_json: str) -> None:
        """librdkafka's statistics: catch the idempotent producer's silent livelock.

        When the broker loses producer state (Tansu keeps nothing across a restart) librdkafka
        answers UNKNOWN_PRODUCER_ID by bumping its epoch and retrying, forever, without an
        error callback: ingest would stay up delivering nothing. Many bumps with no delivery
        in between is that livelock (a real Kafka that expired our id bumps once, then delivers);
        ending the process gets a fresh producer id.
        """
        try:
            eos = orjson.loads(stats_json).get("eos") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return
        epoch = eos.get("producer_epoch")
        if not isinstance(epoch, int):
            return
        mark = self._epoch_mark
        if mark is None or mark[1] != self._delivered_total or epoch < mark[0]:
            self._epoch_mark = (epoch, self._delivered_total)  # delivering: a new baseline
            return
        bumps = epoch - mark[0]
        if bumps >= EPOCH_BUMPS_FATAL and not self._stop.is_set():
            self._epoch_mark = (epoch, self._delivered_total)  # one report per livelock
            self._fatal(
                f"Kafka does not know this producer any more (UNKNOWN_PRODUCER_ID: producer epoch bumped "
                f"{bumps} times with nothing delivered; did the broker restart and lose its state?)"
            )

    def _fatal(self, message: str) -> None:
        if self.fatal_error is None:
            self.fatal_error = message
        self._on_fatal(f"{message}; MQTT messages not yet acked are redelivered after the restart")

    # ------------------------------------------------------------------ Kafka side
    def _poll_loop(self) -> None:
        try:
            self._poll_forever()
        except BaseException as exc:  # whatever it was, a stage without this thread is a zombie
            log.exception("ingest: the Kafka poll thread failed")
            self._fatal(f"the Kafka poll thread failed: {type(exc).__name__}: {exc}")

    def _poll_forever(self) -> None:
        now = time.monotonic()
        next_stats, next_registry, next_watch = now, now + REGISTRY_EVERY_S, now + WATCHDOG_EVERY_S
        while not self._stop.is_set() or self._unacked > 0:
            if self._archive_waits and self.archive is not None:  # a journal write failed (or is under way)
                self.archive.write_pending()
                self._release_archived()
            try:
                self.producer.poll(self._poll_timeout())
            except KafkaException as exc:  # librdkafka raises its fatal errors from poll() too
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or err.fatal():
                    name = err.name() if err is not None else "?"
                    self._fatal(f"Kafka producer fatal error {name}: {err.str() if err else exc}")
                    return
                self.counters["kafka_client_errors"] += 1
                log.error("Kafka poll: %s", exc)
            if self._fenced:
                self._replace_fenced_producer()
            if self._retired:
                self._drain_retired()
            now = time.monotonic()
            self._flush_due(now, everything=self._stop.is_set())  # stopping: what is open is owed too
            self._drain_retries()
            if self._stop.is_set():
                if now > self._drain_deadline:
                    break
                continue
            if now >= next_stats:
                next_stats = now + self.settings.stats_every_s
                self._publish_stats()
            if now >= next_watch:
                next_watch = now + WATCHDOG_EVERY_S
                self._watchdog(now)
            if self.registry is not None and now >= next_registry:
                next_registry = now + REGISTRY_EVERY_S
                self._reload_registry()

    def _watchdog(self, now: float) -> None:
        """A dead thread, or records owed and nothing delivered for too long: end, be restarted."""
        dead = self.health.dead_parts()
        if dead:
            self._fatal(f"thread(s) {', '.join(dead)} died")
            return
        if self.archive is not None:
            self.archive.watch()  # a folder that died starts again: the journal waits on disk meanwhile
        if self._unacked == 0:
            self._last_delivery = now  # nothing owed is not a stall
        stall_s = self.settings.ingest_stall_exit_s
        if stall_s > 0 and self._unacked > 0 and now - self._last_delivery > stall_s:
            self._last_delivery = now  # one report per stall (tests record instead of exiting)
            self._fatal(
                f"{self._unacked} records owed to Kafka and nothing delivered for {stall_s:.0f} s"
                f" (last Kafka error: {self._last_kafka_error or 'none'})"
            )

    def _reload_registry(self) -> None:
        assert self.registry is not None
        try:
            if self.registry.reload_if_changed():
                log.info("registry reloaded: %d units", len(self.registry))
        except Exception as exc:  # any reason at all: keep the registry in force, say why
            self.counters["registry_reload_failures"] += 1
            log.error("registry changed but cannot be used, keeping the old one: %s", exc)
            with self._unacked_cv:
                self._unacked_cv.notify_all()  # for wait_until()

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.counters,
            "dead_letter_reasons": dict(self.dead_reasons),
            "unacked": self._unacked,
            "retry_queue": len(self._retry_heap),
            "open_groups": len(self._open),
            "mqtt_connected": self._connected.is_set(),
            "archive_waiting_records": len(self._archive_waits),
            **(self.archive.snapshot() if self.archive is not None else {}),
            **self.health.snapshot(),
        }

    def _publish_stats(self) -> None:
        try:
            self.producer.produce(
                self.settings.topic("pipeline"), key=b"ingest", value=stats_record("ingest", self.snapshot())
            )
        except BufferError:
            self.counters["stats_skipped"] += 1  # full queue: the next second's record says the same
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.fatal() or err.code() == KafkaError._FATAL:
                self._fatal(f"Kafka producer is unusable ({exc})")

    # ------------------------------------------------------------------ lifecycle
    def start(self, connect_mqtt: bool = True) -> IngestBridge:
        """Connect and run. ``connect_mqtt=False`` runs only the Kafka side, for :meth:`handle_raw`."""
        if self.archive is not None:  # its folder folds crashed writers' journals first
            self.archive.start()
        if connect_mqtt and isinstance(self.client, MqttSession):
            self.health.watch_thread("mqtt-network", self.client.start().thread)  # it must not die
        elif connect_mqtt:
            connect_async(self.client, self.settings)
            network = getattr(self.client, "_thread", None)  # paho's loop thread: watched, it must not die
            if isinstance(network, threading.Thread):
                self.health.watch_thread("mqtt-network", network)
        self._poller.start()  # after every watch is registered: the poller reads them
        return self

    def handle_raw(self, topic: bytes, payload: bytes) -> None:
        """Feed one message to the receive path as the MQTT client would (QoS 0: no ack), without a broker.

        For the fuzz bench's in-process mode and tests, one thread at a time: topics here may be
        bytes no broker would pass on (invalid UTF-8, control characters).
        """
        self._receive_whole(topic, payload, 0, 0)

    def wait_until(self, predicate: Callable[[IngestBridge], bool], timeout: float = 30.0) -> bool:
        """Block until ``predicate(self)`` holds; re-checked on every message taken and record delivered."""
        with self._unacked_cv:
            self._watchers += 1
            try:
                return self._unacked_cv.wait_for(lambda: predicate(self), timeout)
            finally:
                self._watchers -= 1

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once connected and subscribed."""
        return self._connected.wait(timeout)

    def dead_parts(self) -> list[str]:
        return [] if self._stop.is_set() else self.health.dead_parts()

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking messages, deliver what Kafka owes (so those acks go out), then disconnect.

        Messages not acked by then are redelivered by the broker to the next session.
        """
        self._drain_deadline = time.monotonic() + drain_s
        self._stop.set()
        with self._unacked_cv:
            self._unacked_cv.notify_all()
        if self._poller.ident is not None:
            self._poller.join(drain_s + 1)
        else:
            self._flush_due(time.monotonic(), everything=True)  # never started: flush() below delivers
        self._publish_stats()
        self.producer.flush(2)
        if self.archive is not None:  # everything queued is written: the acks that waited for it go out
            self.archive.close()
            self._release_archived()
        if isinstance(self.client, MqttSession):  # the acks owed, the same UNSUBACK barrier, DISCONNECT
            self.client.close(barrier_topic=ACK_BARRIER_TOPIC)
            return
        self._ack_barrier()
        self.client.disconnect()
        self.client.loop_stop()

    def _ack_barrier(self, timeout: float = 2.0) -> None:
        """Wait until the broker has processed the PUBACKs sent so far, before DISCONNECT.

        An UNSUBSCRIBE of a topic we never subscribed changes nothing, and its UNSUBACK comes
        after the broker handled every packet before it. Without it a member of a shared
        subscription stopped right after its last acks saw some of them redelivered to its
        next session (mosquitto 2.0.11, a few per stop): messages Kafka already had.
        """
        done = threading.Event()
        self.client.on_unsubscribe = lambda *_args: done.set()
        if not self._connected.is_set():
            return
        result, _mid = self.client.unsubscribe(ACK_BARRIER_TOPIC)
        if result == mqtt.MQTT_ERR_SUCCESS and not done.wait(timeout):
            log.warning("MQTT: no UNSUBACK in %.0f s; stopping anyway (the broker may redeliver)", timeout)

    def crash(self) -> None:
        """Die as a killed process does, for tests: no flush, no DISCONNECT, no acks sent."""
        self._stop.set()
        self._drain_deadline = 0.0
        if isinstance(self.client, MqttSession):
            self.client.abort()
        else:
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        self._poller.join(2)
        if self.archive is not None:
            self.archive.abort()  # the journal stays as a kill leaves it
        self.producer.purge()  # what librdkafka still held dies with the process, it is not delivered later


def run(settings: Settings, registry: Registry | None) -> None:
    """``sesmon ingest``: run until SIGINT/SIGTERM; end with status 70 on a fatal error or a dead thread."""
    start_memory_report("ingest", settings)  # SESMON_TRACEMALLOC=1: what grows (off by default)
    bridge = IngestBridge(settings, registry).start()
    signalled = StopSignals().install()
    log.info("ingest: %s -> Kafka %s", settings.mqtt_endpoint.url(), settings.kafka_bootstrap)
    while not signalled.wait(WATCHDOG_EVERY_S):
        dead = bridge.dead_parts()
        if dead:
            fatal("ingest", f"thread(s) {', '.join(dead)} died")
    bridge.stop()
