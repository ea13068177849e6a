"""Per-unit rule state: typed in memory, compact and versioned on the wire.

The worker keeps one :class:`UnitState` per unit in a changelog table (JSON). In memory every
field has a name and a type; on the wire (``to_json``) the same fields are written under short
keys with ``"sv": 2`` so a table of a city's units stays small. :func:`load` reads version 2
and the unversioned dict the 2026.11 engine wrote (version 1), so a worker upgraded in place
resumes every unit where it was: open alerts keep their ids, pending durations keep their
start, hazards keep their history.

Faust's JSON serializer (orjson with a ``default`` hook) calls ``__json__`` on objects it does
not know, so ``Outcome.state`` can be stored as is; it is deliberately not a dataclass, which
orjson would serialise field by field with long names.
"""

from __future__ import annotations

from typing import Any

import orjson

VERSION = 2
NO_DUE = 2**62


class CondEntry:
    """A telemetry condition that holds: pending until ``since + wait_ms`` (and ``seen`` readings)."""

    __slots__ = ("evidence", "last_seen", "matured", "seen", "since", "wait_ms")

    def __init__(
        self,
        since: int,
        matured: bool,
        evidence: dict[str, Any],
        seen: int = 1,
        last_seen: int = 0,
        wait_ms: int | None = 0,
    ) -> None:
        self.since = since  # event time the condition began
        self.matured = matured  # held long enough (and confirmed): the alert may open
        self.evidence = evidence  # the readings that began it
        self.seen = seen  # readings with distinct times that showed it (confirm_readings)
        self.last_seen = last_seen or since
        self.wait_ms = wait_ms  # how long it must hold (None: a version-1 entry, the rule's duration)

    def __repr__(self) -> str:
        return (
            f"CondEntry(since={self.since}, matured={self.matured}, seen={self.seen}, wait_ms={self.wait_ms})"
        )


class AlertEntry:
    """An open alert: its id, when it opened, its title, and a deferred clear while flapping."""

    __slots__ = ("alert_id", "clear_at", "clear_evidence", "opened", "title")

    def __init__(
        self, alert_id: str, opened: int, title: str, clear_at: int = 0, clear_evidence: Any = None
    ) -> None:
        self.alert_id = alert_id
        self.opened = opened  # event time the condition began (part of the id)
        self.title = title
        self.clear_at = clear_at  # flapping: cleared since then, resolves after hold_s (0: not clearing)
        self.clear_evidence = clear_evidence

    def __repr__(self) -> str:
        return f"AlertEntry({self.alert_id!r}, opened={self.opened}, clear_at={self.clear_at})"


