"""The replay engine: the worker and the alerts stage on one simulated clock, fresh state, no I/O.

:class:`Replayer` takes archived messages in receive order and does what live sesmon did with
them, in the same order:

1. re-parse the raw bytes with ingest's validation (``sesmon.contract.fast_envelope`` for the
   common device message, ``sesmon.contract.schemas.parse_mqtt`` otherwise; GB/T 24476 topics
   through ingest's adapter). Dead letters stay dead (the archived verdict decided them);
2. run device messages and reports through :class:`rules.RuleEngine` with the catalogue version
   in effect at that time (:mod:`rules.catalogue_store`), one fresh state per unit, and tick a
   quiet unit when its due time passes (the worker's deadman sweep), on the receive-time axis;
3. feed the alert changes and the archived dispatch actions to the alerts stage's
   :class:`alerts.incidents.ResponseLoop`, whose :class:`~alerts.incidents.EventClock` runs on
   device time with the receive times as its wall clock (the processing-time guard, replayed).

The simulated wall clock (``wall``) is the receive time of the message being handled; between
messages it jumps to the next due tick or clock deadline, so a stream that falls silent still
escalates exactly as live did. See ``replay/__init__.py`` for where live and replay can differ.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.incidents import ClockConfig, EventClock, Incident, IncidentChange, ResponseLoop
from rules import RuleEngine
from rules.catalogue_store import catalogue_for, catalogue_versions
from rules.state import NO_DUE, UnitState
from sesmon.contract.archive import ArchivedMessage
from sesmon.contract.fast_envelope import device_envelope_dict, device_envelope_text
from sesmon.contract.gbt24476 import VENDOR_ROOT
from sesmon.contract.registry import Registry
from sesmon.contract.schemas import Alert, BadInput, DispatchAction, Receiver, parse_mqtt
from sesmon.runtime.settings import Settings

from .window import Target, Window

log = logging.getLogger("sesmon.replay")

INF = 1 << 62
_UNSEEN: Any = object()  # a unit not looked up in the registry yet
VENDOR_PREFIX = f"{VENDOR_ROOT}/"
CLOSED_HAZARD = ("closed", "withdrawn")


# --------------------------------------------------------------------------- catalogue versions


@dataclass
class CatalogueSchedule:
    """The catalogue versions that ran, by the (wall) time each took effect; engines built once per sha.

    Falls back to the shipped catalogue when the data dir recorded none (said in the report).
    """

    data_dir: Path
    steps: list[tuple[int, str, str]] = field(default_factory=list)  # (effective ms, sha256, version)
    engines: dict[str, RuleEngine] = field(default_factory=dict)
    fallback: bool = False

    @classmethod
    def load(cls, data_dir: Path) -> CatalogueSchedule:
        versions = catalogue_versions(data_dir)
        steps: dict[str, tuple[int, str, str]] = {}
        for v in versions:  # a sha loaded again later keeps its first effective time per run of it
            steps.setdefault(f"{v.effective_ms}:{v.sha256}", (v.effective_ms, v.sha256, v.version))
        ordered = sorted(steps.values())
        return cls(data_dir, ordered, fallback=not ordered)

    def sha_at(self, at_ms: int) -> str | None:
        """The sha in effect at ``at_ms`` (the last one loaded at or before it; before any: the first)."""
        if not self.steps:
            return None
        chosen = self.steps[0][1]
        for effective, sha, _version in self.steps:
            if effective <= at_ms:
                chosen = sha
            else:
                break
        return chosen

    def next_change(self, at_ms: int) -> int:
        """The first time after ``at_ms`` another version took effect (INF: none)."""
        return next((effective for effective, _sha, _v in self.steps if effective > at_ms), INF)

    def engine_at(self, at_ms: int) -> RuleEngine:
        sha = self.sha_at(at_ms)
        key = sha or "shipped"
        engine = self.engines.get(key)
        if engine is None:
            catalogue = catalogue_for(self.data_dir, sha=sha) if sha else None
            engine = self.engines[key] = RuleEngine(catalogue=catalogue)
        return engine

    def used(self) -> list[dict[str, Any]]:
        """The versions this run used, for the report."""
        return [
            {"sha256": sha, "version": engine.version, "catalogue_sha": engine.compiled.catalogue_sha}
            for sha, engine in self.engines.items()
        ]


# --------------------------------------------------------------------------- result


@dataclass
class ReplayResult:
    """Everything the replay decided, in the order it decided it (nothing filtered yet)."""

    target: Target
    window: Window
    end_ms: int = 0  # the last instant written (the window's end once the incident's end is known)
    incident_end_ms: int | None = None
    pages: list[dict[str, Any]] = field(default_factory=list)  # incident change pages (as live journals them)
    rule_alerts: list[dict[str, Any]] = field(default_factory=list)  # the rules' alert changes (+ "wall")
    hazards: list[dict[str, Any]] = field(default_factory=list)  # hidden-danger changes
    timeline: list[dict[str, Any]] = field(default_factory=list)
    signals: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)  # device -> (ts, body)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> its state at the time
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert_id -> incident (last state)
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> {fields, params, when}
    catalogues: list[dict[str, Any]] = field(default_factory=list)
    catalogue_fallback: bool = False
    stats: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    readings: int = 0  # telemetry readings handled (the bench's figure)


# --------------------------------------------------------------------------- the replayer


class Replayer:
    """One replay: fresh per-unit states, a fresh response loop, a simulated wall clock."""

    def __init__(
        self,
        settings: Settings,
        *,
        target: Target,
        window: Window,
        registry: Registry | None,
        catalogues: CatalogueSchedule,
        resolver: Callable[[Incident], list[Receiver]] | None = None,
        devices: frozenset[str] | None = None,
        speed: float | None = None,
        progress: Callable[[ReplayResult, int], None] | None = None,
        keep_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.target = target
        self.window = window
        self.registry = registry
        self.catalogues = catalogues
        self.devices = devices
        self.speed = speed
        self.progress = progress
        self.keep_signals = keep_signals
        self.engine = catalogues.engine_at(window.warmup_ms)
        self._next_switch = catalogues.next_change(window.warmup_ms)  # wall time of the next version
        self.states: dict[str, UnitState] = {}
        self.due: dict[str, int] = {}
        self.ticks: list[tuple[int, str]] = []  # (due, device_id): a heap, stale entries skipped
        self.queued: dict[str, int] = {}  # device_id -> the due of its entry in ``ticks``
        self.units: dict[str, Any] = {}  # device_id -> registry row (None: not registered)
        self.wall = window.warmup_ms
        self.tick_every_ms = max(1, int(settings.deadman_check_every_s * 1000))
        self.clock = EventClock(
            guard=True, wall_ms=self._wall, max_ahead_ms=int(settings.alerts_clock_max_ahead_s * 1000)
        )
        self.loop = ResponseLoop(ClockConfig.from_settings(settings), resolver=resolver)
        self.result = ReplayResult(target, window, catalogue_fallback=catalogues.fallback)
        # counted per message: plain ints on the hot path, put into ``result.stats`` when read
        self._messages = 0
        self.result.stats.update(messages=0, late_dropped=0)
        self._max_bytes, self._max_depth = settings.max_payload_bytes, settings.max_json_depth
        self.last_status: dict[str, str] = {}
        self.snapshot_at = target.anchor_ms if target.anchor_ms is not None else window.start_ms
        #: the units the report shows the state of (a district's first 50; None: the units seen)
        self.snapshot_names = sorted(devices)[:50] if devices is not None else None
        self.snapshot_taken = False
        self._pace_start = (0.0, 0)  # (monotonic, wall) when pacing began
        self._next_progress = 0.0

    def _wall(self) -> int:
        return self.wall

    # ------------------------------------------------------------------ the run

    def run(self, messages: Iterable[ArchivedMessage]) -> ReplayResult:
        result = self.result
        advance, handle = self.advance, self.handle
        for msg in messages:  # the archive read is bounded by the window's cap (device time)
            received_ms = msg.received_ms
            if received_ms > self.wall:  # messages received in the same ms are one batch
                advance(received_ms)
            handle(msg)
        result.stats["messages"] = self._messages
        self.advance(self.final_wall())
        return self.conclude()

    def final_wall(self) -> int:
        """Where the clocks and ticks run to once the messages are done (the window's end on the wall).

        Also ends an alert's window at its recovery when the incident was not closed in the span read."""
        result = self.result
        if result.incident_end_ms is None and self.target.mode == "alert":
            recovered = self._recovered_at()
            if recovered is not None:  # never closed in the span read: the window ends at its recovery
                result.incident_end_ms = recovered
                result.notes.append(
                    "the incident was not closed in the replayed span: the window ends at its recovery"
                )
        # then let the clocks and ticks run to the window's end, as live wall time would have:
        # the end is device time, the wall runs ahead of it by the last seen receive delay
        final = self.window.final_end(result.incident_end_ms)
        delay = self.wall - self.clock.high if self.clock.high is not None else 0
        return max(self.wall, final + max(0, delay))

    def conclude(self) -> ReplayResult:
        """The result once the final wall is reached: snapshot, window end, incidents, notes, counters."""
        result = self.result
        self._take_snapshot()
        result.end_ms = self.window.final_end(result.incident_end_ms)
        for alert_id, incident in self.loop.open.items():
            result.incidents[alert_id] = incident.model_dump(mode="json")
        result.catalogues = self.catalogues.used()
        if self.target.mode in ("alert", "hazard") and not self.target_seen():
            result.notes.insert(0, f"the replay did not reproduce {self.target.mode} {self.target.ident}")
        result.stats.update({k: v for k, v in self.loop.counters.items()})
        return result

    def _recovered_at(self) -> int | None:
        """When the target alert resolved (the rules' change), if it did."""
        ident = self.target.ident
        return next(
            (
                a["changed_at"]
                for a in self.result.rule_alerts
                if a["alert_id"] == ident and a["state"] == "resolved"
            ),
            None,
        )

    def target_seen(self) -> bool:
        """Did the replay produce the alert or hidden danger it was asked about?"""
        ident = self.target.ident
        if self.target.mode == "alert":
            return any(a["alert_id"] == ident for a in self.result.rule_alerts)
        return any(h.get("hazard_id") == ident for h in self.result.hazards)

    # ------------------------------------------------------------------ clocks

    def advance(self, wall: int) -> None:
        """Move the simulated wall clock to ``wall``: due ticks and clock deadlines in time order.

        Messages received at the same instant are one batch: the clock is asked once, after them
        (as the alerts stage asks it once per batch of records)."""
        if wall > self.wall:
            self._advance(wall)

    def _advance(self, wall: int) -> None:
        """:meth:`advance` once ``wall`` is known to be ahead (replay.parallel's parent calls it
        after the ticks of this advance, which its workers ran)."""
        ticks, loop = self.ticks, self.loop
        if ticks and ticks[0][0] <= wall:
            self._next_tick(wall)  # a streaming unit's stale entry moves on (fires nothing)
        if not ticks or ticks[0][0] > wall:  # the common case: no tick due before this message
            due = loop.next_due()
            if due is None:
                self._move(wall)
                return
            if self._clock_wall(due) > wall:  # nor a clock deadline: the loop below would only end
                self._move(wall)
                now = self.clock.now()  # always asked: it moves the clock's floor
                if now is not None and now >= due:
                    self._changes(loop.on_clock(now))
                return
        while True:
            t_tick = INF if not ticks else ticks[0][0]
            if t_tick <= wall:
                t_tick = self._next_tick(wall)
            t_clock = self._clock_wall(loop.next_due())
            step = t_tick if t_tick < t_clock else t_clock
            if step > wall:
                break
            self._move(step)
            if t_tick <= t_clock:
                due, device_id = heapq.heappop(self.ticks)
                del self.queued[device_id]
                self._tick(device_id, max(due, self.wall))
            self._changes(self.loop.on_clock(self.clock.now()))
        self._move(wall)
        due = loop.next_due()
        if due is not None:
            now = self.clock.now()  # always asked: it moves the clock's floor, as the stage's batch does
            if now is not None and now >= due:  # else on_clock has nothing to fire
                self._changes(loop.on_clock(now))

    def _next_tick(self, until: int) -> int:
        """The earliest due tick, or a lower bound of it beyond ``until`` (INF: none).

        A unit keeps one heap entry, its due when pushed: a streaming unit's due only moves later,
        so its entry is moved on only once the wall clock reaches it (no heap push per reading)."""
        ticks, due_of, queued = self.ticks, self.due, self.queued
        while ticks:
            at, device_id = ticks[0]
            if at > until:
                return at  # every due is at least its entry: nothing is due before this
            due = due_of.get(device_id)
            if due == at:
                return at
            if due is None:
                heapq.heappop(ticks)
                del queued[device_id]
            else:  # pop and push in one step (the same entries, so the same order of pops)
                queued[device_id] = due
                heapq.heapreplace(ticks, (due, device_id))
        return INF

    def _clock_wall(self, due: int | None) -> int:
        """The wall time at which the event clock reaches ``due`` (INF: never, by wall alone)."""
        if due is None or self.clock.high is None:
            return INF
        if self.clock.floor is not None and self.clock.floor >= due:
            return self.wall
        return self.clock.raised_wall + (due - self.clock.high)

    def _move(self, wall: int) -> None:
        if wall <= self.wall:
            return
        if self.speed and wall >= self.window.start_ms:  # the warm-up runs flat out
            self._pace(wall)
        self.wall = wall
        if wall >= self.snapshot_at:
            self._take_snapshot()
        if wall < self._next_switch:
            return
        self._next_switch = self.catalogues.next_change(wall)
        engine = self.catalogues.engine_at(wall)
        if engine is not self.engine:
            self._switched(engine, wall)
            self.engine = engine

    def _switched(self, engine: RuleEngine, wall: int) -> None:
        self._note(f"catalogue {engine.compiled.catalogue_sha} ({engine.version}) took effect at {wall}")

    def _note(self, text: str) -> None:
        self.result.notes.append(text)

    def _pace(self, wall: int) -> None:
        """``--speed N``: N times real time, with a progress line."""
        started, wall0 = self._pace_start
        if not started:
            self._pace_start = (time.monotonic(), wall)
            return
        ahead = (wall - wall0) / 1000 / self.speed - (time.monotonic() - started)  # type: ignore[operator]
        while ahead > 0:
            time.sleep(min(ahead, 0.25))
            self._report_progress(wall)
            ahead = (wall - wall0) / 1000 / self.speed - (time.monotonic() - started)  # type: ignore[operator]
        self._report_progress(wall)

    def _report_progress(self, wall: int) -> None:
        if self.progress is not None and time.monotonic() >= self._next_progress:
            self._next_progress = time.monotonic() + 0.25
            self.result.stats["messages"] = self._messages
            self.progress(self.result, wall)

    # ------------------------------------------------------------------ inputs

    def handle(self, msg: ArchivedMessage) -> None:
        """One archived message, as ingest, the worker and the alerts stage saw it."""
        self._messages += 1
        if msg.verdict != "ok":
            stats = self.result.stats
            stats[f"deadletter_{msg.reason}"] += 1
            self._timeline(
                msg.ts if msg.ts is not None else msg.received_ms,
                "received",
                f"deadletter:{msg.reason}",
                received_ms=msg.received_ms,
                topic=msg.topic if not msg.topic_b64 else "",
                detail=msg.detail or "",
                by=msg.publisher or "",
            )
            return
        env = self._parse(msg)
        if env is None:
            return
        typ = env["type"]
        if typ == "dispatch":
            self._dispatch(env)
        elif env.get("device_id"):
            self._device(env)
        else:
            self.result.stats["skipped_no_device"] += 1

    def _parse(self, msg: ArchivedMessage, quiet: bool = False) -> dict[str, Any] | None:
        """The envelope ingest produced for a valid message's bytes (the same JSON the worker decodes);
        None when it fails validation now (noted, unless ``quiet``)."""
        # the common device message: = orjson.loads(device_envelope(...).value) (test_ingest_fast_envelope)
        if msg.payload_b64:
            env = device_envelope_dict(
                msg.topic,
                msg.payload_bytes,
                msg.received_ms,
                max_bytes=self._max_bytes,
                max_depth=self._max_depth,
            )
        else:  # the archived text as it is: no encoding, the topic and the body's key order known
            env = device_envelope_text(
                msg.topic, msg.payload, msg.received_ms, max_bytes=self._max_bytes, max_depth=self._max_depth
            )
        return env if env is not None else self._envelope(msg.topic, msg.payload_bytes, msg, quiet)

    def signals_of(self, messages: Iterable[ArchivedMessage]) -> list[tuple[int, dict[str, Any]]]:
        """A unit's plotted samples, ``(ts, body)`` of its telemetry in the window, from a second read
        of its archive: what :meth:`_device` keeps with ``keep_signals``, without holding every unit's
        samples through a district's run (the report plots three units; a day of a district is
        millions of readings)."""
        start = self.window.start_ms
        samples = []
        for msg in messages:
            if msg.verdict != "ok":
                continue
            env = self._parse(msg, quiet=True)
            if env is not None and env["type"] == "telemetry" and env.get("device_id") and env["ts"] >= start:
                samples.append((env["ts"], env["body"]))
        return samples

    def _envelope(
        self, topic: str, payload: bytes, msg: ArchivedMessage, quiet: bool = False
    ) -> dict[str, Any] | None:
        """The envelope of what the fast path steps aside for: ingest's pydantic path."""
        settings = self.settings
        try:
            canonical_topic, canonical = topic, payload
            if topic.startswith(VENDOR_PREFIX):
                canonical_topic, canonical = self._vendor(topic, payload)
            env = parse_mqtt(
                canonical_topic,
                canonical,
                msg.received_ms,
                max_bytes=settings.max_payload_bytes,
                max_depth=settings.max_json_depth,
            )
        except BadInput as bad:
            # ingest accepted it then: the schemas changed since, or the archive is not ingest's
            if not quiet:
                self.result.stats["reparse_failed"] += 1
                self._note(f"archived as valid but fails validation now: {msg.topic}: {bad}")
            return None
        if canonical_topic != topic:
            env.mqtt_topic = topic
        return env.model_dump(mode="json")

    def _vendor(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        from ingest.vendor import VendorError, vendor_to_canonical

        parts = topic.split("/")
        unit = self.registry.get(parts[2]) if self.registry is not None and len(parts) > 2 else None
        try:
            return vendor_to_canonical(topic, payload, type_code=unit.type_code if unit is not None else "")
        except VendorError as err:
            raise BadInput(f"vendor_{err.reason}", str(err)) from None

    def _device(self, env: dict[str, Any]) -> None:
        """The worker's ``evaluate_envelope``: the unit's state, the rules, the outcome."""
        device_id = env["device_id"]
        typ = env["type"]
        unit = self.units.get(device_id, _UNSEEN)
        if unit is _UNSEEN:
            unit = self._unit(device_id)
        if typ == "telemetry":
            self.result.readings += 1
            if self.keep_signals and env["ts"] >= self.window.start_ms:
                self.result.signals.setdefault(device_id, []).append((env["ts"], env["body"]))
        else:
            self._note_input(env)
        out = self.engine.process(self.states.get(device_id), env, unit)
        self._outcome(device_id, out, unit)
        ts = env.get("ts")
        if type(ts) is int:  # the worker's event-time watermark, which the alerts stage reads
            clock = self.clock
            if clock.high is None or ts > clock.high:  # else observe() does nothing
                clock.observe(ts)

    def _unit(self, device_id: str) -> Any:
        """The registry row (the registry does not change during a replay: looked up once)."""
        try:
            return self.units[device_id]
        except KeyError:
            unit = self.units[device_id] = self.registry.get(device_id) if self.registry is not None else None
            return unit

    def _tick(self, device_id: str, now_ms: int) -> None:
        state = self.states.get(device_id)
        if state is None:
            return
        self.result.stats["ticks"] += 1
        unit = self._unit(device_id)
        self._outcome(device_id, self.engine.tick(state, now_ms, unit), unit, now_ms)

    def _outcome(self, device_id: str, out: Any, unit: Any, ticked_at: int | None = None) -> None:
        state = out.state
        if state:
            if type(state) is not UnitState:
                state = RuleEngine.load_state(state)
            if state is not None:
                self.states[device_id] = state
                due = state.due  # RuleEngine.next_due, inline: once per reading
                if due is not None and due < NO_DUE:
                    floor = (ticked_at if ticked_at is not None else self.wall) + (
                        self.tick_every_ms if ticked_at is not None else 0
                    )
                    due = max(due, floor)  # the worker sweeps again only at its next timer
                    self.due[device_id] = due
                    queued = self.queued.get(device_id)
                    if queued is None or due < queued:
                        self.queued[device_id] = due
                        heapq.heappush(self.ticks, (due, device_id))
                else:
                    self.due.pop(device_id, None)
        if out.late_dropped:
            self.result.stats["late_dropped"] += out.late_dropped
        for reason in out.rejected:
            self.result.stats["rejected_by_rules"] += 1
            self._timeline(self.wall, "rules", "rejected", device_id=device_id, detail=reason)
        for alert in out.alerts:
            self._rule_alert(alert, unit)
        for hazard in out.hazards:
            data = hazard.model_dump(mode="json") if hasattr(hazard, "model_dump") else dict(hazard)
            self._hazard(data)

    def _rule_alert(self, alert: Alert, unit: Any, record: dict[str, Any] | None = None) -> None:
        """The rules' alert change, then the alerts stage's ``_on_alert``."""
        if record is None:
            record = alert.model_dump(mode="json")
        self.result.rule_alerts.append(record | {"wall": self.wall})
        self._remember_thresholds(alert.rule, unit)
        self._timeline(
            alert.changed_at,
            "rules",
            f"alert:{alert.state}",
            by="rules",
            alert_id=alert.alert_id,
            device_id=alert.device_id,
            rule=alert.rule,
            level=str(alert.level),
        )
        self.clock.observe(alert.changed_at)
        changes = self.loop.on_alert(alert)
        for change in changes:
            change.evidence = alert.evidence
        self._changes(changes)

    def _hazard(self, hazard: dict[str, Any]) -> None:
        self.result.hazards.append(hazard)
        self._timeline(
            int(hazard.get("updated_at") or hazard.get("opened_at") or self.wall),
            "hazard",
            f"hazard:{hazard.get('status')}",
            hazard_id=hazard.get("hazard_id"),
            device_id=hazard.get("device_id"),
            grade=hazard.get("grade"),
            supervision=hazard.get("supervision"),
        )
        target = self.target
        ended = hazard.get("status") in CLOSED_HAZARD
        if ended and target.mode == "hazard" and hazard.get("hazard_id") == target.ident:
            self.result.incident_end_ms = int(hazard.get("updated_at") or self.wall)

    def _dispatch(self, env: dict[str, Any]) -> None:
        """The alerts stage's ``_on_dispatch``: applied, a duplicate, or refused with a reason."""
        action = DispatchAction.model_validate(env["body"])
        self.clock.observe(action.ts)
        outcome = self.loop.on_dispatch(action)
        self.result.stats[f"dispatch_{outcome.status}"] += 1
        extra: dict[str, Any] = {"status": outcome.status}
        if outcome.reason:
            extra |= {"reason": outcome.reason, "detail": outcome.detail}
        self._timeline(
            action.ts,
            "received",
            f"dispatch:{action.action}",
            by=action.by,
            alert_id=action.alert_id,
            received_ms=env.get("received_ms"),
            **extra,
        )
        self._changes(outcome.changes)

    def _note_input(self, env: dict[str, Any]) -> None:
        """Events, status changes and reports on the timeline (telemetry goes to the plot)."""
        typ, body, device_id = env["type"], env["body"], env["device_id"]
        if typ == "event":
            what = f"event:{body.get('code')}:{body.get('state', 'occur')}"
        elif typ == "status":
            word = str(body.get("status"))
            if self.last_status.get(device_id) == word:
                return  # a heartbeat, not a change
            self.last_status[device_id] = word
            what = f"status:{word}"
        else:
            what = f"report:{env.get('report')}"
        self._timeline(
            env["ts"],
            "received",
            what,
            device_id=device_id,
            received_ms=env.get("received_ms"),
            by=env.get("publisher") or body.get("by") or body.get("firm_id") or "",
            seq=env.get("seq"),
        )

    # ------------------------------------------------------------------ incident changes

    def _changes(self, changes: list[IncidentChange]) -> None:
        result = self.result
        for change in changes:
            page = change.page()
            result.pages.append(page)
            entry = change.incident["timeline"][-1] if change.incident.get("timeline") else {}
            self._timeline(
                change.at,
                "incident",
                change.what,
                by=entry.get("by", ""),
                alert_id=change.alert_id,
                level=change.incident.get("escalation"),
                receivers=[f"{r.kind}/{r.id}" for r in change.receivers],
            )
            result.incidents[change.alert_id] = change.incident
            if self.target.mode == "alert" and change.alert_id == self.target.ident:
                incident = change.incident
                if incident.get("state") != "open" and incident.get("alert_state") == "resolved":
                    result.incident_end_ms = max(e["at"] for e in incident["timeline"])

    def _timeline(self, at: int, source: str, what: str, **fields: Any) -> None:
        self.result.timeline.append(timeline_entry(at, source, what, fields))

    # ------------------------------------------------------------------ the report's context

    def _remember_thresholds(self, rule_id: str, unit: Any) -> None:
        if rule_id in self.result.thresholds:
            return
        rule = self.engine.rules.get(rule_id)
        if rule is None:
            return
        params: dict[str, float] = {}
        if unit is not None:
            ctx = self.engine._ctx(unit.device_id, unit, str(unit.kind))
            params = dict(ctx.params[rule.index])
        else:
            ctx = self.engine._default_ctx.get(rule.kind)
            if ctx is not None:
                params = dict(ctx.params[rule.index])
        self.result.thresholds[rule_id] = {
            "fields": list(rule.fields),
            "params": params,
            "when": rule.when_src,
            "clear": rule.clear_src,
            "events": list(rule.events),
            "level": rule.level,
            "title": rule.title,
        }

    def _take_snapshot(self) -> None:
        """The unit's state at the time: last maintenance, inspection validity, open hidden dangers."""
        if self.snapshot_taken:
            return
        self.snapshot_taken = True
        at = self.snapshot_at
        names = self.snapshot_names if self.snapshot_names is not None else sorted(self.states)[:50]
        for device_id in names:  # a district report shows the first 50 units
            self.result.snapshots[device_id] = unit_snapshot(
                device_id, self.states.get(device_id), self.registry, at
            )


def timeline_entry(at: int, source: str, what: str, fields: dict[str, Any]) -> dict[str, Any]:
    """One ``timeline.jsonl`` entry: empty fields left out."""
    entry = {"at": int(at), "source": source, "what": what}
    entry.update({k: v for k, v in fields.items() if v is not None and v != ""})
    return entry


def unit_snapshot(
    device_id: str, state: UnitState | None, registry: Registry | None, at_ms: int
) -> dict[str, Any]:
    """What an inspector asks first about a unit at ``at_ms`` (domain.md §4.4)."""
    unit = registry.get(device_id) if registry is not None else None
    out: dict[str, Any] = {"device_id": device_id, "at": at_ms, "registered": unit is not None}
    if unit is not None:
        out |= {
            "kind": str(unit.kind),
            "district": unit.district,
            "address": unit.address,
            "firm_id": unit.firm_id,
            "user_unit_id": unit.user_unit_id,
            "status": unit.status,
            "last_inspection": unit.last_inspection.isoformat() if unit.last_inspection else None,
            "next_inspection_due": unit.next_inspection_due.isoformat() if unit.next_inspection_due else None,
        }
    from sesmon.contract.time import end_of_day_ms

    due_ms = None
    if state is not None and state.inspection_due:
        due_ms = state.inspection_due
    elif unit is not None and unit.next_inspection_due is not None:
        due_ms = end_of_day_ms(unit.next_inspection_due)
    out["inspection_due_ms"] = due_ms
    out["inspection_valid"] = None if due_ms is None else at_ms < due_ms
    if state is not None:
        out["last_maintenance_ms"] = state.last_maintenance or None
        out["under_maintenance"] = bool(state.maint_start and state.maint_start <= at_ms < state.maint_end)
        out["open_hazards"] = [
            {k: h.get(k) for k in ("hazard_id", "grade", "status", "deadline", "supervision", "title")}
            for h in state.hazards.values()
            if h.get("status") not in CLOSED_HAZARD
        ]
        out["open_alerts"] = sorted(a.alert_id for a in state.alerts.values())
        out["mode"] = state.mode
    else:
        out |= {"last_maintenance_ms": None, "open_hazards": [], "open_alerts": [], "mode": None}
    return out


__all__ = ["CatalogueSchedule", "ReplayResult", "Replayer", "timeline_entry", "unit_snapshot"]
