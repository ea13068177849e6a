"""The deadman (终端离线): no message for ``offline_after_heartbeats × heartbeat_s``, or a Last Will.

Live, ``tick`` opens ``offline`` in processing time with ``opened = last ts + timeout``; a replay
without ticks opens and resolves the same alert id when the next reading shows the gap. A bare
Last Will carries server time: it does not move the device-time watermark, and any message
received after it clears the offline alert.
"""

from __future__ import annotations

from typing import Any

from . import lifecycle
from .compiled import Compiled, UnitCtx
from .outcome import Outcome
from .state import UnitState
from .suppression import blocked


def is_offline(cfg: Compiled, st: UnitState) -> bool:
    return cfg.deadman is not None and cfg.deadman.id in st.alerts


def on_status(cfg: Compiled, st: UnitState, env: dict[str, Any], ctx: UnitCtx, out: Outcome) -> None:
    dm = cfg.deadman
    if dm is None:
        return
    body = env["body"]
    ts = env["ts"]
    if body.get("status") == "offline":
        if dm.id not in st.alerts:
            evidence = {"ts": ts, "status": "offline", "lwt": bool(body.get("lwt", False))}
            if not blocked(cfg, st, dm, ts, ctx, False):
                lifecycle.open_alert(cfg, st, dm, ts, ts, ctx, out, [evidence])
                st.offline_rx = env.get("received_ms") or ts
    else:
        clear(cfg, st, ts, ctx, out, env.get("received_ms") or ts)


def clear(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome, rx: int) -> None:
    """Newer in device time, or received after the Last Will (whose ts is server time)."""
    dm = cfg.deadman
    if dm is None:
        return
    a = st.alerts.get(dm.id)
    if a is not None and (ts > a.opened or (st.offline_rx and rx > st.offline_rx)):
        st.offline_rx = 0
        lifecycle.resolve(cfg, st, dm, ts, ctx, out, {"ts": ts, "status": "online"})


def gap(cfg: Compiled, st: UnitState, ts: int, ctx: UnitCtx, out: Outcome) -> None:
    """Event-time deadman: a reading after a silence longer than the timeout.

    Opens (if the live tick did not already) the offline alert with the id the tick would have
    used; the reading itself then resolves it, so a replay without ticks yields the same alerts.
    """
    dm = cfg.deadman
    assert dm is not None
    opened = st.max_ts + cfg.timeout_ms
    if dm.id not in st.alerts and not blocked(cfg, st, dm, opened, ctx, False):
        evidence = [{"ts": st.max_ts, "silent_ms": ts - st.max_ts}]
        lifecycle.open_alert(cfg, st, dm, opened, opened, ctx, out, evidence)


def on_tick(cfg: Compiled, st: UnitState, quiet_ms: int, ctx: UnitCtx, out: Outcome) -> None:
    """Processing-time deadman: the unit has been silent ``quiet_ms``."""
    dm = cfg.deadman
    if dm is None or quiet_ms < cfg.timeout_ms or dm.id in st.alerts or not st.max_ts:
        return
    opened = st.max_ts + cfg.timeout_ms
    if not blocked(cfg, st, dm, opened, ctx, False):
        lifecycle.open_alert(
            cfg, st, dm, opened, opened, ctx, out, [{"ts": st.max_ts, "silent_ms": quiet_ms}]
        )
