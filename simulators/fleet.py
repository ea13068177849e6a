"""Generate a plausible Guangzhou fleet registry (DESIGN.md §3), deterministic from a seed.

Why buildings: elevators come in groups that share an address, a user unit (property
firm), a maintenance firm and a building type, and a registry with each car in its own
random building would make per-firm and per-site metrics meaningless.

- device_id: a 20-digit 设备注册代码 (type code 4 + GB/T 2260 district code 6 + year of
  registration 4 + serial 6), as real registries use;
- districts weighted by stock, coordinates scattered around each district centre;
- maintenance firms: a few dozen with Zipf-like sizes (a few big, many small);
- elevators: residential / office / commercial buildings with matching floors, speeds
  (1.0–4 m/s) and loads (630–1600 kg) (domain.md §1.5); about 8 % of elevator-kind units are
  escalators (3310) or moving walks (3320) at 0.5 m/s, mostly in malls, stations and offices;
- boilers: steam 2–20 t/h at 1.25–2.5 MPa with the lower safety-valve setting of
  domain.md §2.4 and a lowest safe water level, and hot-water boilers (0.7–7 MW) with
  1.10 P (≥ P + 0.07) and a design outlet temperature of 95 or 115 °C (domain.md §2.3);
- inspection dates: elevators on the TSG T7001-2023 cycle (years 1, 4, 7, 9, 11, 13, 15,
  then yearly), boilers' external inspection yearly; a few per cent overdue (超期未检).
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from sesmon.contract.registry import DISTRICTS, Unit
from sesmon.contract.schemas import Kind

# district -> (lat, lon, share of the city's elevators, GB/T 2260 code)
DISTRICT_INFO: dict[str, tuple[float, float, float, str]] = {
    "越秀": (23.129, 113.267, 0.12, "440104"),
    "海珠": (23.084, 113.317, 0.12, "440105"),
    "荔湾": (23.125, 113.244, 0.08, "440103"),
    "天河": (23.125, 113.361, 0.18, "440106"),
    "白云": (23.158, 113.273, 0.14, "440111"),
    "黄埔": (23.106, 113.459, 0.08, "440112"),
    "番禺": (22.938, 113.384, 0.12, "440113"),
    "花都": (23.404, 113.220, 0.05, "440114"),
    "南沙": (22.801, 113.525, 0.04, "440115"),
    "从化": (23.548, 113.586, 0.02, "440117"),
    "增城": (23.290, 113.829, 0.05, "440118"),
}
DISTRICT_CENTRES = {d: (lat, lon, w) for d, (lat, lon, w, _) in DISTRICT_INFO.items()}
KEY_SITES = ("school", "hospital", "station", "mall", "kindergarten", "stadium", "park")
STREETS = ("中山路", "环市路", "天河路", "江南大道", "解放路", "黄埔大道", "广州大道", "工业大道", "新港路",
           "东风路", "人民路", "滨江路", "花城大道", "市桥路", "广园路")  # fmt: skip
# elevator periodic-inspection years after registration (TSG T7001-2023), yearly after 15
INSPECTION_YEARS = (1, 4, 7, 9, 11, 13, 15)
OVERDUE_SHARE = 0.03

# building type -> (weight, floors choices, cars per building); commercial/public are key sites
BUILDINGS: dict[str, tuple[float, tuple[int, ...], tuple[int, int]]] = {
    "residential": (0.68, (6, 7, 9, 11, 18, 24, 28, 32, 33), (1, 4)),
    "office": (0.12, (12, 20, 28, 38, 45, 60), (3, 8)),
    "commercial": (0.14, (4, 5, 6, 8, 10), (2, 8)),
    "public": (0.06, (4, 6, 8, 12, 16), (1, 4)),
}
#: share of a building type's elevator-kind units that are escalators or moving walks; with the
#: weights above about 8 % of the fleet (malls and stations have many, homes none)
ESCALATOR_SHARE = {"residential": 0.0, "office": 0.05, "commercial": 0.28, "public": 0.15}
MOVING_WALK_SHARE = 0.15  # of those, moving walks (3320): malls, stations
ESCALATOR_SPEED_MPS = 0.5  # nominal speed (domain.md §1.5)
#: lowest safe water level of steam boilers, mm against the normal level (drum design; TSG 11-2020)
LOWEST_SAFE_LEVELS_MM = (-100.0, -120.0, -120.0, -120.0, -150.0)


def steam_valve_setting(working_mpa: float) -> float:
    """Lower safety-valve set pressure for a steam boiler (domain.md §2.4)."""
    if working_mpa <= 0.8:
        return round(working_mpa + 0.03, 3)
    if working_mpa <= 5.9:
        return round(1.04 * working_mpa, 3)
    return round(1.05 * working_mpa, 3)


def hot_water_valve_setting(working_mpa: float) -> float:
    """Lower hot-water safety-valve setting: 1.10 P, at least P + 0.07 (domain.md §2.4)."""
    return round(max(1.10 * working_mpa, working_mpa + 0.07), 3)


def _anniversary(registered: date, years: int) -> date:
    try:
        return registered.replace(year=registered.year + years)
    except ValueError:  # 29 February
        return registered.replace(year=registered.year + years, day=28)


def elevator_inspection_dates(registered: date, today: date) -> tuple[date | None, date]:
    """(last periodic inspection, next due) on the TSG T7001-2023 cycle, anchored to acceptance."""
    age = today.year - registered.year + 1
    years = [y for y in INSPECTION_YEARS] + list(range(16, max(17, age + 3)))
    last: date | None = None
    for y in years:
        due = _anniversary(registered, y)
        if due > today:
            return last, due
        last = due
    return last, _anniversary(registered, years[-1] + 1)


def _firms(count: int) -> list[tuple[str, float]]:
    """Maintenance firms with Zipf-like sizes: a few big ones, many small."""
    return [(f"F{idx:03d}", 1.0 / (idx**0.9)) for idx in range(1, count + 1)]


def generate_fleet(elevators: int, boilers: int, seed: int = 1, today: date | None = None) -> list[Unit]:
    """N elevators and M boilers over Guangzhou's 11 districts; same seed, same fleet."""
    rng = random.Random(seed)
    # Separate generators for what issue 8 added (escalators, per-boiler limits), so the draws of
    # the main generator, and with them every unit's other columns, are what they were before.
    escalator_rng = random.Random(f"{seed}:escalators")
    limits_rng = random.Random(f"{seed}:boiler-limits")
    today = today or date(2026, 11, 1)
    firms = _firms(max(3, min(48, elevators // 50 + 3)))
    firm_ids = [f for f, _ in firms]
    firm_weights = [w for _, w in firms]
    districts = list(DISTRICT_INFO)
    weights = [DISTRICT_INFO[d][2] for d in districts]
    n_user_units = max(1, (elevators + boilers) // 6)
    units: list[Unit] = []
    serial = 0

    def reg_code(type_code: str, district: str, registered: date) -> str:
        nonlocal serial
        serial += 1
        return f"{type_code}{DISTRICT_INFO[district][3]}{registered.year:04d}{serial:06d}"

    def site(district: str) -> dict[str, object]:
        lat, lon, _, _ = DISTRICT_INFO[district]
        spread = 0.02 if district in ("越秀", "荔湾", "海珠", "天河") else 0.05
        return {
            "district": district,
            "address": f"广州市{district}区{rng.choice(STREETS)}{rng.randint(1, 999)}号",
            "lat": round(lat + rng.gauss(0, spread), 5),
            "lon": round(lon + rng.gauss(0, spread), 5),
            "user_unit_id": f"U{rng.randint(1, n_user_units):05d}",
            "firm_id": rng.choices(firm_ids, firm_weights)[0],
        }

    def status() -> str:
        x = rng.random()
        return "in_use" if x < 0.98 else "suspended" if x < 0.995 else "scrapped"

    kinds = list(BUILDINGS)
    bweights = [BUILDINGS[k][0] for k in kinds]
    made = 0
    while made < elevators:
        btype = rng.choices(kinds, bweights)[0]
        _, floor_choices, (lo, hi) = BUILDINGS[btype]
        district = rng.choices(districts, weights)[0]
        where = site(district)
        floors = rng.choice(floor_choices)
        if btype == "commercial":
            key_site = rng.choice(("mall", "mall", "station", "stadium"))
        elif btype == "public":
            key_site = rng.choice(("school", "hospital", "hospital", "kindergarten", "park"))
        else:
            key_site = ""
        speed = 1.0 if floors <= 8 else 1.75 if floors <= 18 else 2.5 if floors <= 33 else 4.0
        if btype == "office" and floors >= 20:
            speed = rng.choice((2.5, 3.0, 4.0))
        registered = today - timedelta(days=rng.randint(60, 25 * 365))
        for _ in range(min(rng.randint(lo, hi), elevators - made)):
            freight = btype in ("commercial", "public") and rng.random() < 0.12
            type_code = "3120" if freight else "3110"
            last, due = elevator_inspection_dates(registered, today)
            if rng.random() < OVERDUE_SHARE:  # 超期未检: the last due date passed without a pass
                due = today - timedelta(days=rng.randint(1, 200))
                last = _anniversary(due, -1) if last is None or last >= due else last
            load = (
                rng.choice((1000, 1350, 1600, 2000))
                if freight
                else rng.choice((630, 800, 1000, 1050, 1350, 1600))
            )
            rated_speed: float = 0.5 if freight else speed
            rated_load: float | None = float(min(load, 1600))
            stops = floors
            if escalator_rng.random() < ESCALATOR_SHARE[btype]:
                # escalator or moving walk: two landings, no car, so no rated load (GB 16899-2011)
                walk = btype != "office" and escalator_rng.random() < MOVING_WALK_SHARE
                type_code = "3320" if walk else "3310"
                rated_speed, rated_load, stops = ESCALATOR_SPEED_MPS, None, 2
            units.append(
                Unit(
                    device_id=reg_code(type_code, district, registered),
                    kind=Kind.elevator,
                    type_code=type_code,
                    key_site=key_site,
                    rated_speed_mps=rated_speed,
                    rated_load_kg=rated_load,
                    floors=stops,
                    registered_on=registered,
                    last_inspection=last,
                    next_inspection_due=due,
                    status=status(),
                    **where,  # type: ignore[arg-type]
                )
            )
            made += 1
    for _ in range(boilers):
        district = rng.choices(districts, weights)[0]
        where = site(district)
        steam = rng.random() < 0.6
        registered = today - timedelta(days=rng.randint(200, 20 * 365))
        last = today - timedelta(days=rng.randint(1, 364))
        due = _anniversary(last, 1)
        if rng.random() < OVERDUE_SHARE:
            due = today - timedelta(days=rng.randint(1, 150))
            last = _anniversary(due, -1)
        if steam:
            pressure = rng.choice((1.25, 1.25, 1.25, 1.6, 2.5))
            extra = {
                "type_code": "1100",
                "capacity_tph": float(rng.choice((2, 4, 4, 6, 8, 10, 15, 20))),
                "safety_valve_set_mpa": steam_valve_setting(pressure),
                "lowest_safe_water_level_mm": limits_rng.choice(LOWEST_SAFE_LEVELS_MM),
            }
        else:
            pressure = rng.choice((0.7, 1.0, 1.0, 1.25))
            extra = {
                "type_code": "1200",
                "capacity_mw": rng.choice((0.7, 1.4, 2.8, 2.8, 4.2, 7.0)),
                "safety_valve_set_mpa": hot_water_valve_setting(pressure),
                # 95/70 °C on low-pressure systems, 115/70 °C from 1.0 MPa (domain.md §2.3)
                "rated_outlet_temp_c": 115.0 if pressure >= 1.0 else 95.0,
            }
        units.append(
            Unit(
                device_id=reg_code(str(extra["type_code"]), district, registered),
                kind=Kind.boiler,
                key_site=rng.choice(("hospital", "school", "")) if rng.random() < 0.25 else "",
                rated_pressure_mpa=pressure,
                registered_on=registered,
                last_inspection=last,
                next_inspection_due=due,
                status=status(),
                **extra,  # type: ignore[arg-type]
                **where,  # type: ignore[arg-type]
            )
        )
    return units


__all__ = [
    "DISTRICTS",
    "elevator_inspection_dates",
    "generate_fleet",
    "hot_water_valve_setting",
    "steam_valve_setting",
]
