"""Values computed from telemetry before the rules run: pressure rate, subcooling margin,
efficiency estimate, escalator handrail deviation and direction reversal. Only the ones some
rule of the unit's kind reads are computed (``Variant.derived``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

from .catalogue import Derived
from .state import UnitState

# Saturation temperature of water (°C) against absolute pressure (MPa), IAPWS-IF97 values.
_TSAT_TABLE = (
    (0.101325, 100.0),
    (0.2, 120.2),
    (0.3, 133.5),
    (0.4, 143.6),
    (0.5, 151.8),
    (0.6, 158.8),
    (0.7, 165.0),
    (0.8, 170.4),
    (0.9, 175.4),
    (1.0, 179.9),
    (1.2, 188.0),
    (1.4, 195.0),
    (1.6, 201.4),
    (1.8, 207.1),
    (2.0, 212.4),
    (2.5, 224.0),
    (3.0, 233.9),
    (4.0, 250.4),
    (5.0, 263.9),
    (6.0, 275.6),
    (8.0, 295.0),
    (10.0, 311.0),
)


def tsat_c(gauge_mpa: float) -> float:
    """Saturation temperature at a gauge pressure (linear in log p between table points)."""
    p = gauge_mpa + 0.101325
    table = _TSAT_TABLE
    if p <= table[0][0]:
        return table[0][1]
    for (p0, t0), (p1, t1) in itertools.pairwise(table):
        if p <= p1:
            return t0 + (t1 - t0) * (math.log(p) - math.log(p0)) / (math.log(p1) - math.log(p0))
    return table[-1][1]


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
            v[d.name] = round(tsat_c(p) - temp, 2)
    elif func == "efficiency":
        if "flue_gas_temp_c" not in body and "o2_pct" not in body and "burner" not in body:
            return
        tfg, o2 = v.get("flue_gas_temp_c"), v.get("o2_pct")
        if tfg is None or o2 is None or o2 >= 20.5 or v.get("burner") not in ("low_fire", "high_fire"):
            v.pop(d.name, None)
        else:
            q2 = (tfg - 20.0) * (0.66 / (21.0 - o2) + 0.009)  # Siegert, natural gas (domain.md §2.5)
            v[d.name] = round(100.0 - q2 - 1.5, 2)
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