class UnitState:
    """Everything the rules remember about one unit between messages."""

    __slots__ = (
        "alerts",
        "clear_since",
        "conditions",
        "counts",
        "device_id",
        "due",
        "events",
        "first_ts",
        "hazards",
        "held",
        "inspection_due",
        "kind",
        "last_maintenance",
        "last_rx",
        "late_count",
        "maint_end",
        "maint_start",
        "max_ts",
        "mode",
        "mode_ts",
        "next_calendar",
        "offline_rx",
        "open_times",
        "rate_anchors",
        "reorder",
        "resolved_at",
        "seq_ahead",
        "seq_next",
        "values",
        "watermark_seq",
        "watermark_ts",
    )

    def __init__(self, device_id: str, kind: str) -> None:
        self.device_id = device_id
        self.kind = kind  # elevator | boiler
        # ---- time
        self.max_ts = 0  # newest device ts seen (drives the reorder buffer's release)
        self.watermark_ts = 0  # ts of the last evaluated reading: older ones are late
        self.watermark_seq = -1  # its seq
        self.last_rx = 0  # last receive (processing) time
        self.first_ts = 0  # first device ts seen
        self.reorder: list[tuple[int, int, dict[str, Any]]] = []  # (ts, seq, body) sorted, not yet evaluated
        self.seq_next = 0  # lowest device seq not seen yet (0: none seen): the sequence has no gap below it
        self.seq_ahead: list[int] = []  # seqs seen beyond a gap, sorted (bounded: see reorder.note_seq)
        # ---- telemetry and conditions
        self.values: dict[str, Any] = {}  # merged telemetry (sample-and-hold), plus ts/seq and derived values
        self.mode: str | None = None  # newest elevator service mode on arrival (events are not buffered)
        self.mode_ts = 0
        self.rate_anchors: dict[str, tuple[int, float]] = {}  # derived rates: (ts, value) at the window start
        self.conditions: dict[str, CondEntry] = {}  # rule id -> telemetry condition that holds
        self.events: dict[str, int] = {}  # rule id -> ts of the terminal event that raised it
        self.clear_since: dict[str, int] = {}  # rule id -> since when its sustained clear (clear_after) holds
        # ---- alerts
        self.alerts: dict[str, AlertEntry] = {}  # rule id -> open alert
        self.resolved_at: dict[str, int] = {}  # rule id -> last resolve ts (older telemetry must not reopen)
        self.held: dict[str, int] = {}  # rule id -> ts a wanted alert was held back (suppressed, inhibited)
        self.open_times: dict[str, list[int]] = {}  # rule id -> recent open times (flap damping)
        self.counts: dict[str, list[int]] = {}  # count rule id -> counted opening times in its window
        self.offline_rx = 0  # receive time of the Last Will that opened `offline` (0: none)
        # ---- hidden dangers, maintenance, calendar
        self.hazards: dict[str, dict[str, Any]] = {}  # hazard id -> record (open, or closed within retention)
        self.maint_start = 0  # maintenance window from the last maintenance report
        self.maint_end = 0
        self.last_maintenance = 0  # event time of the last maintenance
        self.inspection_due: int | None = None  # from the last inspection report (ms); else the registry's
        self.next_calendar = 0  # event time of the next date-rule check
        self.due = 0  # processing time from which tick() has work (read by the worker's index)
        self.late_count = 0  # readings counted late, ever

    # ------------------------------------------------------------------ wire format

    def to_json(self) -> dict[str, Any]:
        """Compact JSON form (version 2). Keys are short: one record per unit in a changelog."""
        return {
            "sv": VERSION,  # state format version ("v" was the values key of version 1)
            "d": self.device_id,
            "k": self.kind,
            "mx": self.max_ts,
            "wm": self.watermark_ts,
            "ws": self.watermark_seq,
            "rx": self.last_rx,
            "fs": self.first_ts,
            "b": [[ts, seq, body] for ts, seq, body in self.reorder],
            "sn": self.seq_next,
            "sa": self.seq_ahead,
            "val": self.values,
            "md": [self.mode_ts, self.mode] if self.mode is not None else None,
            "rt": {k: [t, x] for k, (t, x) in self.rate_anchors.items()},
            "c": {
                rid: [e.since, int(e.matured), e.evidence, e.seen, e.last_seen, e.wait_ms]
                for rid, e in self.conditions.items()
            },
            "e": self.events,
            "ca": self.clear_since,
            "a": {
                rid: [a.alert_id, a.opened, a.title, a.clear_at, a.clear_evidence]
                for rid, a in self.alerts.items()
            },
            "rz": self.resolved_at,
            "sp": self.held,
            "f": self.open_times,
            "n": self.counts,
            "ox": self.offline_rx,
            "hz": self.hazards,
            "m": [self.maint_start, self.maint_end],
            "ml": self.last_maintenance,
            "id": self.inspection_due,
            "cn": self.next_calendar,
            "due": self.due,
            "late": self.late_count,
        }

    __json__ = to_json  # Faust's JSON codec (faust.utils.json.on_default) calls this

    def __repr__(self) -> str:
        return (
            f"UnitState({self.device_id!r}, {self.kind}, watermark={self.watermark_ts}, "
            f"buffered={len(self.reorder)}, alerts={sorted(self.alerts)}, hazards={len(self.hazards)})"
        )


