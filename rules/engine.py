"""The rule engine: per-unit state in, alerts and hazards out; pure Python, deterministic.

Contract with the Faust worker (streams/): ``process(state, envelope, unit) -> Outcome``,
``tick(state, now_ms, unit) -> Outcome`` and ``next_due(state)``. ``state`` is what the previous
call returned (a :class:`~rules.state.UnitState`), or what the worker's JSON table gave back
(its compact dict, version 2, or the 2026.11 engine's version-1 dict), or None for a new unit.

This module only dispatches; each concern has its module:

| module | concern |
|---|---|
| ``reorder`` | per-unit reorder buffer on device time, late and duplicate readings |
| ``conditions`` | telemetry conditions: durations (sample-and-hold), confirmation, clears |
| ``derived`` | values computed before the rules (rate, subcooling, efficiency, escalator) |
| ``terminal`` | terminal events (occur / recover / auto-resolve) |
| ``deadman`` | offline by silence or Last Will |
| ``suppression`` | maintenance, service mode, not in use, inhibition |
| ``lifecycle`` | one alert per condition: open, resolve, follow-ups, receivers |
| ``flap`` | flap damping |
| ``counting`` | count-in-window rules |
| ``dates`` | inspection and maintenance dates, hazard deadlines |
| ``reports``, ``unit_hazards`` | maintenance / inspection / accident / hazard reports |
| ``schedule`` | when ``tick`` next has work |
| ``state`` | the typed per-unit state and its versioned JSON form |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import conditions, dates, deadman, lifecycle, reorder, reports, terminal, unit_hazards
from .catalogue import Catalogue, Rule, load_catalogue
from .compiled import Compiled, UnitCtx
from .outcome import Outcome
from .schedule import set_due
from .state import NO_DUE, UnitState, due_of, load

__all__ = ["Outcome", "RuleEngine", "UnitState"]


class RuleEngine:
    """Compiled catalogue + the state machine that applies it to one unit at a time."""

    def __init__(self, catalogue_path: Path | str | None = None, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or load_catalogue(catalogue_path)
        self.compiled = Compiled(self.catalogue)
        self.version = self.catalogue.version
        self.rules: dict[str, Rule] = self.compiled.rules
        self.lateness_ms = self.compiled.lateness_ms
        self.timeout_ms = self.compiled.timeout_ms
        self.flap_opens = self.compiled.flap_opens
        self.flap_hold_ms = self.compiled.flap_hold_ms
        self._units: dict[str, UnitCtx] = {}
        self._default_ctx = {k: self.compiled.make_ctx(None, k) for k in ("elevator", "boiler")}

    # ------------------------------------------------------------------ units

    def _ctx(self, device_id: str, unit: Any, kind: str) -> UnitCtx:
        """A unit's thresholds, resolved once per registry row (a reloaded registry rebuilds them)."""
        if unit is None:
            return self._default_ctx[kind]
        ctx = self._units.get(device_id)
        if ctx is None or ctx.unit is not unit:
            ctx = self._units[device_id] = self.compiled.make_ctx(unit, str(unit.kind))
        return ctx

    subtype_of = staticmethod(Compiled.subtype_of)

    def rules_for_event(self, unit: Any, kind: str, code: str) -> list[Rule]:
        """The rules a terminal event code raises on this unit (lift / escalator / boiler type)."""
        subtype = self.subtype_of(unit, kind)
        return list(self.compiled.events[subtype or kind].get(code, ()))

    # ------------------------------------------------------------------ state

    @staticmethod
    def new_state(kind: str, device_id: str) -> UnitState:
        return UnitState(device_id, kind)

    @staticmethod
    def load_state(state: Any) -> UnitState | None:
        """A stored state in any version as a :class:`UnitState` (None for none)."""
        return load(state)

    @staticmethod
    def dump_state(state: UnitState | dict[str, Any]) -> dict[str, Any]:
        """The state as plain JSON types, as the worker's JSON serializer writes it."""
        return state.to_json() if isinstance(state, UnitState) else state

    @staticmethod
    def next_due(state: Any) -> int | None:
        """Processing time (epoch ms) from which ``tick`` has work for this unit, None if never.

        Reads a stored state without decoding it, so the worker can sweep every unit's."""
        due = due_of(state)
        return None if due is None or due >= NO_DUE else due

    def due_for_tick(self, state: Any, now_ms: int) -> bool:
        """Cheap check for the worker's periodic sweep: does ``tick`` have work for this unit?"""
        due = self.next_due(state)
        return due is not None and now_ms >= due

    # ------------------------------------------------------------------ public API

    def process(self, state: Any, envelope: dict[str, Any], unit: Any = None) -> Outcome:
        """Apply one validated message (``Envelope.model_dump(mode="json")``) to a unit's state."""
        st = state if type(state) is UnitState else load(state)
        typ = envelope["type"]
        if typ == "report":
            return self._report(st, envelope, unit)
        device_id = envelope.get("device_id")
        if typ not in ("telemetry", "event", "status") or not device_id:
            return Outcome(st or {}, rejected=[f"{typ} messages carry no rule input"])
        if st is None:
            st = UnitState(
                device_id, envelope.get("kind") or (str(unit.kind) if unit is not None else "elevator")
            )
        cfg = self.compiled
        out = Outcome(st)
        ctx = self._units.get(device_id) if unit is not None else None
        if ctx is None or ctx.unit is not unit:
            ctx = self._ctx(device_id, unit, st.kind)
        ts = envelope["ts"]
        rx = envelope.get("received_ms") or ts
        if rx > st.last_rx:
            st.last_rx = rx
        if not st.first_ts:
            st.first_ts = ts
        mx = st.max_ts
        lwt = typ == "status" and envelope["body"].get("lwt")  # a Last Will has server time, no seq
        seq = envelope.get("seq")
        if seq is not None and seq >= 0 and not lwt:
            reorder.note_seq(st, seq, ts)
        if ts > mx and not lwt:
            if mx and ts > mx + cfg.timeout_ms and cfg.deadman is not None and cfg.record_gaps:
                deadman.gap(cfg, st, ts, ctx, out)
            st.max_ts = mx = ts
        if st.alerts and typ != "status" and deadman.is_offline(cfg, st):
            deadman.clear(cfg, st, ts, ctx, out, rx)  # any newer message: the unit is back
        if typ == "telemetry":
            buf = st.reorder
            if (not buf or ts > buf[-1][0]) and ts > st.watermark_ts:
                body = envelope["body"]  # the common case, inline: in order, newer than anything seen
                buf.append((ts, envelope.get("seq") or 0, body))
                mode = body.get("mode")
                if mode is not None:  # newest mode on arrival (events are not buffered and need it)
                    st.mode_ts = ts
                    st.mode = mode
            else:
                reorder.accept(st, envelope, out)
        elif typ == "event":
            terminal.on_event(cfg, st, envelope, ctx, out)
        else:
            deadman.on_status(cfg, st, envelope, ctx, out)
        if st.reorder:
            reorder.release(cfg, st, mx - cfg.lateness_ms, ctx, out)
        if st.alerts:
            lifecycle.open_followups(cfg, st, st.watermark_ts or ts, ctx, out)
        if ts >= st.next_calendar:
            if ctx.unit is not None:
                dates.check(cfg, st, ts, ctx, out)
            else:
                st.next_calendar = ts + cfg.calendar_every_ms  # unknown unit: look again later
        if st.reorder:  # streaming: due when the buffer can be flushed (or the date check), inline
            due = st.last_rx + cfg.lateness_ms
            cal = st.next_calendar + st.last_rx - st.max_ts
            st.due = cal if cal < due else due
        else:
            set_due(cfg, st, ctx.for_ms)
        return out

    def tick(self, state: Any, now_ms: int, unit: Any = None) -> Outcome:
        """Processing-time guard: flush a quiet unit's buffer, deadman, pending durations, dates."""
        st = state if type(state) is UnitState else load(state)
        if st is None:
            return Outcome({})
        cfg = self.compiled
        out = Outcome(st)
        ctx = self._ctx(st.device_id, unit, st.kind)
        quiet = now_ms - st.last_rx
        if st.reorder and quiet >= cfg.lateness_ms:
            reorder.release(cfg, st, NO_DUE, ctx, out)
        est = now_ms - (st.last_rx - st.max_ts)  # device time now, by the last seen clock skew
        deadman.on_tick(cfg, st, quiet, ctx, out)
        if not deadman.is_offline(cfg, st):
            conditions.mature_pending(cfg, st, est - cfg.lateness_ms, ctx, out)
            if st.alerts:
                lifecycle.open_followups(cfg, st, est - cfg.lateness_ms, ctx, out)
        if ctx.unit is not None and est >= st.next_calendar:
            dates.check(cfg, st, max(est, st.max_ts), ctx, out)
        set_due(cfg, st, ctx.for_ms)
        return out

    # ------------------------------------------------------------------ reports

    def _report(self, st: UnitState | None, env: dict[str, Any], unit: Any) -> Outcome:
        body = env["body"]
        if env.get("report") == "hazard":
            if st is None:
                return Outcome({}, rejected=[f"unknown hazard {body.get('hazard_id')}"])
            out = Outcome(st)
            unit_hazards.apply_report(self.compiled, st, env, out)
            return out
        device_id = env.get("device_id") or body.get("device_id")
        if not device_id:
            return Outcome(st or {}, rejected=[f"{env.get('report')} report without device_id"])
        if st is None:
            st = UnitState(device_id, str(unit.kind) if unit is not None else "elevator")
        out = Outcome(st)
        ctx = self._ctx(device_id, unit, st.kind)
        reports.on_report(self.compiled, st, env, ctx, out)
        set_due(self.compiled, st, ctx.for_ms)
        return out
