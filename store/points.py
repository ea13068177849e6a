"""Kafka records → InfluxDB points (DESIGN.md §7), as line protocol.

- ``telemetry`` → ``elevator`` / ``boiler``: tags device_id, district, firm_id; fields = the
  reading, seq, received_ms; time = device ``ts``
- ``events`` → ``event``: tags device_id, kind, district, firm_id, code, state; fields seq,
  received_ms, detail (JSON text); time = device ``ts``
- ``alerts`` → ``alert``: tags device_id, kind, district, firm_id, rule, level, state; fields
  alert_id, title, opened_at, open_s, escalation, receivers; time = ``changed_at``
- ``hazards`` → ``hazard``: tags device_id, kind, district, firm_id, grade, status, supervision,
  source; fields hazard_id, deadline, overdue, open, closed_on_time, …; time = ``updated_at``
- ``dispatch`` → ``dispatch``: tags device_id, district, firm_id, rule, action; fields alert_id,
  actor (its ``by``: BY is an InfluxQL keyword), since_alarm_s, received_ms; time = the action's ``ts``
- ``pipeline`` → ``pipeline``: tag stage; every counter, flattened (numbers as floats); time ``at``
- ``kpi`` → ``safety_kpi``: tags scope, scope_id, kind, window; the DESIGN.md §6 numerators,
  denominators and ratios (as the kpi stage computed them); time = the "as of" instant
- ``unit`` (the city map, :class:`UnitMap`): tags device_id, kind, district, firm_id; fields lat,
  lon, state (:data:`UNIT_STATES`), state_rank, online, mode, firing (the rules firing, sorted,
  comma-joined); written when a unit's state changes (``status``, telemetry ``mode``, an alert
  opening or clearing) and for every registry unit once per ``store_unit_refresh_s``; time = the
  store's clock (it is the map's *current* state: a refresh must never hide a newer change)

Identity: a point is its series (measurement + tags) and time, so a record read twice (the
sink is at-least-once) overwrites itself with the same values. District and firm come from
the registry for device records (alerts and hazards carry their own).

Field types must never change within a measurement (InfluxDB refuses the point): telemetry
fields keep the type the message schema declares; a field a schema does not know is written
as a float when numeric; pipeline counters are always floats.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from metrics.inputs import parse_alert_id
from metrics.kpi import SafetyKpi
from sesmon.contract.groups import envelopes_of
from sesmon.contract.registry import Unit
from sesmon.contract.schemas import TELEMETRY_MODELS
from store.lineproto import encode, series_prefix

#: the Kafka streams the sink stores (``status`` only moves the map's :class:`UnitMap`)
STORED_STREAMS = ("telemetry", "events", "status", "alerts", "hazards", "dispatch", "pipeline", "kpi")
#: streams ingest writes: a record there may carry many envelopes (``sesmon.contract.groups``)
GROUPED_STREAMS = frozenset({"telemetry", "events", "status", "dispatch"})


class BadRecord(ValueError):
    """A record the sink cannot turn into points (counted and skipped; its offset still moves on)."""


def _int_fields(model: type) -> frozenset[str]:
    """Fields a schema declares ``int`` (every other number is written as a float)."""
    out = set()
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        args = set(typing.get_args(info.annotation)) | {info.annotation}
        if int in args and float not in args:
            out.add(name)
    return frozenset(out)


_INT_FIELDS = {str(kind.value): _int_fields(model) for kind, model in TELEMETRY_MODELS.items()}
_KNOWN_FIELDS = {str(kind.value): frozenset(model.model_fields) for kind, model in TELEMETRY_MODELS.items()}
_NOT_FIELDS = ("device_id", "ts")
#: (kind, *field names) -> (names the schema does not know, names it declares int): the same on
#: every reading of a kind, so worked out once (the sink's hot path)
_shapes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _shape_of(kind: str, names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    fields = set(names).difference(_NOT_FIELDS)
    extras = tuple(n for n in names if n in fields - _KNOWN_FIELDS.get(kind, frozenset()))
    ints = tuple(n for n in names if n in fields & _INT_FIELDS.get(kind, frozenset()))
    if len(_shapes) >= 10_000:
        _shapes.clear()
    _shapes[(kind, *names)] = (extras, ints)
    return extras, ints


@dataclass(slots=True)
class RecordLines:
    """The lines of one Kafka record and what it held: envelopes, and those that gave no point."""

    lines: list[str]
    envelopes: int
    bad_envelopes: int = 0
    error: str = ""  # why the last bad envelope gave no point (for the log)


class PointMaker:
    """Turns the raw value of a record on one of :data:`STORED_STREAMS` into lines.

    ``place`` maps a device_id to its (district, firm_id) — the registry's — or ``None``;
    ``units``, when given, follows each unit's state for the city map (``unit`` points).
    """

    def __init__(
        self, place: Callable[[str], tuple[str, str] | None] | None = None, units: UnitMap | None = None
    ) -> None:
        self.place = place or (lambda _device: None)
        self.units = units
        self._tags: dict[str, dict[str, str]] = {}  # device_id -> its tags (call forget() on a new registry)
        self._prefixes: dict[tuple[str, str], str] = {}  # (measurement, device_id) -> its series prefix
        self.by_stream: dict[str, Callable[[Any], list[str]]] = {
            "telemetry": self.telemetry,
            "events": self.event,
            "status": self.status,
            "alerts": self.alert,
            "hazards": self.hazard,
            "dispatch": self.dispatch,
            "pipeline": self.pipeline,
            "kpi": self.kpi,
        }

    def lines(self, stream: str, value: bytes | None) -> list[str]:
        """Lines for one record (possibly none); :class:`BadRecord` if it is not what the topic holds."""
        convert = self.by_stream.get(stream)
        if convert is None:
            raise BadRecord(f"stream {stream!r} is not stored")
        try:
            record = orjson.loads(value or b"")
        except orjson.JSONDecodeError as exc:
            raise BadRecord(f"not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise BadRecord(f"a JSON {type(record).__name__}, not an object")
        try:
            return [line for line in convert(record) if line]
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRecord(f"{stream} record without what it needs: {exc!r}") from None

    def record_lines(self, stream: str, value: bytes | None) -> RecordLines:
        """Lines for every envelope of one record, grouped or single (:func:`envelopes_of`).

        Why per envelope: ingest packs many readings into one record, and one envelope that
        lacks what its stream needs must not cost the points of the others beside it. A
        record that is not JSON, or holds no envelope at all, is a :class:`BadRecord`.
        """
        if stream not in GROUPED_STREAMS:
            return RecordLines(self.lines(stream, value), 1)
        try:
            envelopes = envelopes_of(value or b"")
        except ValueError as exc:  # orjson.JSONDecodeError
            raise BadRecord(f"not JSON: {exc}") from None
        if not envelopes:
            raise BadRecord("neither an envelope nor an array of envelopes")
        convert = self.by_stream[stream]
        made = RecordLines([], len(envelopes))
        for envelope in envelopes:
            try:
                made.lines += [line for line in convert(envelope) if line]
            except (KeyError, TypeError, ValueError) as exc:
                made.bad_envelopes += 1
                made.error = f"{stream} envelope without what it needs: {exc!r}"
        return made

    def _unit_tags(self, device_id: str) -> dict[str, str]:
        tags = self._tags.get(device_id)
        if tags is None:
            placed = self.place(device_id)
            tags = {"device_id": device_id}
            if placed is not None:
                tags |= {"district": placed[0], "firm_id": placed[1]}
            if len(self._tags) >= 1_000_000:
                self._tags.clear()
            self._tags[device_id] = tags
        return tags

    def _series_prefix(self, measurement: str, device_id: str) -> str:
        """A unit's ``measurement,tags `` line start, kept per unit (the same on each of its readings)."""
        prefix = series_prefix(measurement, self._unit_tags(device_id))
        if len(self._prefixes) >= 1_000_000:
            self._prefixes.clear()
        self._prefixes[(measurement, device_id)] = prefix
        return prefix

    def forget(self) -> None:
        """The registry changed: look every unit's district and firm up again."""
        self._tags.clear()
        self._prefixes.clear()

    # ------------------------------------------------------------------ device streams

    def telemetry(self, env: dict[str, Any]) -> list[str]:
        kind = env["kind"]
        body: dict[str, Any] = env["body"]
        device_id = env.get("device_id") or body["device_id"]
        extras, ints = _shapes.get((kind, *body)) or _shape_of(kind, tuple(body))
        for name in _NOT_FIELDS:
            body.pop(name, None)
        for name in extras:
            value = body[name]
            if type(value) is int:  # an extra the schema does not know: numbers are floats
                body[name] = float(value)
            elif isinstance(value, dict | list):
                del body[name]  # structures are not readings
        for name in ints:  # validated ints stay ints (and a float from a foreign producer too)
            value = body[name]
            if type(value) is float and value.is_integer():
                body[name] = int(value)
        body["received_ms"] = int(env["received_ms"])
        prefix = self._prefixes.get((kind, device_id)) or self._series_prefix(kind, device_id)
        line = encode(kind, {}, body, env["ts"], prefix)
        units = self.units
        if units is not None and units.modes.get(device_id, _UNSEEN) != body.get("mode"):
            return [line, *units.mode(device_id, kind, body.get("mode"))]  # the rare case: a mode change
        return [line]

    def status(self, env: dict[str, Any]) -> list[str]:
        """``online`` / ``offline`` (a Last Will too): no point of its own, only the map's state."""
        body = env["body"]
        online = {"online": True, "offline": False}[body["status"]]
        if self.units is None:
            return []
        return self.units.status(env.get("device_id") or body["device_id"], online)

    def event(self, env: dict[str, Any]) -> list[str]:
        body = env["body"]
        device_id = env.get("device_id") or body["device_id"]
        tags = {
            **self._unit_tags(device_id),
            "kind": env.get("kind"),
            "code": body["code"],
            "state": body["state"],
        }
        fields: dict[str, Any] = {
            "seq": int(body.get("seq", env.get("seq") or 0)),
            "received_ms": int(env["received_ms"]),
        }
        if body.get("detail"):
            fields["detail"] = orjson.dumps(body["detail"]).decode()
        return [encode("event", tags, fields, env["ts"])]

    def dispatch(self, env: dict[str, Any]) -> list[str]:
        body = env["body"]
        alert_id = str(body.get("alert_id") or env["alert_id"])
        parsed = parse_alert_id(alert_id)
        tags: dict[str, Any] = {"action": body["action"]}
        fields: dict[str, Any] = {
            "alert_id": alert_id,
            "actor": str(body.get("by", "")),
            "received_ms": int(env["received_ms"]),
        }
        if parsed is not None:
            device_id, rule, opened = parsed
            tags |= self._unit_tags(device_id) | {"rule": rule}
            fields["since_alarm_s"] = (int(body["ts"]) - opened) / 1000
        if env.get("publisher"):
            fields["publisher"] = str(env["publisher"])
        return [encode("dispatch", tags, fields, body["ts"])]

    # ------------------------------------------------------------------ rule outputs

    def alert(self, a: dict[str, Any]) -> list[str]:
        tags = {
            "device_id": a["device_id"],
            "kind": a.get("kind"),
            "district": a.get("district"),
            "firm_id": a.get("firm_id"),
            "rule": a["rule"],
            "level": a.get("level"),
            "state": a["state"],
        }
        fields = {
            "alert_id": str(a["alert_id"]),
            "title": str(a.get("title", "")),
            "rule_version": str(a.get("rule_version", "")),
            "opened_at": int(a["opened_at"]),
            "escalation": int(a.get("escalation", 0)),
            "open_s": (int(a["changed_at"]) - int(a["opened_at"])) / 1000,
            "receivers": len(a.get("receivers") or ()),
        }
        line = encode("alert", tags, fields, a["changed_at"])
        if self.units is None:
            return [line]
        return [line, *self.units.alert(a["device_id"], a["rule"], a["state"] == "firing")]

    def hazard(self, h: dict[str, Any]) -> list[str]:
        tags = {
            "device_id": h["device_id"],
            "kind": h.get("kind"),
            "district": h.get("district"),
            "firm_id": h.get("firm_id"),
            "grade": h["grade"],
            "status": h["status"],
            "supervision": h.get("supervision", "none"),
            "source": h.get("source"),
        }
        fields: dict[str, Any] = {
            "hazard_id": str(h["hazard_id"]),
            "title": str(h.get("title", "")),
            "rule": str(h.get("rule", "")),
            "opened_at": int(h["opened_at"]),
            "deadline": int(h["deadline"]),
            "overdue": bool(h.get("overdue", False)),
            "use_stopped": bool(h.get("use_stopped", False)),
            "reopened": int(h.get("reopened", 0)),
            "occurrences": int(h.get("occurrences", 1)),
            "open": h["status"] in ("reported", "rectified"),
        }
        if h.get("closed_on_time") is not None:
            fields["closed_on_time"] = bool(h["closed_on_time"])
        return [encode("hazard", tags, fields, h["updated_at"])]

    # ------------------------------------------------------------------ the pipeline itself

    def pipeline(self, stats: dict[str, Any]) -> list[str]:
        stage = str(stats["stage"])
        fields: dict[str, Any] = {}
        _flatten(stats, "", fields)
        for name in ("stage", "at"):
            fields.pop(name, None)
        return [encode("pipeline", {"stage": stage}, fields, stats["at"])]

    def kpi(self, row: dict[str, Any]) -> list[str]:
        """A ``safety_kpi`` row of the kpi stage (``kpi.rows.KpiRow.record``): its tags, fields and time."""
        return [encode("safety_kpi", dict(row["tags"]), dict(row["fields"]), int(row["time"]))]


