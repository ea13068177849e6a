"""The catalogue compiled for the engine, and each unit's view of it (thresholds resolved once).

``Compiled`` holds the settings in milliseconds and the indexes every concern needs: the
telemetry rules per kind of unit (lift, escalator, steam, hot-water; one generated batch
function each), terminal event codes, date rules, count and follow-up links. ``UnitCtx`` is a
unit's copy with its registry-dependent thresholds resolved, built once per registry row.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, tzinfo
from typing import Any

from sesmon.contract.time import LOCAL_TZ, end_of_day_ms

from .catalogue import Catalogue, Derived, Rule, compile_batch, prev_fields, prev_getter
from .expr import UNIT_ATTRS
from .hazards import DAY_MS, SUPERVISION_AT_GRADING

#: (kind, subtypes): which rule sets a unit can run (None: an unknown boiler runs every boiler rule)
SUBTYPES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    ("elevator", ("lift", "escalator")),
    ("boiler", (None, "steam", "hot_water")),
)


@dataclass(slots=True)
class Variant:
    """The telemetry rules of one kind of unit, as one generated batch function."""

    rules: list[Rule]
    batch: Callable[..., list[int]]
    pos: dict[str, int]  # rule id -> position in ``rules``
    prev: tuple[str, ...]  # fields some condition reads the previous value of
    prev_of: Callable[[dict[str, Any]], dict[str, Any]]
    derived: list[Derived]  # derived values some rule of this variant reads


@dataclass(slots=True)
class UnitCtx:
    """One unit's compiled view: thresholds resolved from its registry row."""

    unit: Any
    params: list[dict[str, float]]  # by catalogue index
    for_ms: list[int]  # by catalogue index
    defaults: list[dict[str, float]]  # by catalogue index: thresholds that fell back to their default
    subtype: str | None  # lift | escalator | steam | hot_water | None (unknown boiler)
    district: str
    firm_id: str
    user_unit_id: str
    in_use: bool
    inspection_due_ms: int | None
    variant: Variant
    T: list[dict[str, float]]  # params by variant position (the batch function's argument)
    vrules: list[tuple[Rule, str, int, dict[str, float]]]  # (rule, id, for_ms, params) by position
    events: dict[str, list[Rule]]  # event code -> rules it raises on this unit
    calendar: list[Rule]


@dataclass(frozen=True, slots=True)
class _Thresholds:
    """The part of a :class:`UnitCtx` that only depends on its resolved thresholds (read-only)."""

    params: list[dict[str, float]]
    for_ms: list[int]
    defaults: list[dict[str, float]]
    T: list[dict[str, float]]
    vrules: list[tuple[Rule, str, int, dict[str, float]]]


def due_ms(day: date | str | None, tz: tzinfo = LOCAL_TZ) -> int | None:
    """End of the due day in local time (Guangzhou: UTC+8), as epoch ms."""
    if day is None:
        return None
    if isinstance(day, str):
        day = date.fromisoformat(day)
    return end_of_day_ms(day, tz)


