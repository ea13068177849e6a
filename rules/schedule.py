"""When ``tick`` next has work for a unit, in processing time (kept in the state: O(1) to read).

A streaming unit is due ``lateness_s`` after its last message (to flush the reorder buffer,
which also matures durations by hold); a quiet one when its deadman, a pending duration, a
sustained clear or the next date check falls due. Device-time instants are moved to processing
time with the unit's last seen clock skew.
"""

from __future__ import annotations

from .compiled import Compiled
from .state import NO_DUE, UnitState


def set_due(cfg: Compiled, st: UnitState, for_ms: list[int]) -> None:
    rx = st.last_rx
    skew = rx - st.max_ts
    cal = st.next_calendar + skew
    if st.reorder:
        due = rx + cfg.lateness_ms
        st.due = cal if cal < due else due
        return
    dm = cfg.deadman
    offline = dm is not None and dm.id in st.alerts
    due = rx + cfg.timeout_ms if dm is not None and not offline else NO_DUE
    if not offline:
        if st.conditions:
            for rid, ent in st.conditions.items():
                if not ent.matured:
                    wait = ent.wait_ms
                    if wait is None:
                        rule = cfg.rules.get(rid)
                        wait = for_ms[rule.index] if rule is not None else 0
                    due = min(due, ent.since + wait + cfg.lateness_ms + skew)
        for rid, since in st.clear_since.items():
            due = min(due, since + cfg.rules[rid].clear_after_ms + cfg.lateness_ms + skew)
    st.due = cal if cal < due else due