def _flatten(value: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    """Counters as fields: numbers → float (a counter's type must never change), nested → ``a_b``."""
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, bool | str):
            out[name] = v
        elif isinstance(v, int | float):
            out[name] = float(v)
        elif isinstance(v, Mapping):
            _flatten(v, name + "_", out)
        elif isinstance(v, list | tuple):
            out[name] = ",".join(map(str, v))


def kpi_line(kpi: SafetyKpi, as_of_ms: int | None = None) -> str:
    """A ``safety_kpi`` point (tags scope, scope_id, kind, window), timed at the window's end."""
    return encode("safety_kpi", kpi.tags(), kpi.fields(), kpi.window.end_ms if as_of_ms is None else as_of_ms)


# --------------------------------------------------------------------------- the city map's unit states

#: what the city map shows of a unit; its index is ``state_rank`` (the map's colour: higher is worse)
UNIT_STATES = ("normal", "maintenance", "out_of_service", "offline", "fault", "trapped")
STATE_RANK = {state: rank for rank, state in enumerate(UNIT_STATES)}
#: alerts that mean passengers are trapped now
TRAPPED_RULES = frozenset({"elevator.trapped", "elevator.trapped_2h"})
#: the deadman alert: no message for N heartbeats (or the Last Will): offline, not a fault
OFFLINE_RULES = frozenset({"offline"})
#: calendar alerts (paperwork the hidden-danger board shows): the unit itself works
NOT_FAULT_RULES = frozenset({"inspection_due_soon", "inspection_overdue", "elevator.maintenance_overdue"})
_NOT_FAULTS = TRAPPED_RULES | OFFLINE_RULES | NOT_FAULT_RULES
_UNSEEN = object()  # a unit whose mode the map has not seen yet (None is "a reading without mode")


