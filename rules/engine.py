"""The rule engine: per-unit state in, alerts and hazards out; pure Python, deterministic.

Contract with the Faust worker (streams/): ``process(state, envelope, unit) -> Outcome`` and
``tick(state, now_ms, unit) -> Outcome``. ``state`` is a plain JSON-able dict the worker keeps
in a changelog Table keyed by device_id, so a restarted worker resumes exactly where it was.

Time semantics (DESIGN.md §8):

* Telemetry is evaluated in device time. Each unit keeps a small reorder buffer sorted by
  (ts, seq); a reading is released once the unit's max seen ts is ``lateness_s`` past it, so
  out-of-order arrival within the bound does not change the result. A reading older than the
  last released one cannot be evaluated in order: it is counted (``late_dropped``) and handed
  back in ``Outcome.late`` for the worker to record, never silently dropped.
* Terminal events, status and reports are evaluated at once, not buffered: an event is a
  debounced fact from the terminal (P1 conditions such as trapped must not wait for the
  buffer), and the "resolved guard" below stops older buffered telemetry from re-opening an
  alert an event already closed.
* Durations use sample-and-hold: a value holds until the next reading (terminals publish on
  change), so a condition true at ``since`` matures at ``since + for`` even if the next reading
  only arrives later; ``tick`` advances pending durations and the deadman in processing time
  so a silent unit is still noticed live. Alert ids depend only on event times, so live and
  replay give the same ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sesmon.schemas import Alert, Receiver

from .catalogue import Catalogue, Rule, compile_batch, load_catalogue, prev_fields, prev_getter, tsat_c
from .hazards import DAY_MS, Hazard, apply_hazard_report, escalate_overdue, new_hazard

NEVER = 2**62


@dataclass(slots=True, init=False)
class Outcome:
    """What one call produced. ``state`` is the unit's new state (store it back)."""

    state: dict[str, Any]
    alerts: list[Alert]  # state changes only (firing / resolved)
    hazards: list[Hazard]  # new or changed hidden dangers
    late_dropped: int
    late: list[dict[str, Any]]  # readings beyond the lateness bound, for the worker to record
    duplicates: int
    suppressed: int  # alert openings held back by suppression or inhibition
    evaluated: int  # telemetry readings evaluated (released from the reorder buffer)
    rejected: list[str]  # messages or reports that changed nothing, with why

    def __init__(
        self,
        state: dict[str, Any],
        alerts: list[Alert] | None = None,
        hazards: list[Hazard] | None = None,
        late_dropped: int = 0,
        late: list[dict[str, Any]] | None = None,
        duplicates: int = 0,
        suppressed: int = 0,
        evaluated: int = 0,
        rejected: list[str] | None = None,
    ) -> None:
        # hand-written: a dataclass __init__ with default factories costs twice as much per reading
        self.state = state
        self.alerts = [] if alerts is None else alerts
        self.hazards = [] if hazards is None else hazards
        self.late_dropped = late_dropped
        self.late = [] if late is None else late
        self.duplicates = duplicates
        self.suppressed = suppressed
        self.evaluated = evaluated
        self.rejected = [] if rejected is None else rejected


@dataclass(slots=True)
class _Variant:
    """The telemetry rules that apply to one kind of unit (elevator; steam / hot-water boiler)."""

    rules: list[Rule]
    batch: Callable[..., list[int]]
    pos: dict[str, int]
    prev: tuple[str, ...]
    prev_of: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(slots=True)
class _UnitCtx:
    """Per-unit compiled view: thresholds resolved from the registry row once."""

    unit: Any
    params: list[dict[str, float]]  # by catalogue index
    for_ms: list[int]  # by catalogue index
    steam: bool | None
    district: str
    firm_id: str
    user_unit_id: str
    in_use: bool
    insp_due_ms: int | None
    variant: _Variant
    T: list[dict[str, float]]  # params by variant position
    vrules: list[tuple[Rule, str, int, dict[str, float]]]  # (rule, id, for_ms, params) by position


def _due_ms(day: date | str | None, tz: timezone) -> int | None:
    """End of the due day in local time (Guangzhou: UTC+8), as epoch ms."""
    if day is None:
        return None
    if isinstance(day, str):
        day = date.fromisoformat(day)
    end = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(days=1)
    return int(end.timestamp() * 1000)


