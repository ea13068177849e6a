"""Values computed from telemetry before the rules run: pressure rate, subcooling margin,
efficiency estimate, escalator handrail deviation and direction reversal. Only the ones some
rule of the unit's kind reads are computed (``Variant.derived``)."""

from __future__ import annotations

from typing import Any

from sesmon.contract.physics import AIR_O2_PCT, indirect_efficiency_pct, saturation_temp_c

from .catalogue import Derived
from .state import UnitState


def derive(st: UnitState, d: Derived, v: dict[str, Any], body: dict[str, Any], ts: int) -> None:
    """Update one derived value in the merged values ``v`` after the reading ``body``."""
    func = d.func
    if func == "rate":
        x = body.get(d.source)
        if x is None:
            return
        anchor = st.rate_anchors.get(d.name)
        if anchor is None or ts - anchor[0] > 10 * d.window_ms:
            st.rate_anchors[d.name] = (ts, x)
            v.pop(d.name, None)
        elif ts - anchor[0] >= d.window_ms:
            v[d.name] = round((x - anchor[1]) * d.per_ms / (ts - anchor[0]), 6)
            st.rate_anchors[d.name] = (ts, x)
    elif func == "tsat_margin":
        p = v.get("pressure_mpa")
        temp = v.get(d.source)
        if p is not None and temp is not None and ("pressure_mpa" in body or d.source in body):
            v[d.name] = round(saturation_temp_c(p) - temp, 2)
    elif func == "efficiency":
        if "flue_gas_temp_c" not in body and "o2_pct" not in body and "burner" not in body:
            return
        tfg, o2 = v.get("flue_gas_temp_c"), v.get("o2_pct")
        eta = None
        if (
            tfg is not None
            and o2 is not None
            and o2 < AIR_O2_PCT
            and v.get("burner") in ("low_fire", "high_fire")
        ):
            eta = indirect_efficiency_pct(tfg, o2)  # Siegert, natural gas (domain.md §2.5)
        if eta is None:
            v.pop(d.name, None)
        else:
            v[d.name] = round(eta, 2)
    elif func == "handrail_deviation":
        speed = v.get("speed_mps")
        rails = [x for x in (v.get("handrail_left_mps"), v.get("handrail_right_mps")) if x is not None]
        if v.get("moving") is not True or not speed or speed < 0.1 or not rails:
            v.pop(d.name, None)
        else:  # the slower handrail against the steps, per cent (negative: slower)
            v[d.name] = round(100.0 * (min(rails) - speed) / speed, 2)
    elif func == "direction_mismatch":
        going, set_to = v.get("direction"), v.get("set_direction")
        if going is None or set_to is None:
            v.pop(d.name, None)
        else:
            v[d.name] = v.get("moving") is True and going in ("up", "down") and going != set_to
