"""Fleet generator: plausible, deterministic registries (DESIGN.md §3, domain.md §1.5, §2.4)."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

from sesmon.contract.registry import DISTRICTS, Registry
from sesmon.contract.schemas import Kind
from simulators.cli import main as sim_main
from simulators.fleet import (
    elevator_inspection_dates,
    generate_fleet,
    hot_water_valve_setting,
    steam_valve_setting,
)

TODAY = date(2026, 11, 1)


def test_fleet_is_plausible_guangzhou() -> None:
    units = generate_fleet(3000, 300, seed=5, today=TODAY)
    elevators = [u for u in units if u.kind == Kind.elevator]
    boilers = [u for u in units if u.kind == Kind.boiler]
    assert len(elevators) == 3000 and len(boilers) == 300
    assert len({u.device_id for u in units}) == len(units)
    assert all(len(u.device_id) == 20 and u.device_id.isdigit() for u in units)
    assert {u.district for u in units} == set(DISTRICTS)
    assert all(22.4 < u.lat < 23.95 and 112.9 < u.lon < 114.1 for u in units)  # type: ignore[operator]
    firms = Counter(u.firm_id for u in units)
    assert 20 <= len(firms) <= 60  # a few dozen firms
    sizes = sorted(firms.values(), reverse=True)
    assert sizes[0] > 5 * sizes[-1]  # different sizes
    lifts = [u for u in elevators if not u.type_code.startswith("33")]
    escalators = [u for u in elevators if u.type_code in ("3310", "3320")]  # and moving walks
    assert len(lifts) + len(escalators) == len(elevators)
    assert 0.05 * len(elevators) <= len(escalators) <= 0.11 * len(elevators)
    assert all(1.0 <= (u.rated_speed_mps or 0) <= 4.0 or u.type_code == "3120" for u in lifts)
    assert all(630 <= (u.rated_load_kg or 0) <= 1600 for u in lifts)
    assert all(u.rated_speed_mps == 0.5 and u.rated_load_kg is None and u.floors == 2 for u in escalators)
    assert len({u.rated_speed_mps for u in lifts}) >= 4
    assert any(u.key_site for u in elevators) and any(not u.key_site for u in elevators)
    assert len({u.user_unit_id for u in units}) > 100


def test_boilers_rated_parameters_and_valves() -> None:
    boilers = [u for u in generate_fleet(0, 400, seed=2, today=TODAY)]
    steam = [b for b in boilers if b.type_code == "1100"]
    hot = [b for b in boilers if b.type_code == "1200"]
    assert steam and hot
    for b in steam:
        assert 2 <= (b.capacity_tph or 0) <= 20 and 1.25 <= (b.rated_pressure_mpa or 0) <= 2.5
        assert b.lowest_safe_water_level_mm is not None and -150 <= b.lowest_safe_water_level_mm <= -100
        assert b.safety_valve_set_mpa == round(1.04 * b.rated_pressure_mpa, 3)  # type: ignore[operator]
        assert b.steam
    for b in hot:
        assert b.capacity_mw and b.capacity_tph is None and not b.steam
        assert b.safety_valve_set_mpa >= b.rated_pressure_mpa + 0.07 - 1e-9  # type: ignore[operator]
        assert b.rated_outlet_temp_c == (115.0 if (b.rated_pressure_mpa or 0) >= 1.0 else 95.0)
    assert steam_valve_setting(0.7) == 0.73 and steam_valve_setting(1.25) == 1.3
    assert hot_water_valve_setting(0.5) == 0.57 and hot_water_valve_setting(1.25) == 1.375


def test_inspection_cycle_and_some_overdue() -> None:
    last, due = elevator_inspection_dates(date(2020, 3, 10), TODAY)
    assert (last, due) == (date(2024, 3, 10), date(2027, 3, 10))  # years 1, 4, 7
    last, due = elevator_inspection_dates(date(2005, 5, 1), TODAY)
    assert due == date(2027, 5, 1) and last == date(2026, 5, 1)  # yearly after 15 years
    units = generate_fleet(4000, 400, seed=9, today=TODAY)
    overdue = sum(1 for u in units if u.next_inspection_due and u.next_inspection_due < TODAY)
    assert 0.01 * len(units) < overdue < 0.06 * len(units)  # 超期未检: a few per cent


def test_same_seed_same_fleet_and_cli_writes_registry(tmp_path: Path) -> None:
    assert generate_fleet(200, 20, seed=4) == generate_fleet(200, 20, seed=4)
    assert generate_fleet(200, 20, seed=4) != generate_fleet(200, 20, seed=5)
    out = tmp_path / "fleet.csv"
    assert (
        sim_main(["fleet", "generate", "--elevators", "50", "--boilers", "5", "--seed", "3", "-o", str(out)])
        == 0
    )
    registry = Registry.load(out)
    assert len(registry) == 55
    assert [u.device_id for u in registry] == [u.device_id for u in generate_fleet(50, 5, seed=3)]


def test_sesmon_cli_registers_fleet_and_simulate(tmp_path: Path) -> None:
    from sesmon.app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["fleet", "generate", "--elevators", "3", "--boilers", "1", "-o", str(tmp_path / "f.csv")]
    )
    assert args.func(args) == 0 and len(Registry.load(tmp_path / "f.csv")) == 4
    argv = "simulate --registry f.csv --mqtt-url mqtt://127.0.0.1:1 --faults demo --time-scale 10"
    args = parser.parse_args([*argv.split(), "--duration", "5", "--quiet", "--seed", "2"])
    assert (args.faults, args.time_scale, args.duration, args.quiet, args.seed) == (
        "demo",
        10.0,
        5.0,
        True,
        2,
    )