class RuleEngine:
    """Compiled catalogue + the state machine that applies it to one unit at a time."""

    def __init__(self, catalogue_path: Path | str | None = None, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or load_catalogue(catalogue_path)
        self.version = self.catalogue.version
        s = self.catalogue.settings
        self.lateness_ms = int(float(s.get("lateness_s", 10)) * 1000)
        self.heartbeat_ms = int(float(s.get("heartbeat_s", 60)) * 1000)
        self.timeout_ms = self.heartbeat_ms * int(s.get("offline_after_heartbeats", 3))
        self.record_gaps = bool(s.get("record_gaps", True))
        self.maintenance_default_ms = int(float(s.get("maintenance_default_s", 4 * 3600)) * 1000)
        flap = s.get("flap") or {}
        self.flap_window_ms = int(float(flap.get("window_s", 600)) * 1000)
        self.flap_opens = int(flap.get("max_opens", 3))
        self.flap_hold_ms = int(float(flap.get("hold_s", 300)) * 1000)
        self.calendar_every_ms = int(float(s.get("calendar_every_s", 3600)) * 1000)
        self.hazard_retention_ms = int(float(s.get("closed_hazard_retention_days", 90)) * DAY_MS)
        self.escalate_every_days = int(s.get("hazard_escalate_every_days", 15))
        self.centre_id = str(s.get("centre_id", "96333"))
        self.tz = timezone(timedelta(hours=float(s.get("utc_offset_h", 8))))
        self.rules: dict[str, Rule] = self.catalogue.by_id()
        self._rules_list = self.catalogue.rules
        self._variants: dict[tuple[str, bool | None], _Variant] = {}
        self._events: dict[str, dict[str, list[Rule]]] = {}
        self._counters: dict[str, list[Rule]] = {}
        self._open_for: dict[str, list[Rule]] = {}
        self._calendar: dict[str, list[Rule]] = {}
        for kind in ("elevator", "boiler"):
            mine = [r for r in self._rules_list if r.kind in (kind, "any")]
            tele = [r for r in mine if r.ctype == "state" and r.when is not None]
            for steam in (None, True, False):
                vr = [
                    r
                    for r in tele
                    if not (r.applies and steam is not None and (r.applies == "steam") != steam)
                ]
                pf = prev_fields(vr)
                self._variants[(kind, steam)] = _Variant(
                    vr,
                    compile_batch(vr, f"{kind}/{steam}"),
                    {r.id: i for i, r in enumerate(vr)},
                    pf,
                    prev_getter(pf),
                )
            ev: dict[str, list[Rule]] = {}
            for r in mine:
                for code in r.events:
                    ev.setdefault(code, []).append(r)
            self._events[kind] = ev
            self._calendar[kind] = [r for r in mine if r.ctype == "calendar"]
        for r in self._rules_list:
            for src in r.count_of:
                self._counters.setdefault(src, []).append(r)
            if r.ctype == "followup":
                self._open_for.setdefault(r.extra["open_for"], []).append(r)
        self._deadman = next((r for r in self._rules_list if r.ctype == "deadman"), None)
        self._derived = {
            k: [d for d in self.catalogue.derived if d.kind in (k, "any")] for k in ("elevator", "boiler")
        }
        self._units: dict[str, _UnitCtx] = {}
        self._default_ctx = {k: self._make_ctx(None, k) for k in ("elevator", "boiler")}

    # ------------------------------------------------------------------ unit context

    def _make_ctx(self, unit: Any, kind: str) -> _UnitCtx:
        params = [{p.name: p.resolve(unit) for p in r.params} for r in self._rules_list]
        for_ms = [int(r.for_ms.resolve(unit)) if r.for_ms else 0 for r in self._rules_list]
        steam = None if unit is None else bool(unit.steam)
        variant = self._variants[(kind, steam if kind == "boiler" else None)]
        T = [params[r.index] for r in variant.rules]
        vrules = [(r, r.id, for_ms[r.index], T[i]) for i, r in enumerate(variant.rules)]
        if unit is None:
            return _UnitCtx(None, params, for_ms, None, "", "", "", True, None, variant, T, vrules)
        return _UnitCtx(
            unit,
            params,
            for_ms,
            steam,
            unit.district,
            unit.firm_id,
            unit.user_unit_id,
            unit.status == "in_use",
            _due_ms(unit.next_inspection_due, self.tz),
            variant,
            T,
            vrules,
        )

    def _ctx(self, device_id: str, unit: Any, kind: str) -> _UnitCtx:
        if unit is None:
            return self._default_ctx[kind]
        ctx = self._units.get(device_id)
        if ctx is None or ctx.unit is not unit:
            ctx = self._units[device_id] = self._make_ctx(unit, str(unit.kind))
        return ctx

    # ------------------------------------------------------------------ public API

    @staticmethod
    def new_state(kind: str, device_id: str) -> dict[str, Any]:
        """Empty per-unit state (plain JSON types only; short keys keep the table small)."""
        return {
            "d": device_id,
            "k": kind,
            "mx": 0,  # max device ts seen (drives the reorder buffer's release)
            "wm": 0,  # ts of the last released reading (order watermark)
            "ws": -1,  # its seq
            "rx": 0,  # last receive (processing) time
            "fs": 0,  # first device ts seen
            "b": [],  # reorder buffer [[ts, seq, body], ...]
            "v": {},  # merged telemetry values (sample-and-hold)
            "c": {},  # telemetry condition per rule: [since_ms, matured 0/1, evidence]
            "e": {},  # event source per rule: occur ts
            "a": {},  # open alerts per rule: [alert_id, opened_ms, title, deferred_clear_ms, evidence]
            "rz": {},  # last resolve ts per rule (guards against older buffered telemetry)
            "f": {},  # recent open times per rule (flap damping)
            "n": {},  # counted openings per count rule
            "hz": {},  # hazards by id (open ones, and closed ones for a retention period)
            "m": [0, 0],  # maintenance window [start, end]
            "ml": 0,  # last maintenance (event time)
            "id": None,  # inspection due (ms) from the last inspection report
            "cn": 0,  # next calendar check (event time)
            "due": 0,  # next processing time tick() has work
            "late": 0,  # readings counted late, ever
        }

    def due_for_tick(self, state: dict[str, Any] | None, now_ms: int) -> bool:
        """Cheap check for the worker's periodic sweep: does ``tick`` have work for this unit?"""
        due = self.next_due(state)
        return due is not None and now_ms >= due

    @staticmethod
    def next_due(state: dict[str, Any] | None) -> int | None:
        """Processing time (epoch ms) from which ``tick`` has work for this unit, None if never.

        Lets the worker keep a small index of due times instead of decoding every state."""
        return int(state["due"]) if state else None

    def process(self, state: dict[str, Any] | None, envelope: dict[str, Any], unit: Any = None) -> Outcome:
        """Apply one validated message (``Envelope.model_dump(mode="json")``) to a unit's state."""
        typ = envelope["type"]
        if not state:
            state = None
        if typ == "report":
            return self._report(state, envelope, unit)
        if typ not in ("telemetry", "event", "status") or not envelope.get("device_id"):
            return Outcome(state or {}, rejected=[f"{typ} messages carry no rule input"])
        device_id = envelope["device_id"]
        if state is None:
            kind = envelope.get("kind") or (str(unit.kind) if unit is not None else "elevator")
            state = self.new_state(kind, device_id)
        out = Outcome(state)
        ctx = self._ctx(device_id, unit, state["k"])
        ts = envelope["ts"]
        rx = envelope.get("received_ms") or ts
        if rx > state["rx"]:
            state["rx"] = rx
        if not state["fs"]:
            state["fs"] = ts
        mx = state["mx"]
        lwt = typ == "status" and envelope["body"].get("lwt")
        if ts > mx and not lwt:  # a Last Will carries server time, not device time
            if mx and ts > mx + self.timeout_ms and self._deadman is not None and self.record_gaps:
                self._gap(state, ts, ctx, out)
            state["mx"] = mx = ts
        a = state["a"]
        if a and typ != "status" and self._deadman is not None and self._deadman.id in a:
            self._clear_offline(state, ts, ctx, out, rx)  # any newer message: the unit is back
        if typ == "telemetry":
            buf = state["b"]
            seq = envelope.get("seq") or 0
            if not buf or ts > buf[-1][0]:
                if ts > state["wm"]:  # the common case: in order, newer than anything seen
                    body = envelope["body"]
                    buf.append([ts, seq, body])
                    mode = body.get("mode")
                    if mode is not None:
                        md = state.get("md")
                        if md is not None:
                            md[0] = ts  # ts > everything seen: newest mode
                            md[1] = mode
                        else:
                            state["md"] = [ts, mode]
                else:
                    self._telemetry(state, envelope, ctx, out)
            else:
                self._telemetry(state, envelope, ctx, out)
        elif typ == "event":
            self._event(state, envelope, ctx, out)
        else:
            self._status(state, envelope, ctx, out)
        buf = state["b"]
        if buf and buf[0][0] <= mx - self.lateness_ms:
            self._release(state, mx - self.lateness_ms, ctx, out)
        if a:
            self._open_followups(state, state["wm"] or ts, ctx, out)
        if ts >= state["cn"]:
            if ctx.unit is not None:
                self._calendar_check(state, ts, ctx, out)
            else:
                state["cn"] = ts + self.calendar_every_ms  # unknown unit: look again later
        self._set_due(state, ctx)
        return out

    def tick(self, state: dict[str, Any] | None, now_ms: int, unit: Any = None) -> Outcome:
        """Processing-time guard: flush a quiet unit's buffer, deadman, pending durations."""
        if not state:
            return Outcome(state or {})
        out = Outcome(state)
        ctx = self._ctx(state["d"], unit, state["k"])
        quiet = now_ms - state["rx"]
        if state["b"] and quiet >= self.lateness_ms:
            self._release(state, NEVER, ctx, out)
        skew = state["rx"] - state["mx"]  # server minus device clock, as last seen
        est = now_ms - skew  # estimated device time now
        dm = self._deadman
        if dm is not None and quiet >= self.timeout_ms and dm.id not in state["a"] and state["mx"]:
            opened = state["mx"] + self.timeout_ms
            if not self._blocked(state, dm, opened, ctx, False):
                self._open(state, dm, opened, opened, ctx, out, [{"ts": state["mx"], "silent_ms": quiet}])
        if dm is None or dm.id not in state["a"]:
            self._mature_pending(state, est - self.lateness_ms, ctx, out)
            if state["a"]:
                self._open_followups(state, est - self.lateness_ms, ctx, out)
        if ctx.unit is not None and est >= state["cn"]:
            self._calendar_check(state, max(est, state["mx"]), ctx, out)
        self._set_due(state, ctx)
        return out

    # ------------------------------------------------------------------ telemetry

    def _telemetry(self, state: dict[str, Any], env: dict[str, Any], ctx: _UnitCtx, out: Outcome) -> None:
        ts = env["ts"]
        seq = env.get("seq") or 0
        if ts < state["wm"] or (ts == state["wm"] and seq <= state["ws"]):
            if ts == state["wm"] and seq == state["ws"]:
                out.duplicates += 1
                return
            state["late"] += 1
            out.late_dropped += 1
            out.late.append({"device_id": state["d"], "ts": ts, "seq": seq, "watermark": state["wm"]})
            return
        body = env["body"]
        mode = body.get("mode")
        if mode is not None:
            self._note_mode(state, ts, mode)
        buf = state["b"]
        item = [ts, seq, body]
        if not buf or ts > buf[-1][0] or (ts == buf[-1][0] and seq > buf[-1][1]):
            buf.append(item)
            return
        for i, other in enumerate(buf):
            if other[0] == ts and other[1] == seq:
                out.duplicates += 1
                return
            if other[0] > ts or (other[0] == ts and other[1] > seq):
                buf.insert(i, item)
                return
        buf.append(item)

    @staticmethod
    def _note_mode(state: dict[str, Any], ts: int, mode: str) -> None:
        """Newest service mode on arrival (events are not buffered and need it)."""
        md = state.get("md")
        if md is None:
            state["md"] = [ts, mode]
        elif ts >= md[0]:
            md[0] = ts
            md[1] = mode

    def _release(self, state: dict[str, Any], limit: int, ctx: _UnitCtx, out: Outcome) -> None:
        buf = state["b"]
        while buf and buf[0][0] <= limit:
            ts, seq, body = buf.pop(0)
            state["wm"] = ts
            state["ws"] = seq
            self._evaluate(state, ts, seq, body, ctx, out)

    def _evaluate(
        self, state: dict[str, Any], ts: int, seq: int, body: dict[str, Any], ctx: _UnitCtx, out: Outcome
    ) -> None:
        """Run every telemetry rule of the unit's kind over one released reading."""
        out.evaluated += 1
        v = state["v"]
        last_ts = v.get("ts", 0)
        variant = ctx.variant
        prev = variant.prev_of(v) if variant.prev else v
        v.update(body)
        v["ts"] = ts
        v["seq"] = seq
        for d in self._derived[state["k"]]:
            self._derive(state, d, v, body, ts)
        hits = variant.batch(v, prev, ctx.T)
        c = state["c"]
        e = state["e"]
        vrules = ctx.vrules
        pos_of = variant.pos
        if c:
            hold_ok = last_ts and ts - last_ts <= self.timeout_ms
            existing = list(c)
            for rid in existing:
                pos = pos_of.get(rid)
                if pos is None:
                    continue
                rule, _, fms, t = vrules[pos]
                ent = c[rid]
                if not ent[1]:
                    if rule.confirm > 1:
                        # confirmed rules never mature by hold: a later reading must still show it
                        if pos not in hits:
                            del c[rid]
                            continue
                        if ts > ent[4]:
                            ent[3] += 1
                            ent[4] = ts
                        if ts - ent[0] >= fms and ent[3] >= rule.confirm:
                            ent[1] = 1
                            self._reconcile(state, rule, ts, ctx, out)
                        continue
                    if hold_ok and ts - ent[0] >= fms:
                        # held true since `since` until now: matured at since + for
                        ent[1] = 1
                        self._reconcile(state, rule, ent[0] + fms, ctx, out)
                    elif pos not in hits:
                        del c[rid]
                        continue
                    else:
                        if not hold_ok:
                            ent[0] = ts  # after a gap the held value is unknown: restart the clock
                        continue
                clear = rule.clear(v, prev, t) if rule.clear is not None else pos not in hits
                if clear:
                    del c[rid]
                    if rid in e and ts > e[rid]:
                        del e[rid]  # telemetry shows it over (e.g. door opened): the event is too
                    self._reconcile(state, rule, ts, ctx, out, self._evidence(rule, v))
        else:
            existing = ()
        for pos in hits:
            rule, rid, fms, t = vrules[pos]
            if rid in c or rid in existing:
                continue
            if fms <= 0 and rule.confirm <= 1:
                c[rid] = [ts, 1, self._evidence(rule, v)]
                self._reconcile(state, rule, ts, ctx, out)
            else:
                c[rid] = [ts, 0, self._evidence(rule, v), 1, ts]
        if e:
            for rid in list(e):
                pos = pos_of.get(rid)
                if pos is None or rid in c:
                    continue
                rule, _, _, t = vrules[pos]
                if rule.clear is not None and ts > e[rid] and pos not in hits and rule.clear(v, prev, t):
                    del e[rid]
                    self._reconcile(state, rule, ts, ctx, out, self._evidence(rule, v))
            if e:
                self._expire_events(state, ts, ctx, out)
        if state.get("sp"):
            self._retry_held(state, ts, ctx, out)
        if state["a"]:
            self._deferred_clears(state, ts, ctx, out)

    def _retry_held(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        """Conditions still true whose alert was held back (suppressed, inhibited, guarded)."""
        sp = state["sp"]
        a, c, e = state["a"], state["c"], state["e"]
        for rid in list(sp):
            ent = c.get(rid)
            tele_on = ent is not None and ent[1]
            rule = self.rules.get(rid)
            if rid in a or rule is None or not (tele_on or rid in e):
                sp.pop(rid, None)
                continue
            self._reconcile(state, rule, ts, ctx, out, via_event=not tele_on)

    @staticmethod
    def _evidence(rule: Rule, v: dict[str, Any]) -> dict[str, Any]:
        ev = {"ts": v["ts"], "seq": v["seq"]}
        for f in rule.fields:
            if f in v:
                ev[f] = v[f]
        return ev

    def _derive(
        self, state: dict[str, Any], d: Any, v: dict[str, Any], body: dict[str, Any], ts: int
    ) -> None:
        """Derived values: rate of change, saturation margin, flue-gas-loss efficiency."""
        if d.func == "rate":
            x = body.get(d.source)
            if x is None:
                return
            anchors = state.setdefault("rt", {})
            anchor = anchors.get(d.name)
            if anchor is None or ts - anchor[0] > 10 * d.window_ms:
                anchors[d.name] = [ts, x]
                v.pop(d.name, None)
            elif ts - anchor[0] >= d.window_ms:
                v[d.name] = round((x - anchor[1]) * d.per_ms / (ts - anchor[0]), 6)
                anchors[d.name] = [ts, x]
        elif d.func == "tsat_margin":
            p = v.get("pressure_mpa")
            temp = v.get(d.source or "outlet_temp_c")
            if p is not None and temp is not None and ("pressure_mpa" in body or d.source in body):
                v[d.name] = round(tsat_c(p) - temp, 2)
        elif d.func == "efficiency" and ("flue_gas_temp_c" in body or "o2_pct" in body or "burner" in body):
            tfg = v.get("flue_gas_temp_c")
            o2 = v.get("o2_pct")
            if tfg is None or o2 is None or o2 >= 20.5 or v.get("burner") not in ("low_fire", "high_fire"):
                v.pop(d.name, None)
            else:
                q2 = (tfg - 20.0) * (0.66 / (21.0 - o2) + 0.009)  # Siegert, natural gas (§2.5)
                v[d.name] = round(100.0 - q2 - 1.5, 2)

    def _mature_pending(self, state: dict[str, Any], upto: int, ctx: _UnitCtx, out: Outcome) -> None:
        """Processing-time guard for durations: a pending condition whose time has come."""
        c = state["c"]
        if not c:
            return
        for rid, ent in list(c.items()):
            rule = self.rules.get(rid)
            if rule is None or ent[1] or rule.confirm > 1:
                continue
            due = ent[0] + ctx.for_ms[rule.index]
            if due <= upto and due - state["wm"] <= self.timeout_ms:
                ent[1] = 1
                self._reconcile(state, rule, due, ctx, out)

    # ------------------------------------------------------------------ events, status

    def _event(self, state: dict[str, Any], env: dict[str, Any], ctx: _UnitCtx, out: Outcome) -> None:
        body = env["body"]
        rules = self._events[state["k"]].get(body.get("code", ""))
        if not rules:
            return
        ts = env["ts"]
        ev = {"ts": ts, "seq": env.get("seq"), "code": body["code"], "state": body.get("state")}
        if body.get("detail"):
            ev["detail"] = body["detail"]
        e = state["e"]
        occur = body.get("state") == "occur"
        detail = body.get("detail") or {}
        for rule in rules:
            rid = rule.id
            if occur:
                want = rule.event_detail.get(body["code"])
                if want and any(detail.get(k) != v for k, v in want.items()):
                    continue
                if rid in e:
                    continue
                e[rid] = ts
                self._reconcile(state, rule, ts, ctx, out, ev, via_event=True)
            elif rid in e:
                del e[rid]
                self._reconcile(state, rule, ts, ctx, out, ev)

    def _expire_events(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        e = state["e"]
        for rid, at in list(e.items()):
            rule = self.rules.get(rid)
            if rule is not None and rule.event_auto_resolve_ms and ts - at >= rule.event_auto_resolve_ms:
                del e[rid]
                end = at + rule.event_auto_resolve_ms
                self._reconcile(
                    state, rule, end, ctx, out, {"ts": end, "auto_resolved_after_s": end // 1000 - at // 1000}
                )

    def _status(self, state: dict[str, Any], env: dict[str, Any], ctx: _UnitCtx, out: Outcome) -> None:
        dm = self._deadman
        if dm is None:
            return
        body = env["body"]
        ts = env["ts"]
        if body.get("status") == "offline":
            if dm.id not in state["a"]:
                ev = {"ts": ts, "status": "offline", "lwt": bool(body.get("lwt", False))}
                if not self._blocked(state, dm, ts, ctx, False):
                    self._open(state, dm, ts, ts, ctx, out, [ev])
                    state["ox"] = env.get("received_ms") or ts
        else:
            self._clear_offline(state, ts, ctx, out, env.get("received_ms") or ts)

    def _clear_offline(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome, rx: int) -> None:
        """Newer in device time, or received after the Last Will (whose ts is server time)."""
        dm = self._deadman
        if dm is None:
            return
        a = state["a"].get(dm.id)
        if a is not None and (ts > a[1] or rx > state.get("ox", NEVER)):
            state.pop("ox", None)
            self._resolve(state, dm, ts, ctx, out, {"ts": ts, "status": "online"})

    def _gap(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        """Event-time deadman: a reading after a silence longer than the timeout.

        Opens (if the live tick did not already) and resolves the offline alert with the same
        id the tick would have used, so a replay without ticks yields the same alerts.
        """
        dm = self._deadman
        assert dm is not None
        opened = state["mx"] + self.timeout_ms
        if dm.id not in state["a"] and not self._blocked(state, dm, opened, ctx, False):
            self._open(
                state, dm, opened, opened, ctx, out, [{"ts": state["mx"], "silent_ms": ts - state["mx"]}]
            )

    # ------------------------------------------------------------------ alert state machine

    def _blocked(self, state: dict[str, Any], rule: Rule, ts: int, ctx: _UnitCtx, via_event: bool) -> bool:
        a = state["a"]
        for other in rule.inhibited_by:
            if other in a:
                return True
        sup = rule.suppress
        if not sup or (via_event and not rule.suppress_events):
            return False
        if "not_in_use" in sup and not ctx.in_use:
            return True
        if "maintenance" in sup:
            m = state["m"]
            if m[0] <= ts <= m[1]:
                return True
        mode = state["v"].get("mode")
        if via_event:
            # events are not buffered: use the newest mode seen on arrival, not the released one
            md = state.get("md")
            if md is not None:
                mode = md[1]
        if mode == "inspection" and "inspection_mode" in sup:
            return True
        if mode == "out_of_service" and "out_of_service" in sup:
            return True
        return bool("offline" in sup and self._deadman is not None and self._deadman.id in a)

    def _reconcile(
        self,
        state: dict[str, Any],
        rule: Rule,
        ts: int,
        ctx: _UnitCtx,
        out: Outcome,
        evidence: dict[str, Any] | None = None,
        via_event: bool = False,
    ) -> None:
        """Bring the rule's alert in line with its sources (telemetry condition, event flag)."""
        rid = rule.id
        ent = state["c"].get(rid)
        tele_on = ent is not None and ent[1]
        ev_at = state["e"].get(rid)
        want = tele_on or ev_at is not None
        a = state["a"].get(rid)
        if want:
            if a is not None:
                if a[3]:
                    a[3] = 0  # flapping back on during a deferred clear: stays open, no page
                return
            rz = state["rz"].get(rid)
            if not via_event and rz is not None and ts <= rz:
                # older buffered telemetry must not re-open what an event closed; a newer reading may
                state.setdefault("sp", {}).setdefault(rid, ts)
                return
            if self._blocked(state, rule, ts, ctx, via_event and not tele_on):
                sp = state.setdefault("sp", {})
                if rid not in sp:
                    sp[rid] = ts  # counted once per held-back condition; retried on later readings
                    out.suppressed += 1
                return
            sp = state.get("sp")
            if sp:
                sp.pop(rid, None)
            starts = []
            if tele_on:
                starts.append(ent[0])
            if ev_at is not None:
                starts.append(ev_at)
            opened = min(starts)
            if rz is not None and opened <= rz:
                opened = rz + 1
            evs = []
            if tele_on:
                evs.append(ent[2])
            if evidence is not None and evidence not in evs:
                evs.append(evidence)
            self._open(state, rule, opened, ts, ctx, out, evs, title_from=state["v"])
        elif a is not None:
            f = state["f"].get(rid)
            if f and len(f) >= self.flap_opens and f[-1] - f[-self.flap_opens] <= self.flap_window_ms:
                if not a[3]:
                    a[3] = ts  # flapping: resolve only after it stays clear for hold_s
                    a[4] = evidence
                return
            self._resolve(state, rule, ts, ctx, out, evidence)

    def _deferred_clears(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        for rid, a in list(state["a"].items()):
            if a[3] and ts - a[3] >= self.flap_hold_ms:
                rule = self.rules[rid]
                self._resolve(state, rule, a[3] + self.flap_hold_ms, ctx, out, a[4])

    def _title(self, rule: Rule, v: dict[str, Any] | None) -> str:
        if rule.titles and v:
            for key, title in rule.titles.items():
                fname, _, want = key.partition("=")
                if str(v.get(fname)).lower() == want.lower():
                    return title
        return rule.title

    def _receivers(self, rule: Rule, ctx: _UnitCtx) -> list[Receiver]:
        rec = []
        if ctx.firm_id:
            rec.append(Receiver(kind="firm", id=ctx.firm_id))
        if ctx.user_unit_id:
            rec.append(Receiver(kind="user_unit", id=ctx.user_unit_id))
        if rule.centre:
            rec.append(Receiver(kind="centre", id=self.centre_id))
        if rule.regulator and ctx.district:
            rec.append(Receiver(kind="regulator", id=f"district:{ctx.district}"))
        return rec

    def _alert(
        self,
        state: dict[str, Any],
        rule: Rule,
        alert_id: str,
        opened: int,
        changed: int,
        status: str,
        title: str,
        ctx: _UnitCtx,
        evidence: list[dict[str, Any]],
    ) -> Alert:
        return Alert(
            alert_id=alert_id,
            rule=rule.id,
            rule_version=self.version,
            level=rule.level,  # type: ignore[arg-type]
            device_id=state["d"],
            kind=state["k"],  # type: ignore[arg-type]
            district=ctx.district,
            firm_id=ctx.firm_id,
            user_unit_id=ctx.user_unit_id,
            opened_at=opened,
            changed_at=changed,
            state=status,  # type: ignore[arg-type]
            title=title,
            receivers=self._receivers(rule, ctx),
            evidence=[e for e in evidence if e],
        )

    def _open(
        self,
        state: dict[str, Any],
        rule: Rule,
        opened: int,
        changed: int,
        ctx: _UnitCtx,
        out: Outcome,
        evidence: list[dict[str, Any]],
        title_from: dict[str, Any] | None = None,
    ) -> str:
        alert_id = f"{state['d']}.{rule.id}.{opened}"
        title = self._title(rule, title_from)
        state["a"][rule.id] = [alert_id, opened, title, 0, None]
        f = state["f"].setdefault(rule.id, [])
        f.append(opened)
        if len(f) > self.flap_opens:
            del f[0]
        out.alerts.append(self._alert(state, rule, alert_id, opened, changed, "firing", title, ctx, evidence))
        if rule.hazard is not None:
            self._open_hazard(state, rule, opened, ctx, out, alert_id)
        counters = self._counters.get(rule.id)
        if counters:
            for cr in counters:
                self._count(state, cr, opened, ctx, out)
        return alert_id

    def _resolve(
        self,
        state: dict[str, Any],
        rule: Rule,
        ts: int,
        ctx: _UnitCtx,
        out: Outcome,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        a = state["a"].pop(rule.id, None)
        if a is None:
            return
        state["rz"][rule.id] = ts
        out.alerts.append(
            self._alert(
                state, rule, a[0], a[1], max(ts, a[1]), "resolved", a[2], ctx, [evidence or {"ts": ts}]
            )
        )
        for follow in self._open_for.get(rule.id, ()):
            if follow.id in state["a"]:
                self._resolve(state, follow, ts, ctx, out, evidence)

    def _open_followups(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        """Rules on how long another alert has been open (trapped ≥ 2 h → general accident)."""
        if not self._open_for:
            return
        for rid, a in list(state["a"].items()):
            for follow in self._open_for.get(rid, ()):
                limit = a[1] + ctx.for_ms[follow.index]
                if follow.id not in state["a"] and ts >= limit:
                    self._open(
                        state, follow, limit, limit, ctx, out, [{"ts": limit, "open_since": a[1], "of": a[0]}]
                    )

    def _count(self, state: dict[str, Any], rule: Rule, ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        """Count-in-window: ≥ n openings of the counted rules within the window."""
        n = state["n"].setdefault(rule.id, [])
        n.append(ts)
        n[:] = [x for x in n if x > ts - rule.window_ms]
        if len(n) >= rule.count_n and rule.id not in state["a"]:
            self._open(
                state,
                rule,
                ts,
                ts,
                ctx,
                out,
                [{"ts": ts, "count": len(n), "window_s": rule.window_ms // 1000}],
            )

    def _recount(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        for rid, n in list(state["n"].items()):
            rule = self.rules.get(rid)
            if rule is None:
                continue
            n[:] = [x for x in n if x > ts - rule.window_ms]
            if len(n) < rule.count_n and rid in state["a"]:
                self._resolve(state, rule, ts, ctx, out, {"ts": ts, "count": len(n)})
            if not n:
                del state["n"][rid]

    # ------------------------------------------------------------------ calendar, reports, hazards

    def _calendar_check(self, state: dict[str, Any], ts: int, ctx: _UnitCtx, out: Outcome) -> None:
        """Date-driven rules on event time: inspection due/overdue, maintenance gap, hazard deadlines."""
        state["cn"] = ts + self.calendar_every_ms
        due = state["id"] if state["id"] is not None else ctx.insp_due_ms
        for rule in self._calendar[state["k"]]:
            check = rule.extra.get("check")
            want_at: int | None = None
            if check == "inspection_overdue" and due is not None and ts >= due:
                want_at = due
            elif check == "inspection_due_soon" and due is not None:
                start = due - int(rule.extra.get("days", 30)) * DAY_MS
                if start <= ts < due:
                    want_at = start
            elif check == "maintenance_gap":
                last = max(state["ml"], state["fs"])
                limit = last + int(rule.extra.get("days", 15)) * DAY_MS
                if last and ts > limit:
                    want_at = limit
            a = state["a"].get(rule.id)
            if want_at is not None and a is None:
                if not self._blocked(state, rule, ts, ctx, False):
                    self._open(
                        state, rule, want_at, ts, ctx, out, [{"ts": ts, "check": check, "since": want_at}]
                    )
            elif want_at is None and a is not None:
                self._resolve(state, rule, ts, ctx, out, {"ts": ts, "check": check})
        if state["n"]:
            self._recount(state, ts, ctx, out)
        for hid, hz in list(state["hz"].items()):
            if escalate_overdue(hz, ts):
                out.hazards.append(Hazard(**hz))
            if hz["status"] == "closed" and (hz["closed_at"] or 0) < ts - self.hazard_retention_ms:
                del state["hz"][hid]

    def _open_hazard(
        self, state: dict[str, Any], rule: Rule, ts: int, ctx: _UnitCtx, out: Outcome, alert_id: str = ""
    ) -> None:
        spec = rule.hazard
        assert spec is not None
        self.open_hazard(
            state, spec.source, spec.grade, ts, spec.deadline_days, spec.title, rule.id, ctx, out, alert_id
        )

    def open_hazard(
        self,
        state: dict[str, Any],
        source: str,
        grade: str,
        ts: int,
        deadline_days: int,
        title: str,
        rule_id: str,
        ctx: _UnitCtx,
        out: Outcome,
        alert_id: str = "",
    ) -> None:
        """Open a hazard, or count another occurrence on the unit's open one from the same source."""
        for hz in state["hz"].values():
            if hz["source"] == source and hz["status"] != "closed":
                hz["occurrences"] += 1
                hz["updated_at"] = max(hz["updated_at"], ts)
                out.hazards.append(Hazard(**hz))
                return
        hz = new_hazard(
            device_id=state["d"],
            source=source,
            grade=grade,
            opened_ms=ts,
            deadline_days=deadline_days,
            title=title,
            rule=rule_id,
            rule_version=self.version,
            unit=ctx.unit,
            kind=state["k"],
            alert_id=alert_id,
            escalate_every_days=self.escalate_every_days,
        )
        state["hz"][hz["hazard_id"]] = hz
        out.hazards.append(Hazard(**hz))

    def _auto_rectify(
        self, state: dict[str, Any], sources: tuple[str, ...], ts: int, by: str, out: Outcome
    ) -> None:
        """A report that removes the cause (inspection passed, maintenance done) rectifies the hazard."""
        for hid, hz in list(state["hz"].items()):
            if hz["source"] in sources and hz["status"] == "reported":
                new, changed = apply_hazard_report(
                    hz, {"action": "rectified", "by": by, "ts": ts, "note": "auto"}
                )
                if changed:
                    state["hz"][hid] = new
                    out.hazards.append(Hazard(**new))

    def _report(self, state: dict[str, Any] | None, env: dict[str, Any], unit: Any) -> Outcome:
        report = env.get("report")
        body = env["body"]
        if report == "hazard":
            if state is None:
                return Outcome({}, rejected=[f"unknown hazard {body.get('hazard_id')}"])
            out = Outcome(state)
            hid = body.get("hazard_id")
            hz = state["hz"].get(hid)
            if hz is None:
                out.rejected.append(f"unknown hazard {hid}")
                return out
            new, changed = apply_hazard_report(hz, body)
            if changed:
                state["hz"][hid] = new
                out.hazards.append(Hazard(**new))
            else:
                out.rejected.append(f"{body.get('action')} does not apply to {hid} ({hz['status']})")
            return out
        device_id = env.get("device_id") or body.get("device_id")
        if not device_id:
            return Outcome(state or {}, rejected=[f"{report} report without device_id"])
        if state is None:
            kind = str(unit.kind) if unit is not None else "elevator"
            state = self.new_state(kind, device_id)
        out = Outcome(state)
        ctx = self._ctx(device_id, unit, state["k"])
        ts = env["ts"]
        if not state["fs"]:
            state["fs"] = ts
        if report == "maintenance":
            start, end = body.get("start"), body.get("end")
            if start is not None:
                state["m"] = [start, end if end is not None else start + self.maintenance_default_ms]
            state["ml"] = max(state["ml"], end or start or ts)
            self._auto_rectify(state, ("maintenance_gap",), ts, f"firm:{body.get('firm_id', '')}", out)
        elif report == "inspection":
            state["id"] = _due_ms(body.get("next_due"), self.tz)
            if body.get("result") == "pass":
                self._auto_rectify(state, ("overdue_inspection", "inspection_failed"), ts, "inspection", out)
                self._report_rule_clear(state, "inspection_failed", ts, ctx, out)
            else:
                self._report_rule_open(state, "inspection_failed", ts, ctx, out, body)
        elif report == "accident":
            for rule in self._rules_list:
                if rule.ctype == "report" and rule.extra.get("report") == "accident":
                    ev = {
                        k: body[k] for k in ("report_id", "grade", "deaths", "serious_injuries") if k in body
                    }
                    ev["ts"] = ts
                    alert_id = f"{device_id}.{rule.id}.{ts}"
                    title = f"{rule.title} ({body.get('grade', '')})"
                    out.alerts.append(self._alert(state, rule, alert_id, ts, ts, "firing", title, ctx, [ev]))
        if ctx.unit is not None:
            self._calendar_check(state, max(ts, state["mx"]), ctx, out)
        self._set_due(state, ctx)
        return out

    def _report_rule_open(
        self, state: dict[str, Any], check: str, ts: int, ctx: _UnitCtx, out: Outcome, body: dict[str, Any]
    ) -> None:
        for rule in self._rules_list:
            if (
                rule.ctype == "report"
                and rule.extra.get("report") == check
                and rule.kind in (state["k"], "any")
                and rule.id not in state["a"]
            ):
                ev = {"ts": ts, **{k: body[k] for k in body if k != "device_id"}}
                self._open(state, rule, ts, ts, ctx, out, [ev])

    def _report_rule_clear(
        self, state: dict[str, Any], check: str, ts: int, ctx: _UnitCtx, out: Outcome
    ) -> None:
        for rule in self._rules_list:
            if rule.ctype == "report" and rule.extra.get("report") == check and rule.id in state["a"]:
                self._resolve(state, rule, ts, ctx, out, {"ts": ts, "result": "pass"})

    # ------------------------------------------------------------------ scheduling

    def _set_due(self, state: dict[str, Any], ctx: _UnitCtx) -> None:
        """When tick() next has work, in processing time (kept in state: due_for_tick is O(1))."""
        rx = state["rx"]
        skew = rx - state["mx"]
        if state["b"]:
            # a unit streaming normally: tick flushes the buffer after lateness_s of quiet, which
            # also matures pending durations by hold; the exact pending due is computed then
            due = rx + self.lateness_ms
            cal = state["cn"] + skew
            state["due"] = cal if cal < due else due
            return
        dm = self._deadman
        offline = dm is not None and dm.id in state["a"]
        if state["b"]:
            due = rx + self.lateness_ms  # (≤ rx + timeout)
        elif dm is not None and not offline:
            due = rx + self.timeout_ms
        else:
            due = NEVER
        if not offline and state["c"]:
            for rid, ent in state["c"].items():
                if not ent[1]:
                    rule = self.rules.get(rid)
                    wait = ctx.for_ms[rule.index] if rule is not None else 0
                    due = min(due, ent[0] + wait + self.lateness_ms + skew)
        cal = state["cn"] + skew
        state["due"] = cal if cal < due else due


__all__: list[str] = ["Outcome", "RuleEngine"]
