"""The alerts stage: the emergency response loop, and one page per change even across crashes.

It consumes four Kafka streams: ``alerts`` (the rules' alert changes), ``dispatch`` (responders'
actions, validated by ingest), ``pipeline`` (the worker's event-time watermark, for the clock)
and ``hazards`` (hidden dangers, paged as before). The response loop (:mod:`alerts.incidents`)
turns them into incident changes: opened, resolved, an escalation, an SLA breach, an accident,
a dispatch action. Per batch of records, in this order:

1. apply every record (the event clock observes each device time), then ask the clock once;
2. append the changes to the audit log, then store the incidents and the changes (an outbox)
   in one SQLite transaction (:class:`alerts.incident_store.IncidentStore`);
3. only then may the Kafka offsets of those records be committed (their effects are durable);
4. page each change: webhooks are queued at once (their own threads, never in MQTT's way), the
   MQTT pages go to the pager thread; a change leaves the outbox once every page is settled.

A crash re-reads at most the uncommitted records (a no-op: the store already has their
effect) and pages the outbox again on start. MQTT delivery is idempotent page by page:

- every page (change × receiver topic) is recorded durably (:class:`DeliveryLog`) as soon as
  the broker's PUBACK for it is read (a burst of them in one transaction), before its slot frees;
- a page already recorded, or in flight right now, is never published again;
- at most ``alerts_max_inflight`` publishes await a PUBACK at any time, so a crash can
  repeat at most that many pages (the ones the broker had but we had not recorded);
- each page carries ``idempotency_key`` (the change id, or the hazard's key) so a receiver can
  drop the rare repeat itself.

Hidden-danger records have no incident: their Kafka offset is committed only past records whose
every page is recorded, as before. Refused dispatch actions go to the ``deadletter`` stream
(headers ``reason``/``detail`` as ingest writes them), and their offset waits for that record.
During an MQTT outage the stage holds its pages (never drops one), keeps running the loop and
the clocks, and still stops promptly on SIGTERM: unrecorded pages stay for the next run.

One instance per data directory: the audit log takes an exclusive lock (a second process on the
same directory refuses to start), and the incidents of a trapped passenger and of the rules'
``elevator.trapped_2h`` follow-up (different alert ids, so maybe different partitions) must meet
in the same store for the accident to be reported once.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from confluent_kafka import KafkaError, Message, TopicPartition
from pydantic import ValidationError

from alerts.audit import AuditLog, audit_dir, change_entry, delivery_entry, dispatch_entry
from alerts.delivery_log import DeliveryLog
from alerts.incident_store import IncidentStore
from alerts.incidents import ClockConfig, EventClock, Incident, IncidentChange, ResponseLoop
from alerts.mqtt_wire import ConnectionLost, PublisherSession, publish_packet
from alerts.routing import (
    BadRecord,
    Route,
    hazard_topic,
    mqtt_topic,
    receivers_for,
    route_change,
    route_hazard,
    webhook_record_topic,
)
from alerts.routing_file import RoutingWatcher, WebhookTarget
from alerts.webhooks import WebhookSender
from sesmon.contract.registry import Registry, RegistryError
from sesmon.contract.schemas import Alert, DispatchAction, Receiver
from sesmon.runtime.health import Health, fatal
from sesmon.runtime.kafka import (
    ensure_topics,
    make_consumer,
    make_producer,
    stats_record,
    subscribe_from_start,
)
from sesmon.runtime.memory_report import start_memory_report
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

#: Kafka records taken per batch at most (one store transaction and one clock check per batch)
CONSUME_BATCH = 500
#: how often completed offsets are committed (also after every poll)
COMMIT_EVERY_S = 0.5
#: on stop, how long to let publishes in flight be acknowledged (fewer repeats on the next run)
STOP_GRACE_S = 2.0
#: longest single wait of the main loop and the pager: the bound on how late they notice ``stop()``
WAIT_SLICE_S = 0.25
#: changes waiting for the pager beyond which the stage stops reading Kafka (an MQTT outage
#: must not fill memory; everything not read stays in Kafka, everything read is in the outbox)
MAX_QUEUED = 5000
#: the audit log is fsynced (and its HEAD rewritten) at most this often
AUDIT_SYNC_EVERY_S = 0.5
#: how often the stats count the open incidents by level (a walk over all of them)
CENSUS_EVERY_S = 10.0
#: routing answers kept (an incident's changes at one level page the same people); forgotten all at
#: once past it. A key holds a unit's place and owners, so at 50,000 a city's worth were ≈2 KB each
ROUTED_CACHE = 10_000
#: how often the registry file is looked at for a new version
REGISTRY_POLL_S = 2.0
#: longest a (re)connect to the MQTT broker may block the pager
CONNECT_TIMEOUT_S = 3.0
#: CPython's GIL switch interval in the stage process (the default is 5 ms; see ``run``)
SWITCH_INTERVAL_S = 0.0005
#: bytes of a page kept in a webhook dead letter (the rest is in the audit trail and the outbox)
DETAIL_MAX = 1024


@dataclass(eq=False)
class Owed:
    """What waits for deliveries: a Kafka record (committable once done) or an incident change in
    the outbox (marked delivered once done). Done = every page it owes was published or attached
    to one in flight (``dispatched``) and none is outstanding."""

    partition: tuple[str, int] | None = None
    offset: int = -1
    change_id: str | None = None
    outstanding: int = 0  # pages, webhook deliveries or dead letters not yet settled
    dispatched: bool = False
    published: bool = False  # it sent at least one page itself
    finished: bool = False  # counted once

    @property
    def done(self) -> bool:
        return self.dispatched and self.outstanding == 0


@dataclass(eq=False)
class Page:
    """One publish (idempotency key × receiver topic) awaiting its PUBACK."""

    key: str
    topic: str
    item_id: str
    waiters: list[Owed] = field(default_factory=list)
    payload: bytes = b""  # sent again after a reconnect


@dataclass(eq=False)
class Outgoing:
    """A change for the pager thread: its pages and who waits for them."""

    route: Route
    owner: Owed
    fresh: bool = False  # made by this process just now: no page of it can be recorded yet
    to_send: list[str] = field(default_factory=list)  # topics it still owes (set when its turn comes)
    next: int = 0  # how many of them are published


class OffsetTracker:
    """Per partition, the records taken in order: commit only past a prefix of completed ones."""

    def __init__(self) -> None:
        self._by_partition: dict[tuple[str, int], deque[Owed]] = {}

    def add(self, record: Owed) -> None:
        assert record.partition is not None
        self._by_partition.setdefault(record.partition, deque()).append(record)

    def committable(self) -> list[TopicPartition]:
        """Next offsets to commit for partitions whose completed prefix grew (pops that prefix)."""
        out = []
        for (topic, partition), records in self._by_partition.items():
            last = None
            while records and records[0].done:
                last = records.popleft().offset
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
        # one lock for the bookkeeping shared by the main loop, the pager and the webhooks' threads
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str], Page] = {}  # (key, topic) -> page awaiting PUBACK
        self._by_mid: dict[int, Page] = {}
        self._acked: list[Page] = []  # acknowledged by the broker, not yet recorded (still in flight)
        self._current: Outgoing | None = None  # the change the pager is publishing
        self._queue: deque[Outgoing] = deque()  # changes for the pager, in order
        self._delivered_ids: list[str] = []  # outbox changes fully paged: marked in the store in batches
        self._hook_owners: dict[tuple[str, str, str], Owed] = {}  # (key, receiver, url) -> its change
        # webhook audit entries (kind, data, event_at) and dead letters (a callable) to write, in order
        self._side: deque[tuple[str, dict[str, Any], int | None] | Callable[[], None]] = deque()
        self.offsets = OffsetTracker()
        self.connected = threading.Event()
        self._journal: IO[bytes] | None = None
        self._journal_lines: list[bytes] = []  # pages queued since the last wake (main thread)
        self._next_stats = self._next_commit = self._next_audit_sync = self._next_registry = 0.0
        self._topics_thread: threading.Thread | None = None
        self._pager = threading.Thread(target=self._pager_loop, name="alerts-pager", daemon=True)
        self._started = False
        self._broker = settings.mqtt_endpoint.url()  # never with credentials: it is logged
        self._census: dict[str, Any] = {}
        self._routed: dict[tuple[Any, ...], list[Receiver]] = {}  # _receivers' answers, per table version
        self._routed_version: tuple[int, int] = (0, 0)
        self._routes_on_state = False
        self._prefetched: dict[str, Incident | None] = {}  # this batch's incidents read from the store
        self._next_census = 0.0
        self._last_error_log = 0.0

        ensure_topics(settings)
        data = settings.data_dir
        self.deliveries = DeliveryLog(data / "alerts" / "delivered.sqlite")
        self.log_path = data / "alerts" / "alerts.jsonl"
        self.audit = AuditLog(audit_dir(data))  # one writer per directory: a second stage stops here
        self.store = IncidentStore.in_data_dir(data)
        self.registry = Registry.load(settings.registry) if settings.registry else None
        self.routing = RoutingWatcher.from_settings(settings)  # a broken file at start: no start
        self.clock = EventClock(max_ahead_ms=int(settings.alerts_clock_max_ahead_s * 1000))
        self.clock.restore(self.store.clock_state())
        self.loop = ResponseLoop(
            ClockConfig.from_settings(settings),
            self.store.load_open(),
            resolver=self._receivers,
            reported_accidents=self.store.accident_keys(),
            lookup=self._lookup,
            keep_idle=False,  # the store has every incident: only those whose clocks run stay in memory
        )
        self.webhooks = WebhookSender.from_settings(
            settings,
            on_result=self._on_hook_result,
            on_dead=self._on_hook_dead,
            on_attempt=self._on_hook_attempt,
        )
        self.topics = {name: settings.topic(name) for name in ("alerts", "hazards", "dispatch", "pipeline")}
        self.deadletter_topic = settings.topic("deadletter")
        # "sesmon-alerts" for the default prefix; a test's own prefix gets its own group. Static
        # membership (the instance id is the MQTT client id, unique per instance like it): a
        # restarted stage takes its partitions back at once instead of waiting for the dead
        # member's session to expire (on Tansu 8 s instead of 18 s after a kill -9).
        self.consumer = make_consumer(
            settings,
            f"{settings.topic_prefix}-alerts",
            list(self.topics),
            error_cb=self._on_kafka_error,
            **{
                "group.instance.id": settings.alerts_mqtt_client_id,
                "fetch.wait.max.ms": max(1, settings.alerts_fetch_wait_ms),
            },
        )
        subscribe_from_start(
            self.consumer, list(self.topics.values()), on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.stats_producer = make_producer(
            settings, **{"enable.idempotence": False, "acks": "1", "error_cb": self._on_kafka_error}
        )
        # dead letters: acks=all (a refused action's offset is committed only once Kafka has it)
        self.producer = make_producer(settings, error_cb=self._on_kafka_error)
        # the pager thread alone drives the MQTT connection (alerts/mqtt_wire.py, clean session):
        # what it still owes is in its in-flight map (re-sent after a reconnect) or, after a
        # restart, in the outbox and the delivery record
        self.session = PublisherSession(
            settings, settings.alerts_mqtt_client_id, connect_timeout_s=CONNECT_TIMEOUT_S
        )
        self._next_mid = 0
        self._pager_rounds = 0  # select rounds of the pager
        self._pager_cpu_s = 0.0  # CPU time of the pager thread so far
        self._out: list[bytes] = []  # PUBLISH packets of this round, written together
        self._wake_r, self._wake_w = socket.socketpair()  # the main loop wakes the pager's select
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.health.watch_thread("pager", self._pager)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AlertPublisher:
        self._started = True
        return self

    def stop(self) -> None:
        """Ask the stage to end (safe from a signal handler: it only sets an event)."""
        self._stop.set()

    def idle(self) -> bool:
        """Nothing queued for the pager and no page awaiting its PUBACK (tests and benches wait on it)."""
        with self._lock:
            return not self._queue and self._current is None and not self._in_flight

    def run_forever(self) -> None:
        self.health.watch_thread("main", threading.current_thread())
        with self.log_path.open("ab") as journal:
            self._journal = journal
            self._pager.start()
            try:
                pending = self.store.pending_changes()
                if pending:
                    log.info("paging %d stored changes not yet fully delivered", len(pending))
                for change in pending:
                    self._page(change, fresh=False)
                self._wake()
                while not self._stop.is_set():
                    self._apply(self._take_batch())
                    self._tick()
            finally:
                self._shutdown()

    def _shutdown(self) -> None:
        """Let in-flight pages be acknowledged briefly, commit what is complete, close everything."""
        self._wake()
        if self._pager.is_alive():  # it lets in-flight pages be acknowledged first (STOP_GRACE_S)
            self._pager.join(STOP_GRACE_S + CONNECT_TIMEOUT_S + 1)
        self._commit(asynchronous=True)
        with self._lock:
            in_flight, uncommitted, queued = len(self._in_flight), self.offsets.pending(), len(self._queue)
        self._publish_stats()  # the last record, while every part still runs
        self.webhooks.stop(1.0)  # undelivered ones stay in the outbox for the next run
        self._flush_side()
        self._flush_delivered()
        self.consumer.close()
        self.stats_producer.flush(2)
        self.producer.flush(2)
        self.audit.close()
        self.store.close()
        self._wake_r.close()
        self._wake_w.close()
        log.info(
            "alerts stage stopped; %d pages unacknowledged, %d changes not yet paged, %d records not "
            "fully handled: the next run pages and re-reads them",
            in_flight,
            queued,
            uncommitted,
        )

    # ------------------------------------------------------------------ Kafka side

    def _take_batch(self) -> list[Message]:
        """The records available now (up to a batch), waiting at most a slice for the first one."""
        with self._lock:
            backlog = len(self._queue)
        if backlog >= MAX_QUEUED:  # the pager is behind (MQTT away): let Kafka hold the rest
            self.counters["paused_reading"] += 1
            time.sleep(WAIT_SLICE_S)  # not _stop.wait(): stop() is called from a signal handler
            return []
        first = self.consumer.poll(WAIT_SLICE_S)
        if first is None:
            return []
        # consume() with a timeout waits for a FULL batch; with 0 it takes what was fetched
        return [first, *self.consumer.consume(CONSUME_BATCH - 1, 0)]

    def _apply(self, records: list[Message]) -> None:
        """One batch: apply, ask the clock, audit, store (then offsets may go), then page."""
        changes: list[IncidentChange] = []
        settled: list[Owed] = []
        decoded: list[tuple[Owed, Any]] = []
        for record in records:  # decode first: the incidents the batch needs are read in one query
            if record.error():
                self._on_record_error(record.error())
                continue
            owner = Owed((record.topic(), record.partition()), record.offset())
            with self._lock:
                self.offsets.add(owner)
            topic = record.topic()
            try:
                if topic == self.topics["alerts"]:
                    decoded.append((owner, self._decode_alert(record.value())))
                elif topic == self.topics["dispatch"]:
                    decoded.append((owner, self._decode_dispatch(record.value())))
                elif topic == self.topics["pipeline"]:
                    self._on_pipeline_record(record.value())
                    settled.append(owner)
                else:  # hazards: paged as they are, the record waits for its pages
                    self._enqueue(route_hazard(record.value()), owner)
            except BadRecord as exc:
                self._log_rarely("%s", exc)
                self.counters[exc.counter] += 1
                if topic == self.topics["hazards"]:
                    with self._lock:
                        owner.dispatched = True
                else:
                    settled.append(owner)
        self._prefetch(item.alert_id if isinstance(item, Alert) else item[1].alert_id for _, item in decoded)
        for owner, item in decoded:
            if isinstance(item, Alert):
                changes += self._on_alert(item)
            else:
                changes += self._on_dispatch(*item, owner)
            settled.append(owner)
        self._prefetched.clear()
        changes += self.loop.on_clock(self.clock.now())
        if changes or records:
            try:
                self.audit.append_batch(change_entry(change) for change in changes)
                self.store.commit(self.loop, changes, self.clock.state())
            except Exception as exc:  # state we cannot store would be lost, or paged without a record
                fatal("alerts", f"cannot write the incident store or the audit log: {exc!r}")
        with self._lock:
            for owner in settled:
                owner.dispatched = True  # its effects are stored: the offset may be committed
        for change in changes:
            self._page(change, fresh=True)
        if changes or records:
            self._wake()

    def _prefetch(self, alert_ids: Any) -> None:
        """The stored incidents the batch may need (closed ones, not in memory): one query, not
        one per new alert. An id not found is marked so the loop does not ask the store again."""
        unknown = {a for a in alert_ids if a not in self.loop.open}
        if unknown:
            found = self.store.get_many(unknown)
            self._prefetched = {a: found.get(a) for a in unknown}

    def _lookup(self, alert_id: str) -> Incident | None:
        """The loop's way to an incident no longer in memory (closed): the batch's prefetch first."""
        if alert_id in self._prefetched:
            return self._prefetched[alert_id]
        return self.store.get(alert_id)

    @staticmethod
    def _decode_alert(value: bytes) -> Alert:
        try:
            return Alert.model_validate_json(value)
        except ValidationError as exc:
            raise BadRecord("bad_alert_records", f"undecodable alert record: {exc}") from exc

    @staticmethod
    def _decode_dispatch(value: bytes) -> tuple[dict[str, Any], DispatchAction]:
        try:
            envelope = orjson.loads(value)
            return envelope, DispatchAction.model_validate(envelope["body"])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise BadRecord("bad_dispatch_records", f"undecodable dispatch record: {exc!r}") from exc

    def _on_alert(self, alert: Alert) -> list[IncidentChange]:
        self.clock.observe(alert.changed_at)
        changes = self.loop.on_alert(alert)
        if not changes:
            self.counters["duplicates_dropped"] += 1  # a repeat of a change already made (re-read, replay)
        for change in changes:
            change.evidence = alert.evidence
        return changes

    def _on_dispatch(
        self, envelope: dict[str, Any], action: DispatchAction, owner: Owed
    ) -> list[IncidentChange]:
        self.clock.observe(action.ts)
        result = self.loop.on_dispatch(action)
        self.counters[f"dispatch_{result.status}"] += 1
        if result.status == "applied":
            return result.changes
        kind, data, event_at = dispatch_entry(action, result.status, result.reason, result.detail)
        self.audit.append(kind, data, event_at=event_at)
        if result.status == "refused":
            self.counters[f"dispatch_refused_{result.reason}"] += 1
            headers = [
                ("mqtt_topic", str(envelope.get("mqtt_topic", "")).encode()),
                ("reason", str(result.reason).encode()),
                ("detail", result.detail.encode()[:DETAIL_MAX]),
                ("received_ms", str(envelope.get("received_ms", "")).encode()),
                ("stage", b"alerts"),
            ]
            if envelope.get("publisher"):
                headers.append(("publisher", str(envelope["publisher"]).encode()))
            body = orjson.dumps(envelope["body"])
            self._dead_letter(str(envelope.get("mqtt_topic", "")).encode(), body, headers, owner)
        return []

    def _on_pipeline_record(self, value: bytes) -> None:
        """The worker's watermark (highest device time it evaluated) moves the event clock."""
        try:
            stats = orjson.loads(value)
        except ValueError:
            return
        if isinstance(stats, dict) and stats.get("stage") == "streams":
            watermark = stats.get("event_time_ms")
            if isinstance(watermark, int) and watermark > 0:
                self.clock.observe(watermark)

    def _receivers(self, incident: Incident) -> list[Receiver]:
        """The routing file's receivers of an incident as it stands after a change.

        The rules' original alert (``alert_view``) goes in, so ``regulator: rule`` means what the
        catalogue said. ``sla_breach`` and ``accident`` hold only for the change that records them:
        the regulator is told of the breach and of the accident, not of every later step.
        """
        last = incident.timeline[-1].what if incident.timeline else ""
        sla_now = incident.sla_breach and last == "sla_breach"
        accident_now = incident.accident and not incident.followup and last == "accident"
        table = self.routing.table
        version = (id(table), self.registry.mtime_ns if self.registry is not None else 0)
        if version != self._routed_version or len(self._routed) >= ROUTED_CACHE:
            self._routed, self._routed_version = {}, version
            self._routes_on_state = any(r.match.state is not None for r in table.doc.routes)
        # the answer depends only on what the table reads (RoutingTable.receivers): the alert's
        # kind, level, rule, state, district, firm, unit and rule marks, the registry unit's place
        # and owners, and the escalation flags. Keyed on those, not on the alert: every alert of a
        # rule at a unit shares one answer (a new alert no longer costs an alert_view and a routing)
        state = incident.alert_state if self._routes_on_state else ""
        unit = self.registry.get(incident.device_id) if self.registry is not None else None
        key = (
            incident.kind,
            incident.level,
            incident.rule,
            incident.district,
            incident.firm_id,
            incident.user_unit_id,
            tuple((r.kind, r.id) for r in incident.rule_receivers),
            (unit.district, unit.firm_id, unit.user_unit_id, unit.lat, unit.lon) if unit else None,
            incident.escalation,
            sla_now,
            accident_now,
            state,
        )
        receivers = self._routed.get(key)
        if receivers is None:
            receivers = self._routed[key] = table.receivers(
                incident.alert_view(),
                unit,
                escalation=incident.escalation,
                sla_breach=sla_now,
                accident=accident_now,
            )
        return receivers

    def _dead_letter(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]], owner: Owed) -> None:
        """A refused record to the dead-letter stream; ``owner`` (its Kafka record) waits for it."""
        with self._lock:
            owner.outstanding += 1

        def produce() -> None:
            self.producer.produce(
                self.deadletter_topic, key=key, value=value, headers=headers, on_delivery=done
            )

        def done(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:  # librdkafka gave up (Kafka away for long): again, the offset waits
                self.counters["dead_letter_retries"] += 1
                self._log_rarely("dead letter not written (%s); retrying", err)
                self._produce(produce)
                return
            self.counters["dead_lettered"] += 1
            self._settle(owner)

        self._produce(produce)

    def _produce(self, produce: Callable[[], None]) -> None:
        """``produce()`` under the shared policy while the producer's local queue is full."""

        def attempt() -> None:
            try:
                produce()
            except BufferError:
                self.producer.poll(0.1)
                raise

        with contextlib.suppress(Stopping):  # the record stays uncommitted and is re-read next run
            call_with_retry(attempt, self._stop, on=BufferError, max_wait_s=1.0, what="dead letter")

    # ------------------------------------------------------------------ paging

    def _page(self, change: IncidentChange, fresh: bool) -> None:
        """Queue a change's webhooks (at once, on their own threads) and its MQTT pages (the pager)."""
        route = route_change(change)
        owner = Owed(change_id=change.change_id)
        targets = [t for r in change.receivers for t in self.routing.table.webhooks_for(r)]
        if targets and not fresh:  # paged again after a restart: not where it was delivered already
            missing = set(self.deliveries.missing(route.key, [webhook_record_topic(t) for t in targets]))
            targets = [t for t in targets if webhook_record_topic(t) in missing]
        with self._lock:
            owner.outstanding += len(targets)
            for target in targets:
                self._hook_owners[(route.key, target.receiver, target.url)] = owner
        for target in targets:
            self.webhooks.send(target, route.key, route.payload)
        self._enqueue(route, owner, fresh)

    def _enqueue(self, route: Route, owner: Owed, fresh: bool = False) -> None:
        """For the pager (the caller wakes it once per batch: ``_wake``), after its journal line."""
        self._journal_lines.append(route.payload)
        with self._lock:
            self._queue.append(Outgoing(route, owner, fresh))

    def _wake(self) -> None:
        """Write the batch's journal lines, then wake the pager to page them."""
        if self._journal_lines and self._journal is not None:
            # the structured log, written ahead of the pages: a crash may repeat a line, never lose one
            self._journal.write(b"\n".join(self._journal_lines) + b"\n")
            self._journal.flush()
        self._journal_lines.clear()
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    def _pager_loop(self) -> None:
        """The pager thread: it alone talks to the broker. Per round it publishes the queued
        changes' pages while the in-flight bound allows (one write), reads every PUBACK waiting
        (one read) and records those pages (one transaction, one audit write).

        Why one thread and bulk I/O: with paho's own network thread every page crossed between two
        threads twice, and paho spends a system call per packet written and three per packet read;
        each is a turn at the GIL given away to the busy main loop and waited for again. Paging
        stalled near 1,400-2,000 pages/s on this project's machine.
        """
        try:
            self._mqtt_loop()
        except Stopping:
            pass
        except Exception as exc:  # a page we cannot deliver or record would be lost silently
            fatal("alerts", f"pager failed: {exc!r}")
        finally:
            self.session.close()

    def _mqtt_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        registered: socket.socket | None = None  # the broker socket the selector watches
        grace_until: float | None = None
        try:
            while True:
                if self._stop.is_set():  # no new pages; let those in flight be acknowledged a moment
                    grace_until = grace_until or time.monotonic() + STOP_GRACE_S
                    with self._lock:
                        waiting = bool(self._in_flight)
                    if not waiting or self.session.sock is None or time.monotonic() >= grace_until:
                        return
                if registered is not None and self.session.sock is not registered:  # lost
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        sel.unregister(registered)
                    registered = None
                if self.session.sock is None:
                    self._connect()  # under the shared retry policy; Stopping ends the loop
                    continue
                if registered is None:
                    registered = self.session.sock
                    sel.register(registered, selectors.EVENT_READ)
                try:
                    if grace_until is None:
                        self._fill_window()
                    for key, _mask in sel.select(WAIT_SLICE_S):
                        if key.fileobj is self._wake_r:
                            with contextlib.suppress(BlockingIOError, OSError):
                                self._wake_r.recv(4096)
                        else:
                            for mid in self.session.read():
                                page = self._by_mid.pop(mid, None)
                                if page is not None:
                                    self._acked.append(page)
                    self._record_acked()
                    self.session.keepalive()
                    self._pager_rounds += 1
                    self._pager_cpu_s = time.thread_time()  # the pager's own cost, for the stats
                except ConnectionLost as exc:
                    self._lost(exc)
        finally:
            sel.close()

    def _connect(self) -> None:
        """(Re)connect under the shared retry policy (backoff with jitter) until it works or we stop,
        then send again what the broker had not acknowledged (marked DUP)."""
        self.connected.clear()

        def attempt() -> None:
            try:
                self.session.connect()
            except OSError as exc:  # refused, unreachable, TLS, credentials: counted, then again
                self.counters["waiting_for_mqtt"] += 1
                self._log_rarely("cannot use the MQTT broker %s (%s); holding alerts", self._broker, exc)
                raise

        call_with_retry(attempt, self._stop, on=OSError, initial_s=0.25, max_wait_s=10.0, what="MQTT connect")
        log.info("connected to the MQTT broker %s", self._broker)
        self.connected.set()
        if self._by_mid:
            self.counters["mqtt_resent"] += len(self._by_mid)
            try:
                self.session.send(
                    [publish_packet(mid, p.topic, p.payload, dup=True) for mid, p in self._by_mid.items()]
                )
            except ConnectionLost as exc:
                self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        """The connection is gone: what is in flight stays so, and is sent again after the reconnect."""
        self.connected.clear()
        self.session.close(graceful=False)
        self._out.clear()  # never written: their pages are in _by_mid and go out again on reconnect
        self.counters["mqtt_disconnects"] += 1
        if not self._stop.is_set():
            self._log_rarely("MQTT connection lost (%s); holding alerts until it is back", exc)

    def _fill_window(self) -> None:
        """Publish queued pages until the in-flight bound is reached or nothing is left: one write."""
        try:
            self._fill()
        finally:
            if self._out and self.session.sock is not None:
                out, self._out = self._out, []
                self.session.send(out)

    def _fill(self) -> None:
        while len(self._in_flight) < self.max_inflight:
            item = self._current
            if item is None:
                with self._lock:
                    if not self._queue:
                        return
                    item = self._current = self._queue.popleft()
                self._prepare(item)
            if item.next < len(item.to_send):
                topic = item.to_send[item.next]
                item.next += 1
                self._publish(item.route, topic, item.owner)
                continue
            with self._lock:
                item.owner.dispatched = True
                if not item.to_send:
                    self.counters["duplicates_dropped"] += 1
                else:
                    self.counters[item.route.counter] += 1
                    if len(item.to_send) < len(item.route.topics):
                        self.counters["resumed_partial"] += 1
                self._check_done(item.owner)
                self._current = None

    def _prepare(self, item: Outgoing) -> None:
        """Which of a change's pages still need publishing: not recorded, not in flight right now."""
        route, owner = item.route, item.owner
        # a page in flight now: wait for it instead of sending again (checked before the record,
        # because a page leaves the in-flight map only after its row is written)
        with self._lock:
            not_in_flight = []
            for topic in route.topics:
                page = self._in_flight.get((route.key, topic))
                if page is None:
                    not_in_flight.append(topic)
                else:
                    page.waiters.append(owner)
                    owner.outstanding += 1
        # a change made by this process just now has no page in the record yet (its id is new):
        # one lookup per change saved; a re-paged or re-read one is looked up
        item.to_send = not_in_flight if item.fresh else self.deliveries.missing(route.key, not_in_flight)

    def _settle(self, owner: Owed) -> None:
        with self._lock:
            owner.outstanding -= 1
            self._check_done(owner)

    def _check_done(self, owner: Owed) -> None:
        """(lock held) ``owner`` may have become done: count it, and let its outbox entry go."""
        if owner.finished or not owner.done:
            return
        owner.finished = True
        if owner.change_id is not None:
            self._delivered_ids.append(owner.change_id)
        if owner.published:
            self.counters["delivered"] += 1

    # ------------------------------------------------------------------ webhooks (their threads)

    def _on_hook_attempt(
        self, target: WebhookTarget, key: str, attempt: int, status: int | None, error: str
    ) -> None:
        outcome = "ok" if status is not None and 200 <= status < 300 else "failed"
        detail = f"http_{status}" if status is not None else error
        self._side.append(
            delivery_entry("webhook", target.receiver, key, outcome, attempt=attempt, detail=detail)
        )

    def _on_hook_result(
        self, target: WebhookTarget, key: str, outcome: str, _attempts: int, _status: int | None
    ) -> None:
        if outcome != "delivered":
            return  # a failure settles in _on_hook_dead, which knows the reason
        self.deliveries.record(key, webhook_record_topic(target), key.split("|", 1)[0])
        self.counters["webhooks_delivered"] += 1
        self._hook_settled(target, key)

    def _on_hook_dead(self, target: WebhookTarget, key: str, body: bytes, reason: str) -> None:
        tag = reason.split(":", 1)[0]
        self.counters[f"webhook_dead_{tag}"] += 1
        entry = delivery_entry("webhook", target.receiver, key, "dead_letter", attempt=0, detail=reason)
        if tag == "stopped":  # the stage stops: the change stays in the outbox, the next run retries
            self._side.append(entry)
            with self._lock:
                self._hook_owners.pop((key, target.receiver, target.url), None)
            return

        def write() -> None:
            headers = [
                ("reason", f"webhook_{tag}".encode()),
                ("detail", reason.encode()[:DETAIL_MAX]),
                ("receiver", target.receiver.encode()),
                ("url", target.url.encode()),
                ("idempotency_key", key.encode()),
                ("stage", b"alerts"),
            ]
            value = body[: self.settings.deadletter_max_bytes]
            with contextlib.suppress(BufferError):  # the audit has it; Kafka's queue full: counted
                self.producer.produce(
                    self.deadletter_topic, key=target.receiver.encode(), value=value, headers=headers
                )
                return
            self.counters["webhook_dead_letters_not_written"] += 1

        self._side.append(entry)  # the audit entry first, then the dead letter
        self._side.append(write)
        self._hook_settled(target, key)

    def _hook_settled(self, target: WebhookTarget, key: str) -> None:
        with self._lock:
            owner = self._hook_owners.pop((key, target.receiver, target.url), None)
        if owner is not None:
            self._settle(owner)

    def _audit(self, kind: str, data: dict[str, Any], event_at: int | None) -> None:
        self.audit.append(kind, data, event_at=event_at)

    def _flush_side(self) -> None:
        """Webhook audit entries and dead letters, written by the main loop in a batch: a dead
        receiver's thousands of dead letters never take time from the pager."""
        try:
            entries: list[tuple[str, dict[str, Any], int | None]] = []
            letters: list[Callable[[], None]] = []
            while self._side:  # other threads append meanwhile: popleft is atomic, a snapshot is not
                item = self._side.popleft()
                if callable(item):
                    letters.append(item)
                else:
                    entries.append(item)
            # one chained write for the whole burst (a dead receiver makes ~2 entries per change),
            # and every dead letter after its audit entry, as before
            self.audit.append_batch(entries)
            for write in letters:
                write()
        except Exception as exc:
            fatal("alerts", f"cannot write the audit log: {exc!r}")

    # ------------------------------------------------------------------ the main loop's chores

    def _tick(self) -> None:
        """Periodic work of the main loop: health, offsets, the outbox, audit, reloads, stats."""
        if self._started and not self._stop.is_set() and not self._pager.is_alive():
            fatal("alerts", "the pager (MQTT) thread died; nothing would be delivered")
        self._flush_side()
        self._flush_delivered()
        now = time.monotonic()
        if now >= self._next_commit:
            self._next_commit = now + COMMIT_EVERY_S
            self._commit(asynchronous=True)
        if now >= self._next_audit_sync:
            self._next_audit_sync = now + AUDIT_SYNC_EVERY_S
            try:
                self.audit.sync()
            except Exception as exc:
                fatal("alerts", f"cannot sync the audit log: {exc!r}")
        self._reload_files(now)
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_every_s
            self._publish_stats()
        self.stats_producer.poll(0)
        self.producer.poll(0)

    def _flush_delivered(self) -> None:
        with self._lock:
            ids, self._delivered_ids = self._delivered_ids, []
        if ids:
            try:
                self.store.mark_delivered(ids)
            except Exception as exc:
                fatal("alerts", f"cannot write the incident store: {exc!r}")

    def _reload_files(self, now: float) -> None:
        """The routing file (its watcher keeps the table in force on a bad version) and the registry."""
        rejected = self.routing.rejected
        if self.routing.poll():
            self._audit("routing_reloaded", {"file": str(self.routing.path)}, None)
        elif self.routing.rejected != rejected:
            self._audit(
                "routing_rejected", {"file": str(self.routing.path), "error": self.routing.last_error}, None
            )
        if self.registry is None or now < self._next_registry:
            return
        self._next_registry = now + REGISTRY_POLL_S
        try:
            if self.registry.reload_if_changed():
                log.info("registry reloaded: %d units", len(self.registry))
        except RegistryError as exc:
            self.counters["registry_reload_failures"] += 1
            log.error("registry not reloaded, the previous one stays in force: %s", exc)

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
            queued = len(self._queue)
        now = self.clock.now()
        if time.monotonic() >= self._next_census:  # a walk over every open incident: not every second
            self._next_census = time.monotonic() + CENSUS_EVERY_S
            census = self.loop.census()
            self._census = {
                "open_by_escalation": census["by_escalation"],
                "sla_breaches_open": census["sla_breaches"],
            }
        record = counters | {
            "mqtt_connected": self.connected.is_set(),
            "in_flight": in_flight,
            "uncommitted_records": pending,
            "changes_queued": queued,
            "incidents": dict(self.loop.counters),
            "open_incidents": len(self.loop.open) + len(self.loop.idle),
            **self._census,
            "clock_ms": now,
            "clock_ignored_future": self.clock.ignored_future,
            "routing_reloads": self.routing.reloads,
            "routing_rejected": self.routing.rejected,
            "routing_last_error": self.routing.last_error[:500],
            "webhooks": self.webhooks.stats(),
            "audit_entries": self.audit.next_seq,
            "pager_rounds": self._pager_rounds,
            "pager_cpu_s": round(self._pager_cpu_s, 3),
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
            # the re-read from the earliest offset is harmless, the store and delivery record drop repeats
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

    def _publish(self, route: Route, topic: str, owner: Owed) -> None:
        """One page into this round's write (a slot is free): in flight until recorded."""
        mid = self._next_mid
        while True:  # packet ids 1..65535, none of those still in flight
            mid = mid % 65535 + 1
            if mid not in self._by_mid:
                break
        self._next_mid = mid
        page = Page(route.key, topic, route.item_id, [owner], route.payload)
        with self._lock:
            self._in_flight[(route.key, topic)] = page
            owner.outstanding += 1
            owner.published = True
        self._by_mid[mid] = page
        self._out.append(publish_packet(mid, topic, route.payload))
        self.counters["mqtt_publishes"] += 1

    def _record_acked(self) -> None:
        """Record the pages the broker acknowledged (one transaction), then free their slots and waiters.

        A page keeps its in-flight slot until its row is written: what a crash can repeat stays
        bounded by ``alerts_max_inflight``, however the PUBACKs are batched.
        """
        with self._lock:
            pages, self._acked = self._acked, []
        if not pages:
            return
        try:
            self.deliveries.record_many((p.key, p.topic, p.item_id) for p in pages)
            self.audit.append_batch(delivery_entry("mqtt", p.topic, p.key, "acked") for p in pages)
        except Exception as exc:  # a delivery we cannot record would be repeated forever
            fatal("alerts", f"cannot write the delivery record or the audit log: {exc!r}")
        with self._lock:
            for page in pages:
                self._in_flight.pop((page.key, page.topic), None)
                for owner in page.waiters:
                    owner.outstanding -= 1
                    self._check_done(owner)
            self.counters["pages_recorded"] += len(pages)
        self.health.progress()

    def _log_rarely(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning(message, *args)


def run(settings: Settings) -> None:
    """``sesmon alerts``: run until SIGINT/SIGTERM."""
    # each round trip of the pager (publish, PUBACK, record) needs the GIL back after its system
    # calls: with CPython's default 5 ms switch interval a busy main loop kept it up to 5 ms each
    # time; 0.5 ms measured best (0.1 and 2 ms: higher p99, bench/alerts_bench.py)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    start_memory_report("alerts", settings)  # SESMON_TRACEMALLOC=1: what grows (off by default)
    publisher = AlertPublisher(settings).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: publisher.stop())
    publisher.run_forever()