@dataclass(slots=True)
class UnitStatus:
    """What the map knows of one unit: its latest mode, status and the rules firing for it."""

    mode: str | None = None
    online: bool = True
    firing: set[str] = field(default_factory=set)
    shown: str = ""  # the state last written ("" = none yet)

    def state(self, in_use: bool = True) -> str:
        """The worst that applies: trapped > fault > offline > out_of_service > maintenance > normal."""
        if self.firing & TRAPPED_RULES:
            return "trapped"
        if self.firing - _NOT_FAULTS:
            return "fault"
        if not self.online or self.firing & OFFLINE_RULES:
            return "offline"
        if not in_use or self.mode == "out_of_service":
            return "out_of_service"
        if self.mode == "inspection":  # GB/T 24476 inspection (检修) operation: a technician at work
            return "maintenance"
        return "normal"


class UnitMap:
    """Each unit's state on the city overview map as ``unit`` points (tags, coordinates: the registry's).

    Why a point on every change *and* a refresh: the board reads ``last()`` over its time range,
    so a unit whose state has not changed for days must still have a point inside the range;
    every unit of the registry is rewritten once per ``refresh_s``, spread evenly over it (a
    bounded rate: ``n / refresh_s`` points a second, no burst). Units without coordinates (or
    not in the registry) give no point; they are counted in ``units_without_coordinates``.

    The telemetry hot path costs a dict lookup and a compare (:attr:`modes`); everything else
    here runs on status records, alert changes and the refresh. Not thread-safe: the stage's
    main thread owns it. ``clock`` (seconds, wall time) is injectable for tests.
    """

    def __init__(
        self,
        unit_of: Callable[[str], Unit | None],
        device_ids: Callable[[], Iterable[str]],
        refresh_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.unit_of = unit_of
        self.device_ids = device_ids
        self.refresh_s = refresh_s
        self.clock = clock
        self.units: dict[str, UnitStatus] = {}
        #: device_id -> its latest telemetry mode (None: readings without one): the hot path's check
        self.modes: dict[str, str | None] = {}
        self.without_coordinates: set[str] = set()
        self.points = 0
        self.seeded = 0
        self._order: list[str] = []
        self._cycle_start: float | None = None
        self._done = 0

    # ------------------------------------------------------------------ what moves a unit

    def mode(self, device_id: str, kind: str, mode: str | None) -> list[str]:
        """A reading whose mode differs from the last one seen (or the unit's first reading)."""
        self.modes[device_id] = mode
        unit = self._unit(device_id)
        if kind == "elevator":
            unit.mode = mode
        return self._changed(device_id, unit)

    def status(self, device_id: str, online: bool) -> list[str]:
        unit = self._unit(device_id)
        unit.online = online
        return self._changed(device_id, unit)

    def alert(self, device_id: str, rule: str, firing: bool) -> list[str]:
        unit = self._unit(device_id)
        if firing:
            unit.firing.add(rule)
        else:
            unit.firing.discard(rule)
        return self._changed(device_id, unit)

    def seed(self, device_id: str, mode: str | None, online: bool, firing: Iterable[str], shown: str) -> None:
        """What the last ``unit`` point said (read back from InfluxDB at start): a restarted store
        must not forget a unit whose alert opened before the Kafka offset it resumes from."""
        unit = self._unit(device_id)
        unit.mode, unit.online, unit.firing, unit.shown = mode, online, set(firing), shown
        self.seeded += 1

    def forget(self) -> None:
        """The registry changed: coordinates, tags and the refresh order are looked up again."""
        self.without_coordinates.clear()
        self._cycle_start = None

    # ------------------------------------------------------------------ points

    def refresh(self) -> list[str]:
        """The units whose turn has come in this refresh cycle (unit ``i`` of ``n`` at ``i/n`` of it)."""
        now = self.clock()
        start = self._cycle_start
        if start is None or now < start or (self._done >= len(self._order) and now - start >= self.refresh_s):
            if start is not None and start <= now < start + 2 * self.refresh_s:
                start += self.refresh_s  # the next cycle starts where this one ended: no drift
            else:
                start = now  # the first, after a long stall, or the clock went back
            self._cycle_start = start
            self._order = sorted(self.device_ids())
            self._done = 0
        n = len(self._order)
        elapsed = now - start
        due = n if elapsed >= self.refresh_s else min(n, math.floor(n * elapsed / self.refresh_s) + 1)
        lines = []
        for device_id in self._order[self._done : due]:
            unit = self.units.get(device_id) or UnitStatus()
            line = self._line(device_id, unit)
            if line:
                lines.append(line)
        self._done = max(self._done, due)
        return lines

    def _unit(self, device_id: str) -> UnitStatus:
        unit = self.units.get(device_id)
        if unit is None:
            unit = self.units[device_id] = UnitStatus()
        return unit

    def _changed(self, device_id: str, unit: UnitStatus) -> list[str]:
        registered = self.unit_of(device_id)
        if unit.state(registered is None or registered.in_use) == unit.shown:
            return []
        line = self._line(device_id, unit, registered)
        return [line] if line else []

    def _line(self, device_id: str, unit: UnitStatus, registered: Unit | None = None) -> str:
        """The unit's ``unit`` point now; ``""`` when it has no coordinates (counted)."""
        registered = registered or self.unit_of(device_id)
        if registered is None or registered.lat is None or registered.lon is None:
            self.without_coordinates.add(device_id)
            return ""
        state = unit.state(registered.in_use)
        unit.shown = state
        tags = {
            "device_id": device_id,
            "kind": str(registered.kind.value),
            "district": registered.district,
            "firm_id": registered.firm_id,
        }
        fields: dict[str, Any] = {
            "lat": float(registered.lat),
            "lon": float(registered.lon),
            "state": state,
            "state_rank": STATE_RANK[state],
            "online": unit.online,
            "mode": unit.mode,  # None (a boiler, or no reading yet) is not written
            "firing": ",".join(sorted(unit.firing)),
        }
        self.points += 1
        return encode("unit", tags, fields, int(self.clock() * 1000))

    def snapshot(self) -> dict[str, int]:
        """Counters for the stage's ``pipeline`` record."""
        return {
            "unit_points": self.points,
            "units_tracked": len(self.units),
            "units_without_coordinates": len(self.without_coordinates),
            "units_seeded": self.seeded,
        }