class Compiled:
    """Settings in ms and the indexes of a compiled catalogue."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.version = catalogue.version
        self.catalogue_sha = catalogue.catalogue_sha  # which catalogue file: alerts and hazards record it
        s = catalogue.settings
        self.lateness_ms = int(float(s["lateness_s"]) * 1000)
        self.heartbeat_ms = int(float(s["heartbeat_s"]) * 1000)
        self.timeout_ms = self.heartbeat_ms * int(s["offline_after_heartbeats"])
        self.record_gaps = bool(s.get("record_gaps", True))
        self.maintenance_default_ms = int(float(s["maintenance_default_s"]) * 1000)
        flap = s["flap"]
        self.flap_window_ms = int(float(flap["window_s"]) * 1000)
        self.flap_opens = int(flap["max_opens"])
        self.flap_hold_ms = int(float(flap["hold_s"]) * 1000)
        self.calendar_every_ms = int(float(s["calendar_every_s"]) * 1000)
        self.hazard_retention_ms = int(s["closed_hazard_retention_days"]) * DAY_MS
        self.supervision_at_grading: dict[str, str] = {
            **SUPERVISION_AT_GRADING,
            **dict(s.get("supervision_at_grading") or {}),
        }
        self.centre_id = str(s["centre_id"])
        self.tz = LOCAL_TZ
        self.rules_list = catalogue.rules
        self.rules: dict[str, Rule] = catalogue.by_id()
        self.variants: dict[str, Variant] = {}
        #: resolved thresholds shared by every unit that resolves to the same ones (a city's
        #: 10,000 lifts come in a few dozen models: one copy each, not 16 KB per unit)
        self._shared: dict[tuple[Any, ...], _Thresholds] = {}
        #: the registry attributes any threshold expression reads: units equal in these (and in
        #: their subtype) resolve to the same thresholds, so those are resolved once
        specs = [p for r in self.rules_list for p in (*r.params, r.for_ms) if p is not None]
        trees = [p.tree for p in specs if p.tree is not None]
        names = {n.id for t in trees for n in ast.walk(t) if isinstance(n, ast.Name)}
        self._param_attrs = tuple(sorted(names & set(UNIT_ATTRS)))
        self._by_attrs: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.events: dict[str, dict[str, list[Rule]]] = {}
        self.calendar: dict[str, list[Rule]] = {}
        for kind, subtypes in SUBTYPES:
            for subtype in subtypes:
                key = subtype or kind
                mine = [
                    r
                    for r in self.rules_list
                    if r.kind in (kind, "any") and (not r.applies or subtype is None or r.applies == subtype)
                ]
                tele = [r for r in mine if r.ctype == "state" and r.when is not None]
                prev = prev_fields(tele)
                read = {f for r in tele for f in r.fields}
                self.variants[key] = Variant(
                    tele,
                    compile_batch(tele, key),
                    {r.id: i for i, r in enumerate(tele)},
                    prev,
                    prev_getter(prev),
                    [d for d in catalogue.derived if d.kind == kind and d.name in read],
                )
                codes: dict[str, list[Rule]] = {}
                for r in mine:
                    for code in r.events:
                        codes.setdefault(code, []).append(r)
                self.events[key] = codes
                self.calendar[key] = [r for r in mine if r.ctype == "calendar"]
        self.counters: dict[str, list[Rule]] = {}  # counted rule id -> count rules
        self.open_for: dict[str, list[Rule]] = {}  # rule id -> follow-up rules measuring it
        for r in self.rules_list:
            for src in r.count_of:
                self.counters.setdefault(src, []).append(r)
            for src in r.open_for:
                self.open_for.setdefault(src, []).append(r)
        self.clear_after: list[Rule] = [r for r in self.rules_list if r.clear_after is not None]
        self.deadman: Rule | None = next((r for r in self.rules_list if r.ctype == "deadman"), None)
        self.report_rules: dict[str, list[Rule]] = {}
        for r in self.rules_list:
            if r.ctype == "report":
                self.report_rules.setdefault(r.extra["report"], []).append(r)

    @staticmethod
    def subtype_of(unit: Any, kind: str) -> str | None:
        """Which rules a unit runs: lift or escalator (type code 33xx); steam or hot-water boiler."""
        if kind == "elevator":
            code = str(getattr(unit, "type_code", "") or "") if unit is not None else ""
            return "escalator" if code.startswith("33") else "lift"
        if unit is None:
            return None  # an unknown boiler: every boiler rule
        return "steam" if unit.steam else "hot_water"

    def make_ctx(self, unit: Any, kind: str) -> UnitCtx:
        subtype = self.subtype_of(unit, kind)
        key = subtype or kind
        variant = self.variants[key]
        attrs = (key, unit is None, *(getattr(unit, a, None) for a in self._param_attrs))
        signature = self._by_attrs.get(attrs)
        if signature is None:
            signature = self._by_attrs[attrs] = self._resolve(unit, key)
        shared = self._shared[signature]
        return UnitCtx(
            unit=unit,
            params=shared.params,
            for_ms=shared.for_ms,
            defaults=shared.defaults,
            subtype=subtype,
            district=unit.district if unit is not None else "",
            firm_id=unit.firm_id if unit is not None else "",
            user_unit_id=unit.user_unit_id if unit is not None else "",
            in_use=unit.status == "in_use" if unit is not None else True,
            inspection_due_ms=due_ms(unit.next_inspection_due, self.tz) if unit is not None else None,
            variant=variant,
            T=shared.T,
            vrules=shared.vrules,
            events=self.events[key],
            calendar=self.calendar[key],
        )

    def _resolve(self, unit: Any, key: str) -> tuple[Any, ...]:
        """Resolve every threshold for ``unit``; the signature of the (shared) result."""
        params: list[dict[str, float]] = []
        defaults: list[dict[str, float]] = []
        for_ms: list[int] = []
        for r in self.rules_list:
            got = {p.name: p.resolve_noting(unit) for p in r.params}
            params.append({name: value for name, (value, _) in got.items()})
            fallback = {name: value for name, (value, used) in got.items() if used}
            ms, used = r.for_ms.resolve_noting(unit) if r.for_ms is not None else (0.0, False)
            for_ms.append(int(ms))
            if used:
                fallback["for_s"] = ms / 1000
            defaults.append(fallback)
        variant = self.variants[key]
        signature = (
            key,
            tuple(tuple(d.items()) for d in params),
            tuple(tuple(d.items()) for d in defaults),
            tuple(for_ms),
        )
        if signature not in self._shared:
            T = [params[r.index] for r in variant.rules]
            vrules = [(r, r.id, for_ms[r.index], T[i]) for i, r in enumerate(variant.rules)]
            self._shared[signature] = _Thresholds(params, for_ms, defaults, T, vrules)
        return signature