def _from_v2(data: dict[str, Any]) -> UnitState:
    st = UnitState(data["d"], data["k"])
    st.max_ts, st.watermark_ts, st.watermark_seq = data["mx"], data["wm"], data["ws"]
    st.last_rx, st.first_ts = data["rx"], data["fs"]
    st.reorder = [(ts, seq, body) for ts, seq, body in data["b"]]
    st.seq_next, st.seq_ahead = data.get("sn", 0), data.get("sa", [])
    st.values = data["val"]
    md = data.get("md")
    if md is not None:
        st.mode_ts, st.mode = md
    st.rate_anchors = {k: (t, x) for k, (t, x) in data.get("rt", {}).items()}
    st.conditions = {
        rid: CondEntry(since, bool(matured), ev, seen, last, wait)
        for rid, (since, matured, ev, seen, last, wait) in data["c"].items()
    }
    st.events = data["e"]
    st.clear_since = data.get("ca", {})
    st.alerts = {rid: AlertEntry(*entry) for rid, entry in data["a"].items()}
    st.resolved_at, st.held = data["rz"], data.get("sp", {})
    st.open_times, st.counts = data["f"], data["n"]
    st.offline_rx = data.get("ox", 0)
    st.hazards = data["hz"]
    st.maint_start, st.maint_end = data["m"]
    st.last_maintenance, st.inspection_due = data["ml"], data["id"]
    st.next_calendar, st.due, st.late_count = data["cn"], data["due"], data["late"]
    return st


def _hazard_v1(hz: dict[str, Any]) -> dict[str, Any]:
    """A 2026.11 hazard record: drop the calendar escalation, add the stop-use fields."""
    out = {k: v for k, v in hz.items() if k not in ("escalate_at", "escalate_every_days")}
    out.setdefault("use_stopped", False)
    out.setdefault("use_stopped_at", None)
    return out


def _from_v1(data: dict[str, Any]) -> UnitState:
    """The unversioned dict of the 2026.11 engine (keys d, k, mx, wm, ws, rx, fs, b, v, md, c, ...)."""
    st = UnitState(data["d"], data["k"])
    st.max_ts, st.watermark_ts, st.watermark_seq = data["mx"], data["wm"], data["ws"]
    st.last_rx, st.first_ts = data["rx"], data["fs"]
    st.reorder = [(ts, seq, body) for ts, seq, body in data["b"]]
    st.values = data["v"]
    md = data.get("md")
    if md is not None:
        st.mode_ts, st.mode = md
    st.rate_anchors = {k: (t, x) for k, (t, x) in data.get("rt", {}).items()}
    conditions: dict[str, CondEntry] = {}
    for rid, ent in data["c"].items():
        if ent[1]:  # matured: [since, 1, evidence]
            conditions[rid] = CondEntry(ent[0], True, ent[2], wait_ms=0)
        else:  # pending: [since, 0, evidence, seen, last_seen]; its duration is the rule's (None)
            conditions[rid] = CondEntry(ent[0], False, ent[2], ent[3], ent[4], wait_ms=None)
    st.conditions = conditions
    st.events = dict(data["e"])
    st.alerts = {rid: AlertEntry(*entry) for rid, entry in data["a"].items()}
    st.resolved_at = dict(data["rz"])
    st.held = dict(data.get("sp", {}))
    st.open_times, st.counts = dict(data["f"]), dict(data["n"])
    st.offline_rx = data.get("ox", 0)
    st.hazards = {hid: _hazard_v1(hz) for hid, hz in data["hz"].items()}
    st.maint_start, st.maint_end = data["m"]
    st.last_maintenance, st.inspection_due = data["ml"], data["id"]
    st.next_calendar, st.due, st.late_count = data["cn"], data["due"], data["late"]
    return st


def load(data: Any) -> UnitState | None:
    """A stored state in any version (a :class:`UnitState`, a v2 or a v1 dict); None for none."""
    if data is None or isinstance(data, UnitState):
        return data
    if not data:
        return None
    if isinstance(data, bytes | bytearray | memoryview):  # as the worker's table stores it
        data = orjson.loads(data)
    if not isinstance(data, dict):
        raise ValueError(f"unknown rule state format ({type(data).__name__})")
    version = data.get("sv", 1)
    if version == 2:
        return _from_v2(data)
    if version == 1 and "b" in data and "d" in data:
        return _from_v1(data)
    raise ValueError(f"unknown rule state format (version {version!r})")


def due_of(data: Any) -> int | None:
    """``due`` of a stored state without decoding it (the worker sweeps every unit's)."""
    if data is None:
        return None
    if isinstance(data, UnitState):
        return data.due
    if isinstance(data, bytes | bytearray | memoryview):
        data = orjson.loads(data)
    return int(data["due"]) if data else None
