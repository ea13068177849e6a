"""The emergency response loop (issue 10): incidents, dispatch actions and the 96333 escalation clock.

Pure logic: no Kafka, MQTT or SQLite here, so the loop is unit-testable and replayable. The
stage feeds it one input at a time and pages the :class:`IncidentChange` objects it returns:

- :meth:`ResponseLoop.on_alert`: an alert change from the rules opens an incident (first sight)
  or records its resolution; a repeat is idempotent (no change);
- :meth:`ResponseLoop.on_dispatch`: a responder's action is applied, dropped as a duplicate, or
  refused with a reason (``unknown_alert``, ``out_of_order``, ``after_close``, ``bad_action``);
- :meth:`ResponseLoop.on_clock`: escalations, SLA breaches and accidents due by ``now``.

Every change has a stable ``change_id`` (``{alert_id}|{what}``): each ``what`` happens at most
once per incident (dispatch ranks only rise, escalation levels only rise, a breach or accident
is recorded once), so a re-read input or a replay yields the same ids, and the id is the page's
idempotency key. Clock entries are stamped with their deadline (device time), not with the
moment the check ran, so a replay reproduces the timeline exactly.

The clock (domain.md §1.6, Guangzhou 96333 and TSG T5002-2017; DESIGN.md §4):

- level 1 is the initial page (firm, user unit, 96333 for an elevator P1);
- not ``accepted`` (rank >= 3) ``accept_s`` (300) after ``opened_at`` -> level 2 (rescue station);
- not ``on_site`` (rank >= 4) ``on_site_s`` (1800; per-district override, 1 h outside 设区的市)
  after ``opened_at`` -> level 3 (119) and ``sla_breach`` recorded against the firm;
- a trapped incident (``accident_rules``) not freed ``accident_s`` (7200) after ``opened_at`` ->
  ``accident`` (一般事故, 电梯轿厢滞留人员2小时以上), reported to the district regulator once.

Decisions (and why):

- A resolved alert does NOT close the incident: the firm must still come, find the cause and
  close it (TSG T5002: the firm answers every trapped call; 96333 "calls back; closes", domain.md
  §4.1). It DOES stop the clocks: levels 2 and 3 send a rescue station and 119 to get people
  out, the 30-minute limit is for *trapped passengers* (TSG T5002-2017, domain.md §1.6) and the
  accident is people *held* 2 h; once the unit's telemetry says the condition ended (the door
  opened, nobody inside for 10 min) nobody is to be rescued. A condition that comes back is a
  new alert (new ``alert_id``) with clocks of its own.
- ``freed`` / ``restored`` (rank >= 5) stop the accident clock, and satisfy the accept and
  on-site clocks (skipping forward implies the earlier steps); ``closed`` and ``false_alarm``
  close the incident and stop everything.
- Only incidents of ``clock_levels`` (P1) run the clock; they start at escalation 1 (the level-1
  response is under way), others at 0. A manual ``escalate`` raises by one up to 3, on any
  open incident.
- A follow-up alert of the rules (``elevator.trapped_2h``) is the same event seen 2 h later: its
  incident runs no clock of its own (the trapped incident's clock already covers the response,
  and a firm on site for the trapped incident must not be escalated against on the follow-up).
- Exactly one accident report per trapped event: the trapped incident's ``accident`` change and
  every change of its follow-up incident share the key ``accident:{device_id}:{opened_at of the
  trapped alert}`` (the follow-up's evidence names ``open_since``); whichever reports first
  pages the regulator, the others are paged with the regulator removed
  (``regulator_suppressed``). The keys are durable (see :mod:`alerts.incident_store`).
- Receivers are resolved per change by a ``resolver`` (the stage plugs the routing file in:
  :mod:`alerts.routing_file`); :func:`default_resolver` is the built-in fallback. Escalation
  receivers resolved at a level stay with the page's snapshot, so the record says who was paged.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sesmon.contract.receivers import receivers_of
from sesmon.contract.schemas import Alert, Receiver

#: JSON layout version of an :class:`Incident` (bump and migrate in :meth:`Incident.from_json`)
INCIDENT_VERSION = 1

#: ordered dispatch actions: a new one must rank higher than the incident's current one
RANKS: dict[str, int] = {
    "ack": 1,
    "dispatched": 2,
    "accepted": 3,
    "on_site": 4,
    "freed": 5,
    "restored": 6,
    "closed": 7,
}
ACCEPTED, ON_SITE, FREED, CLOSED = RANKS["accepted"], RANKS["on_site"], RANKS["freed"], RANKS["closed"]
#: actions outside the order: false_alarm closes (any time before closed), escalate raises a level
UNORDERED = ("false_alarm", "escalate")
ACTIONS = (*RANKS, *UNORDERED)
MAX_ESCALATION = 3

RefusalReason = Literal["unknown_alert", "out_of_order", "after_close", "bad_action"]
IncidentState = Literal["open", "closed", "false_alarm"]
#: who stamps the entries that are not a responder's action
BY_RULES, BY_CLOCK = "rules", "clock"


class TimelineEntry(BaseModel):
    """One step of an incident: ``at`` device/event time (ms), ``level`` the escalation after it."""

    model_config = ConfigDict(frozen=True)

    at: int
    what: str  # opened, resolved, escalated, sla_breach, accident, or a dispatch action
    by: str = ""
    level: int = 0


class Incident(BaseModel):
    """One elevator/boiler alert (``alert_id``) as the response loop sees it; JSON round-trips."""

    version: int = INCIDENT_VERSION
    alert_id: str
    rule: str
    level: str  # P1 / P2 / P3 (the alert's)
    kind: str  # elevator / boiler
    device_id: str
    district: str = ""
    firm_id: str = ""
    user_unit_id: str = ""
    title: str = ""
    opened_at: int  # device time the condition began
    changed_at: int  # device time of the latest entry
    state: IncidentState = "open"
    alert_state: Literal["firing", "resolved"] = "firing"
    rank: int = 0  # highest ordered dispatch action applied (RANKS)
    escalation: int = Field(0, ge=0, le=MAX_ESCALATION)
    clocked: bool = False  # runs the escalation clock
    sla_breach: bool = False
    accident: bool = False
    accident_key: str = ""  # accident:{device_id}:{opened_at of the trapped alert}; "" = not trapped
    followup: bool = False  # the rules' own accident alert (trapped_2h): no clock, reports the accident
    followup_of: str = ""  # the trapped alert it measures (its evidence's ``of``)
    accept_due: int | None = None  # device-time deadlines (None: not clocked / not applicable)
    on_site_due: int | None = None
    accident_due: int | None = None
    rule_receivers: list[Receiver] = Field(default_factory=list)  # the alert's list (the rule's flags)
    timeline: list[TimelineEntry] = Field(default_factory=list)

    # ---- JSON
    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Incident:
        incident = cls.model_validate_json(data)
        if incident.version > INCIDENT_VERSION:
            raise ValueError(
                f"incident {incident.alert_id}: layout version {incident.version} is newer than this code"
            )
        return incident

    # ---- views
    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def alert_view(self) -> Alert:
        """The incident as an :class:`Alert` (for routing tables that match on alerts)."""
        return Alert(
            alert_id=self.alert_id,
            rule=self.rule,
            level=self.level,  # type: ignore[arg-type]
            device_id=self.device_id,
            kind=self.kind,  # type: ignore[arg-type]
            district=self.district,
            firm_id=self.firm_id,
            user_unit_id=self.user_unit_id,
            opened_at=self.opened_at,
            changed_at=self.changed_at,
            state=self.alert_state,
            escalation=self.escalation,
            title=self.title,
            receivers=list(self.rule_receivers),
        )

    def clocks(self, now_ms: int) -> dict[str, int | None]:
        """Seconds left to each deadline still running (negative: overdue); None when not running."""

        def left(due: int | None, stopped: bool) -> int | None:
            return None if due is None or stopped or not self.running else (due - now_ms) // 1000

        return {
            "age_s": (now_ms - self.opened_at) // 1000,
            "accept_in_s": left(self.accept_due, self.rank >= ACCEPTED or self.escalation >= 2),
            "on_site_in_s": left(self.on_site_due, self.rank >= ON_SITE or self.sla_breach),
            "accident_in_s": left(self.accident_due, self.rank >= FREED or self.accident),
        }

    @property
    def running(self) -> bool:
        """Do its clocks run? Open, clocked, and the alert not resolved by telemetry."""
        return self.clocked and self.state == "open" and self.alert_state == "firing"


class IncidentChange(BaseModel):
    """One change to page: who gets it and the incident as it stands after the change."""

    change_id: str  # {alert_id}|{what}: the page's idempotency key
    alert_id: str
    what: str  # opened, resolved, escalation:2, escalation:3, sla_breach, accident, dispatch:<action>
    at: int  # device time of the change
    receivers: list[Receiver]
    incident: dict[str, Any]  # snapshot (Incident.model_dump)
    regulator_suppressed: bool = False  # the accident was already reported under the same key
    #: the alert record's readings that fired it (set by the stage on the changes an alert made)
    evidence: list[dict[str, Any]] = Field(default_factory=list)

    def to_json(self) -> bytes:
        """The outbox row: ``model_dump_json`` as orjson writes it (~40 % cheaper per change; the
        ``incident`` snapshot is already plain JSON data). Read back with ``model_validate_json``."""
        return orjson.dumps(
            {
                "change_id": self.change_id,
                "alert_id": self.alert_id,
                "what": self.what,
                "at": self.at,
                "receivers": [{"kind": r.kind, "id": r.id} for r in self.receivers],
                "incident": self.incident,
                "regulator_suppressed": self.regulator_suppressed,
                "evidence": self.evidence,
            }
        )

    def page(self) -> dict[str, Any]:
        """A page body that keeps the alert pages' fields: ``state`` stays the ALERT's state
        (``firing``/``resolved``, what receivers and the simulator read); the incident's own
        state is ``incident_state``."""
        body = dict(self.incident)
        body["incident_state"] = body.pop("state")
        body["state"] = body.pop("alert_state")
        body.pop("version", None)
        body.pop("rule_receivers", None)  # the rule's flags, already resolved into ``receivers``
        body["receivers"] = [r.model_dump() for r in self.receivers]
        body["change"] = self.what
        body["change_id"] = body["idempotency_key"] = self.change_id
        if self.evidence:
            body["evidence"] = self.evidence
        return body


class DispatchLike(Protocol):
    """What :meth:`ResponseLoop.on_dispatch` reads (``sesmon.contract.schemas.DispatchAction``)."""

    alert_id: str
    action: str
    by: str
    ts: int


@dataclass
class DispatchResult:
    """``applied`` (with its changes), ``duplicate`` (dropped, count it) or ``refused`` (dead-letter)."""

    status: Literal["applied", "duplicate", "refused"]
    changes: list[IncidentChange] = field(default_factory=list)
    reason: RefusalReason | None = None
    detail: str = ""


#: (incident) -> everyone to page for its current state; the stage plugs the routing file in
Resolver = Callable[[Incident], Iterable[Receiver]]


@dataclass(frozen=True)
class ClockConfig:
    """Durations (seconds) and sets of the response loop; :meth:`from_settings` reads ``SESMON_ALERTS_*``."""

    accept_s: float = 300.0  # 96333: the three-level response within 5 min (domain.md §1.6)
    on_site_s: float = 1800.0  # rescuers on site within 30 min (TSG T5002-2017; 96333)
    on_site_s_by_district: Mapping[str, float] = field(default_factory=dict)  # ≤ 1 h outside 设区的市
    accident_s: float = 7200.0  # 电梯轿厢滞留人员2小时以上 = 一般事故 (domain.md §3.2)
    clock_levels: frozenset[str] = frozenset({"P1"})
    accident_rules: frozenset[str] = frozenset({"elevator.trapped", "elevator.power_loss_occupied"})
    followup_rules: frozenset[str] = frozenset({"elevator.trapped_2h"})  # rules' own accident alerts
    centre_id: str = "96333"

    def __post_init__(self) -> None:
        for district, seconds in {"": self.on_site_s, **self.on_site_s_by_district}.items():
            if not 0 < self.accept_s <= seconds:
                raise ValueError(
                    f"on_site_s {seconds} for {district or 'default'} must be >= accept_s {self.accept_s}"
                )
        if self.accident_s <= 0:
            raise ValueError("accident_s must be positive")

    @classmethod
    def from_settings(cls, settings: Any) -> ClockConfig:
        return cls(
            accept_s=settings.alerts_accept_s,
            on_site_s=settings.alerts_on_site_s,
            on_site_s_by_district=dict(settings.alerts_on_site_s_by_district),
            accident_s=settings.alerts_accident_s,
            clock_levels=frozenset(settings.alerts_clock_levels),
            accident_rules=frozenset(settings.alerts_accident_rules),
            centre_id=settings.centre_id,
        )

    def on_site_for(self, district: str) -> float:
        return self.on_site_s_by_district.get(district, self.on_site_s)


def default_resolver(centre_id: str = "96333") -> Resolver:
    """Receivers without a routing table: the rules' list (or firm, user unit, 96333 for an
    elevator P1), a rescue station at level 2 and 119 at level 3 (elevators; a boiler has no 96333
    rescue station, only 119), the district regulator for an SLA breach or an accident."""

    def resolve(incident: Incident) -> list[Receiver]:
        out = list(receivers_of(incident.alert_view(), centre_id))
        district = incident.district
        if incident.escalation >= 2 and incident.kind == "elevator":
            out.append(Receiver(kind="rescue", id=f"district:{district}" if district else "city"))
        if incident.escalation >= 3:
            out.append(Receiver(kind="fire", id="119"))
        if (incident.sla_breach or incident.accident) and district:
            out.append(Receiver(kind="regulator", id=f"district:{district}"))
        return out

    return resolve


def accident_key(device_id: str, trapped_opened_at: int) -> str:
    return f"accident:{device_id}:{trapped_opened_at}"


class EventClock:
    """The stage's "now" for the clocks: device time, with a processing-time guard.

    ``now`` = the highest device time seen (alert ``changed_at``, dispatch ``ts``, the worker's
    watermark) + the wall time elapsed since that highest value was last raised.

    Why device time: escalations must follow the incident's own time line (``opened_at`` is the
    device's), so a replay of the archived streams reproduces them, and a test can walk 30 minutes
    in a second. Why the guard: device time only moves when something arrives; a quiet city (no
    readings, a worker down) must not stop a trapped passenger's clock. And a trapped event that
    reaches sesmon 6 minutes late (a buffered 4G terminal) meets a "now" already 6 minutes past
    its ``opened_at``, so it escalates at once. ``guard=False`` (replay): now is device time only.

    ``max_ahead_ms`` (guard mode): a device time further than this ahead of the wall clock does
    not move the clock (counted in ``ignored_future``), so one terminal with a broken clock
    cannot fire every open incident's escalations. Now never goes backwards.
    """

    def __init__(
        self,
        *,
        guard: bool = True,
        wall_ms: Callable[[], int] | None = None,
        max_ahead_ms: int | None = None,
    ) -> None:
        self.guard = guard
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.max_ahead_ms = max_ahead_ms
        self.high: int | None = None  # highest device time accepted
        self.raised_wall: int = 0  # wall ms when ``high`` was last raised
        self.floor: int | None = None  # the last now returned (now is monotonic)
        self.ignored_future = 0

    def observe(self, ts_ms: int | None) -> bool:
        """A device/event time seen; True when it raised the clock."""
        if ts_ms is None:
            return False
        if self.high is not None and ts_ms <= self.high:
            return False
        wall = self.wall_ms()
        if self.guard and self.max_ahead_ms is not None and ts_ms > wall + self.max_ahead_ms:
            self.ignored_future += 1
            return False
        self.high, self.raised_wall = ts_ms, wall
        return True

    def now(self) -> int | None:
        """Now in device time (None before any device time was seen)."""
        if self.high is None:
            return self.floor
        value = self.high
        if self.guard:
            value += max(0, self.wall_ms() - self.raised_wall)
        if self.floor is not None and value < self.floor:
            value = self.floor
        self.floor = value
        return value

    def state(self) -> dict[str, int | None]:
        """What to store: a restart resumes the same now (in guard mode counting the time down)."""
        return {"high": self.high, "raised_wall": self.raised_wall, "floor": self.floor}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        if state:
            self.high, self.raised_wall, self.floor = (
                state.get("high"),
                state.get("raised_wall", 0),
                state.get("floor"),
            )


#: deadlines of incidents no longer in memory the heap may hold beyond 4 per incident in it
DUE_SLACK = 1024
#: the census entries (escalation, sla_breach) an idle incident can have: shared, not one per incident
_CENSUS_ENTRIES = {
    (level, breach): (level, breach) for level in range(MAX_ESCALATION + 1) for breach in (False, True)
}


def _census_entry(incident: Incident) -> tuple[int, bool]:
    key = (incident.escalation, incident.sla_breach)
    return _CENSUS_ENTRIES.get(key, key)


# deadline kinds in the order they fire when due at the same time
_ACCEPT, _ON_SITE, _ACCIDENT = 0, 1, 2
_DUE_FIELD = {_ACCEPT: "accept_due", _ON_SITE: "on_site_due", _ACCIDENT: "accident_due"}


class ResponseLoop:
    """Incidents in memory, the inputs that change them, and the changes to page.

    The stage stores :meth:`take_dirty` (with the changes, in one transaction) before it commits
    the Kafka offsets that produced them, so every effect survives a crash and a re-read input is
    a no-op. ``lookup`` finds incidents no longer in memory (closed ones, in the store) so a late
    action on them is ``after_close`` or a duplicate, not ``unknown_alert``.

    ``keep_idle=False`` (the stage, which stores every incident): an open incident whose clocks no
    longer run (resolved by telemetry, or never clocked) leaves memory once :meth:`take_dirty` hands
    it over to be stored; only its census entry stays (:attr:`idle`), and ``lookup`` brings it back
    for a later action. Why: nothing closes most of them (a P3, a P1 resolved by the rules and never
    closed by a responder), so the stage held every incident it ever opened, ≈3 KB each
    (``SESMON_TRACEMALLOC=1`` on bench/e2e.py: 13,000 incidents, 44 MB of pydantic models, in 7
    minutes). A clock that no longer runs never runs again (an alert resolved stays resolved).
    """

    def __init__(
        self,
        config: ClockConfig | None = None,
        incidents: Iterable[Incident] = (),
        *,
        resolver: Resolver | None = None,
        reported_accidents: Mapping[str, str] | None = None,
        lookup: Callable[[str], Incident | None] | None = None,
        keep_idle: bool = True,
    ) -> None:
        self.config = config or ClockConfig()
        self.resolver = resolver or default_resolver(self.config.centre_id)
        self.lookup = lookup
        self.keep_idle = keep_idle
        self.open: dict[str, Incident] = {}
        #: open incidents not kept in memory (``keep_idle=False``): alert_id -> (escalation, sla_breach)
        self.idle: dict[str, tuple[int, bool]] = {}
        #: accident key -> the alert_id whose change paged the regulator with it
        self.reported_accidents: dict[str, str] = dict(reported_accidents or {})
        self._dirty: dict[str, Incident] = {}
        self._new_accidents: dict[str, str] = {}
        self._due: list[tuple[int, str, int]] = []  # (deadline, alert_id, kind): a heap
        self.counters: dict[str, int] = {}
        for incident in incidents:
            if incident.is_open and not keep_idle and not incident.running:
                self.idle[incident.alert_id] = _census_entry(incident)
            elif incident.is_open:
                self.open[incident.alert_id] = incident
                self._schedule(incident)

    # ------------------------------------------------------------------ inputs
    def on_alert(self, alert: Alert) -> list[IncidentChange]:
        """An alert change from the rules: open on first sight, record a resolution once."""
        incident = self._find(alert.alert_id)
        if incident is None:
            incident = self._open(alert)
            if alert.state == "firing":
                return [self._change(incident, "opened", incident.opened_at)]
            # first seen resolved (the stage started late): one change with both entries
            self._resolve(incident, alert.changed_at)
            return [self._change(incident, "resolved", alert.changed_at)]
        if alert.state == "resolved" and incident.alert_state == "firing":
            self._resolve(incident, alert.changed_at)
            return [self._change(incident, "resolved", alert.changed_at)]
        self._count("alert_repeats")
        return []

    def on_dispatch(self, action: DispatchLike) -> DispatchResult:
        """A responder's action: applied, a duplicate, or refused with a reason."""
        name, by, ts = action.action, action.by, int(action.ts)
        if name not in ACTIONS:
            return self._refuse("bad_action", f"unknown action {name!r}")
        incident = self._find(action.alert_id)
        if incident is None:
            return self._refuse("unknown_alert", f"no incident {action.alert_id}")
        if any(e.what == name and e.by == by and e.at == ts for e in incident.timeline):
            self._count("dispatch_duplicates")
            return DispatchResult("duplicate")
        if not incident.is_open:
            return self._refuse("after_close", f"{name} after {incident.state}")
        if name == "escalate":
            if incident.escalation >= MAX_ESCALATION:
                return self._refuse("bad_action", "already at level 3")
            incident.escalation += 1
            self._entry(incident, ts, "escalate", by)
            return self._applied([self._change(incident, f"escalation:{incident.escalation}", ts)])
        if name == "false_alarm":
            incident.state = "false_alarm"
            self._entry(incident, ts, name, by)
            self._closed(incident)
            return self._applied([self._change(incident, f"dispatch:{name}", ts)])
        rank = RANKS[name]
        if rank <= incident.rank:
            current = next(a for a, r in RANKS.items() if r == incident.rank)
            return self._refuse("out_of_order", f"{name} after {current}")
        incident.rank = rank
        self._entry(incident, ts, name, by)
        if rank == CLOSED:
            incident.state = "closed"
            self._closed(incident)
        return self._applied([self._change(incident, f"dispatch:{name}", ts)])

    def on_clock(self, now_ms: int | None) -> list[IncidentChange]:
        """Escalations, SLA breaches and accidents due by ``now_ms`` (each fires once)."""
        out: list[IncidentChange] = []
        if now_ms is None:
            return out
        due = self._due
        while due and due[0][0] <= now_ms:
            at, alert_id, kind = heapq.heappop(due)
            incident = self.open.get(alert_id)
            if incident is None or getattr(incident, _DUE_FIELD[kind]) != at or not incident.running:
                continue
            change = self._fire(incident, kind, at)
            if change is not None:
                out.append(change)
        return out

    # ------------------------------------------------------------------ for the stage
    def take_dirty(self) -> list[Incident]:
        """Incidents changed since the last call: store them (with their changes) in one batch.
        With ``keep_idle=False`` the open ones whose clocks stopped leave memory here (see the class)."""
        dirty, self._dirty = list(self._dirty.values()), {}
        if not self.keep_idle:
            for incident in dirty:
                if not incident.is_open:
                    self.idle.pop(incident.alert_id, None)
                elif not incident.running:
                    self.open.pop(incident.alert_id, None)
                    self.idle[incident.alert_id] = _census_entry(incident)
            if len(self._due) > 4 * len(self.open) + DUE_SLACK:  # deadlines of incidents gone
                self._due = [entry for entry in self._due if entry[1] in self.open]
                heapq.heapify(self._due)
        return dirty

    def census(self) -> dict[str, Any]:
        """Open incidents (in memory and idle): how many, by escalation level, with an SLA breach."""
        levels: dict[str, int] = {}
        breaches = 0
        for escalation, breach in [(i.escalation, i.sla_breach) for i in self.open.values()] + list(
            self.idle.values()
        ):
            level = f"level_{escalation}"
            levels[level] = levels.get(level, 0) + 1
            breaches += breach
        return {"open": len(self.open) + len(self.idle), "by_escalation": levels, "sla_breaches": breaches}

    def take_accidents(self) -> dict[str, str]:
        """Accident keys reported since the last call (key -> alert_id): store them with the batch."""
        new, self._new_accidents = self._new_accidents, {}
        return new

    def get(self, alert_id: str) -> Incident | None:
        return self._find(alert_id)

    def next_due(self) -> int | None:
        """The earliest deadline still scheduled (a hint for how long the stage may sleep)."""
        return self._due[0][0] if self._due else None

    # ------------------------------------------------------------------ internals
    def _find(self, alert_id: str) -> Incident | None:
        incident = self.open.get(alert_id) or self._dirty.get(alert_id)
        if incident is None and self.lookup is not None:
            incident = self.lookup(alert_id)
        return incident

    def _open(self, alert: Alert) -> Incident:
        cfg = self.config
        followup = alert.rule in cfg.followup_rules
        clocked = alert.level in cfg.clock_levels and not followup
        key, parent = "", ""
        if followup:
            since = next((e for e in alert.evidence if "open_since" in e), None)
            trapped_at = int(since["open_since"]) if since else alert.opened_at - int(cfg.accident_s * 1000)
            parent = str(since.get("of", "")) if since else ""
            key = accident_key(alert.device_id, trapped_at)
        elif clocked and alert.rule in cfg.accident_rules:
            key = accident_key(alert.device_id, alert.opened_at)
        opened = alert.opened_at
        incident = Incident(
            alert_id=alert.alert_id,
            rule=alert.rule,
            level=str(alert.level),
            kind=str(alert.kind),
            device_id=alert.device_id,
            district=alert.district,
            firm_id=alert.firm_id,
            user_unit_id=alert.user_unit_id,
            title=alert.title,
            opened_at=opened,
            changed_at=opened,
            escalation=1 if clocked else 0,
            clocked=clocked,
            accident=followup,  # the rules' trapped_2h alert IS the accident
            accident_key=key,
            followup=followup,
            followup_of=parent,
            accept_due=opened + int(cfg.accept_s * 1000) if clocked else None,
            on_site_due=opened + int(cfg.on_site_for(alert.district) * 1000) if clocked else None,
            accident_due=opened + int(cfg.accident_s * 1000) if clocked and key else None,
            rule_receivers=list(alert.receivers),
        )
        self._entry(incident, opened, "opened", BY_RULES)
        self.open[incident.alert_id] = incident
        self._schedule(incident)
        self._count("incidents_opened")
        return incident

    def _schedule(self, incident: Incident) -> None:
        for kind, name in _DUE_FIELD.items():
            at = getattr(incident, name)
            if at is not None:
                heapq.heappush(self._due, (at, incident.alert_id, kind))

    def _resolve(self, incident: Incident, at: int) -> None:
        incident.alert_state = "resolved"
        self._entry(incident, at, "resolved", BY_RULES)

    def _fire(self, incident: Incident, kind: int, at: int) -> IncidentChange | None:
        if kind == _ACCEPT:
            if incident.rank >= ACCEPTED or incident.escalation >= 2:
                return None
            incident.escalation = 2
            self._entry(incident, at, "escalated", BY_CLOCK)
            self._count("escalations")
            return self._change(incident, "escalation:2", at)
        if kind == _ON_SITE:
            if incident.rank >= ON_SITE or incident.sla_breach:
                return None
            if incident.escalation < MAX_ESCALATION:
                incident.escalation = MAX_ESCALATION
                self._entry(incident, at, "escalated", BY_CLOCK)
                self._count("escalations")
            incident.sla_breach = True
            self._entry(incident, at, "sla_breach", BY_CLOCK)
            self._count("sla_breaches")
            return self._change(incident, "sla_breach", at)
        if incident.rank >= FREED or incident.accident:
            return None
        incident.accident = True
        self._entry(incident, at, "accident", BY_CLOCK)
        self._count("accidents")
        return self._change(incident, "accident", at, reports_accident=True)

    def _entry(self, incident: Incident, at: int, what: str, by: str) -> None:
        incident.timeline.append(TimelineEntry(at=at, what=what, by=by, level=incident.escalation))
        incident.changed_at = max(incident.changed_at, at)
        self._dirty[incident.alert_id] = incident

    def _closed(self, incident: Incident) -> None:
        self.open.pop(incident.alert_id, None)  # stays in _dirty until stored; the heap drops it lazily
        self.idle.pop(incident.alert_id, None)

    def _change(
        self, incident: Incident, what: str, at: int, *, reports_accident: bool = False
    ) -> IncidentChange:
        unique = {(r.kind, r.id): r for r in self.resolver(incident)}  # a receiver listed twice: one page
        receivers = [_as_receiver(r) for r in unique.values()]
        suppressed = False
        # an accident report: the clock's accident change, or any change of a follow-up incident
        # (the rules' trapped_2h alert is the accident). The first report that reaches the
        # regulator claims the key; every later report under it goes without the regulator.
        key = incident.accident_key
        if key and (reports_accident or incident.followup) and any(r.kind == "regulator" for r in receivers):
            if key not in self.reported_accidents:
                self.reported_accidents[key] = self._new_accidents[key] = incident.alert_id
            else:
                receivers = [r for r in receivers if r.kind != "regulator"]
                suppressed = True
                self._count("regulator_pages_suppressed")
        return IncidentChange(
            change_id=f"{incident.alert_id}|{what}",
            alert_id=incident.alert_id,
            what=what,
            at=at,
            receivers=receivers,
            incident=incident.model_dump(mode="json"),
            regulator_suppressed=suppressed,
        )

    def _applied(self, changes: list[IncidentChange]) -> DispatchResult:
        self._count("dispatch_applied")
        return DispatchResult("applied", changes)

    def _refuse(self, reason: RefusalReason, detail: str) -> DispatchResult:
        self._count(f"dispatch_refused_{reason}")
        return DispatchResult("refused", reason=reason, detail=detail)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _as_receiver(r: Any) -> Receiver:
    return r if isinstance(r, Receiver) else Receiver(kind=r.kind, id=r.id)
