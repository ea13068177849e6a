"""Boiler physics that the simulator, the rules and the metrics must agree on.

One definition each, so a simulated boiler, a rule's threshold and a daily efficiency
figure cannot drift apart:

- saturation temperature of water at a gauge pressure (IAPWS-IF97 region 4, closed form,
  so no iapws/CoolProp dependency; domain.md §2.2: 184 °C at 1.0 MPa g);
- the Siegert flue-gas loss q2 and the indirect efficiency η = 100 − q2 − other losses
  (GB/T 10180-2017's indirect method; domain.md §2.5: 150 °C flue gas, 20 °C air,
  3.5 % O₂ → q2 ≈ 6.1 %, η ≈ 92 %). Good for a trend, not a certified test.
"""

from __future__ import annotations

import math

ATMOSPHERE_MPA = 0.101325
#: Siegert coefficients for natural gas
SIEGERT_A_GAS = 0.66
SIEGERT_B_GAS = 0.009
#: q5 (surface loss); q3, q4 ≈ 0 for gas firing
OTHER_LOSSES_GAS_PCT = 1.5
DEFAULT_AIR_C = 20.0
#: O₂ at or above this is air, not flue gas (burner off or purging): no efficiency
AIR_O2_PCT = 20.5

_IF97_N4 = (
    0.0,
    0.11670521452767e4,
    -0.72421316703206e6,
    -0.17073846940092e2,
    0.12020824702470e5,
    -0.32325550322333e7,
    0.14915108613530e2,
    -0.48232657361591e4,
    0.40511340542057e6,
    -0.23855557567849,
    0.65017534844798e3,
)


def saturation_temp_c(gauge_mpa: float) -> float:
    """Saturation temperature (°C) of water at a gauge pressure: IF97 region-4 backward equation."""
    n = _IF97_N4
    p = max(gauge_mpa + ATMOSPHERE_MPA, 0.000611213)
    b = p**0.25
    e = b * b + n[3] * b + n[6]
    f = n[1] * b * b + n[4] * b + n[7]
    g = n[2] * b * b + n[5] * b + n[8]
    d = 2 * g / (-f - math.sqrt(f * f - 4 * e * g))
    t_k = (n[10] + d - math.sqrt((n[10] + d) ** 2 - 4 * (n[9] + n[10] * d))) / 2
    return t_k - 273.15


def flue_gas_loss_pct(
    flue_c: float,
    o2_pct: float,
    air_c: float = DEFAULT_AIR_C,
    a: float = SIEGERT_A_GAS,
    b: float = SIEGERT_B_GAS,
) -> float | None:
    """Siegert q2 in per cent; None when the "flue gas" is air. Never negative."""
    if o2_pct >= AIR_O2_PCT:
        return None
    return max(0.0, (flue_c - air_c) * (a / (21.0 - o2_pct) + b))


def indirect_efficiency_pct(
    flue_c: float, o2_pct: float, air_c: float = DEFAULT_AIR_C, other_losses_pct: float = OTHER_LOSSES_GAS_PCT
) -> float | None:
    """η = 100 − q2 − other losses, per cent (None when q2 is unknown)."""
    q2 = flue_gas_loss_pct(flue_c, o2_pct, air_c)
    return None if q2 is None else 100.0 - q2 - other_losses_pct
