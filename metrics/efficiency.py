"""Boiler thermal efficiency by the indirect method (GB/T 10180-2017: η = 100 − (q2 + … + q6)).

Online, only the flue-gas loss q2 moves: the Siegert form for natural gas,
q2 ≈ (t_fg − t_air)·(0.66 / (21 − O₂) + 0.009) %, with the other losses taken as a constant
(q5 ≈ 1.5 %, q3/q4 ≈ 0 for gas). domain.md §2.5: 150 °C flue gas, 20 °C air, 3.5 % O₂ →
q2 ≈ 6.1 %, η ≈ 92 %. Good for a trend and a daily figure per boiler, not a certified test.

The formula is :mod:`sesmon.contract.physics`, shared with the simulator and the rules.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, tzinfo
from typing import Any

from metrics.windows import GUANGZHOU
from sesmon.contract.physics import (
    AIR_O2_PCT as AIR_O2_PCT,
)
from sesmon.contract.physics import (
    DEFAULT_AIR_C,
    OTHER_LOSSES_GAS_PCT,
)
from sesmon.contract.physics import (
    flue_gas_loss_pct as flue_gas_loss_pct,
)
from sesmon.contract.physics import (
    indirect_efficiency_pct as indirect_efficiency_pct,
)
from sesmon.contract.time import local_date

FIRING = ("low_fire", "high_fire")


@dataclass(frozen=True, slots=True)
class DailyEfficiency:
    """One boiler's efficiency over one local day, from the readings taken while firing."""

    device_id: str
    day: date
    samples: int
    efficiency_pct: float
    flue_gas_loss_pct: float
    fuel_weighted: bool  # weighted by fuel flow (energy-weighted) rather than per reading


def _firing(reading: Mapping[str, Any]) -> bool:
    burner = reading.get("burner")
    if burner is not None:
        return burner in FIRING
    return (reading.get("fuel_flow_nm3h") or 0) > 0


def daily_efficiency(
    readings: Iterable[Mapping[str, Any]],
    tz: tzinfo = GUANGZHOU,
    air_c: float = DEFAULT_AIR_C,
    other_losses_pct: float = OTHER_LOSSES_GAS_PCT,
) -> list[DailyEfficiency]:
    """Per boiler and local day: readings (boiler telemetry bodies with ``device_id``, ``ts``,
    ``flue_gas_temp_c``, ``o2_pct`` and ``burner`` or ``fuel_flow_nm3h``) taken while firing.

    Weighted by fuel flow when every counted reading has one (the day's heat-weighted loss),
    else a plain mean. An ``air_temp_c`` in a reading replaces ``air_c``.
    """
    groups: dict[tuple[str, date], list[tuple[float, float | None]]] = defaultdict(list)
    for r in readings:
        flue, o2 = r.get("flue_gas_temp_c"), r.get("o2_pct")
        if flue is None or o2 is None or not _firing(r):
            continue
        q2 = flue_gas_loss_pct(flue, o2, r.get("air_temp_c", air_c))
        if q2 is None:
            continue
        fuel = r.get("fuel_flow_nm3h")
        groups[(str(r["device_id"]), local_date(int(r["ts"]), tz))].append((q2, fuel if fuel else None))
    out = []
    for (device_id, day), samples in sorted(groups.items()):
        weighted = all(f is not None for _, f in samples)
        weights = [f if weighted else 1.0 for _, f in samples]
        q2 = sum(q * w for (q, _), w in zip(samples, weights, strict=True)) / sum(weights)  # type: ignore[misc]
        out.append(DailyEfficiency(device_id, day, len(samples), 100.0 - q2 - other_losses_pct, q2, weighted))
    return out
