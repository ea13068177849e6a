"""Generate a plausible Guangzhou fleet registry, deterministic from a seed.

Districts, coordinates, firms and rated parameters follow domain.md §1.5, §2.2 and §2.4.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from sesmon.registry import DISTRICTS, Unit
from sesmon.schemas import Kind

# rough district centres (lat, lon) and share of the city's elevators
DISTRICT_CENTRES: dict[str, tuple[float, float, float]] = {
    "越秀": (23.129, 113.267, 0.12),
    "海珠": (23.084, 113.317, 0.12),
    "荔湾": (23.125, 113.244, 0.08),
    "天河": (23.125, 113.361, 0.18),
    "白云": (23.158, 113.273, 0.14),
    "黄埔": (23.106, 113.459, 0.08),
    "番禺": (22.938, 113.384, 0.12),
    "花都": (23.404, 113.220, 0.05),
    "南沙": (22.801, 113.525, 0.04),
    "从化": (23.548, 113.586, 0.02),
    "增城": (23.290, 113.829, 0.05),
}
KEY_SITES = ("school", "hospital", "station", "mall", "kindergarten", "stadium", "park")
STREETS = ("中山路", "环市路", "天河路", "江南大道", "解放路", "黄埔大道", "广州大道", "工业大道", "新港路")


def steam_valve_setting(working_mpa: float) -> float:
    """Lower safety-valve set pressure for a steam boiler (domain.md §2.4)."""
    if working_mpa <= 0.8:
        return round(working_mpa + 0.03, 3)
    if working_mpa <= 5.9:
        return round(1.04 * working_mpa, 3)
    return round(1.05 * working_mpa, 3)


def _firms(rng: random.Random, count: int) -> list[tuple[str, float]]:
    """Maintenance firms with Zipf-like sizes: a few big ones, many small."""
    return [(f"F{idx:03d}", 1.0 / (idx**0.8)) for idx in range(1, count + 1)]


def generate_fleet(elevators: int, boilers: int, seed: int = 1, today: date | None = None) -> list[Unit]:
    rng = random.Random(seed)
    today = today or date(2026, 11, 1)
    firms = _firms(rng, max(3, min(40, elevators // 60 + 3)))
    firm_ids = [f for f, _ in firms]
    firm_weights = [w for _, w in firms]
    districts = list(DISTRICT_CENTRES)
    weights = [DISTRICT_CENTRES[d][2] for d in districts]
    units: list[Unit] = []

    def place(prefix: str, idx: int) -> dict[str, object]:
        district = rng.choices(districts, weights)[0]
        lat, lon, _ = DISTRICT_CENTRES[district]
        registered = today - timedelta(days=rng.randint(60, 25 * 365))
        last_insp = today - timedelta(days=rng.randint(10, 700))
        due = last_insp + timedelta(days=365 * rng.choice((1, 1, 2, 3)))
        if rng.random() < 0.02:  # a few 超期未检
            due = today - timedelta(days=rng.randint(1, 120))
        return {
            "district": district,
            "address": f"广州市{district}区{rng.choice(STREETS)}{rng.randint(1, 999)}号",
            "lat": round(lat + rng.gauss(0, 0.03), 5),
            "lon": round(lon + rng.gauss(0, 0.03), 5),
            "user_unit_id": f"U{rng.randint(1, max(1, (elevators + boilers) // 8)):05d}",
            "firm_id": rng.choices(firm_ids, firm_weights)[0],
            "key_site": rng.choice(KEY_SITES) if rng.random() < 0.12 else "",
            "registered_on": registered,
            "last_inspection": last_insp,
            "next_inspection_due": due,
            "status": "in_use" if rng.random() > 0.01 else "suspended",
        }

    for idx in range(elevators):
        floors = rng.choice((6, 8, 11, 18, 24, 28, 33, 45))
        speed = 1.0 if floors <= 8 else 1.75 if floors <= 18 else 2.5 if floors <= 33 else 4.0
        units.append(
            Unit(
                device_id=f"GZE{idx:07d}",
                kind=Kind.elevator,
                type_code=rng.choices(("3110", "3120"), (0.93, 0.07))[0],
                rated_speed_mps=speed,
                rated_load_kg=rng.choice((630, 800, 1000, 1050, 1350, 1600)),
                floors=floors,
                **place("E", idx),  # type: ignore[arg-type]
            )
        )
    for idx in range(boilers):
        steam = rng.random() < 0.6
        pressure = rng.choice((1.25, 1.25, 1.6, 2.5)) if steam else rng.choice((0.7, 1.0, 1.25))
        units.append(
            Unit(
                device_id=f"GZB{idx:07d}",
                kind=Kind.boiler,
                type_code="1100" if steam else "1200",
                rated_pressure_mpa=pressure,
                capacity_tph=rng.choice((2, 4, 6, 10, 15, 20)) if steam else None,
                capacity_mw=None if steam else rng.choice((1.4, 2.8, 4.2, 7.0)),
                safety_valve_set_mpa=steam_valve_setting(pressure)
                if steam
                else round(max(1.10 * pressure, pressure + 0.07), 3),
                **place("B", idx),  # type: ignore[arg-type]
            )
        )
    return units


__all__ = ["DISTRICTS", "generate_fleet", "steam_valve_setting"]
