"""Elevator and boiler models: physics stays in range, streams are valid and reproducible."""

from __future__ import annotations

import orjson

from sesmon.contract.physics import saturation_temp_c as steam_saturation_c
from sesmon.contract.schemas import parse_mqtt
from simulators.common import MODE_CODE, Msg
from simulators.engine import FleetSim, SimOptions
from simulators.fleet import generate_fleet
from simulators.network import NetworkOptions

MODES = set(MODE_CODE) | set(MODE_CODE.values())


def _validate_all(msgs: list[Msg], every: int = 1) -> None:
    for m in msgs[::every]:
        parse_mqtt(m.topic, m.payload(), m.t)  # raises BadInput on anything invalid


def test_saturation_temperature_matches_domain_table() -> None:
    for p, t in ((0.7, 170), (1.0, 184), (1.25, 194), (2.5, 226)):
        assert abs(steam_saturation_c(p) - t) < 1.0


def test_elevators_stay_physical_over_a_day() -> None:
    units = generate_fleet(12, 0, seed=21)
    sim = FleetSim(units, seed=21, options=SimOptions(human=False))
    msgs = sim.run_for(86_400, step_s=600)
    _validate_all(msgs, every=25)
    tele = [m.body for m in msgs if m.leaf == "telemetry"]
    assert len(tele) > 12 * 1000  # periodic reports + reports on change
    by_dev: dict[str, list[dict]] = {}
    for m in msgs:
        if m.leaf == "telemetry":
            by_dev.setdefault(m.device_id, []).append(m.body)  # type: ignore[arg-type]
    runs_per_day = []
    for dev_id, rows in by_dev.items():
        unit = sim.units[dev_id]
        if unit.type_code.startswith("33"):
            continue  # escalators and moving walks have no car: tests/test_escalators.py
        lowest = min(r["floor"] for r in rows)
        highest = max(r["floor"] for r in rows)
        assert highest - lowest < (unit.floors or 0) + 1
        assert 0 not in {r["floor"] for r in rows}  # no floor 0: basements are negative
        for r in rows:
            assert 0 <= r["speed_mps"] <= (unit.rated_speed_mps or 0) * 1.0001
            assert r["moving"] or r["speed_mps"] == 0  # a stopped car has no speed
            assert not (r["moving"] and r["door"] != "closed")  # no door open while running
            assert r["mode"] in MODES
            assert 0 <= r["load_pct"] <= 120
            assert r["occupied"] == (r["load_pct"] > 0)
            assert not r["safety_circuit_open"] and not r["up_limit"] and not r["down_limit"]
        counts = [r["run_count"] for r in rows]
        assert counts == sorted(counts)  # cumulative counters never go back
        runs_per_day.append(counts[-1] - counts[0])
    # domain.md §1.5: 200–600 starts a day residential, 600–1500 commercial
    assert 100 < sorted(runs_per_day)[len(runs_per_day) // 2] < 1600
    assert max(runs_per_day) < 2500


def test_boilers_stay_physical_over_days() -> None:
    units = generate_fleet(0, 6, seed=8)
    sim = FleetSim(units, seed=8, options=SimOptions(human=False, boiler_tick_s=5.0))
    msgs = sim.run_for(2 * 86_400, step_s=3600)
    _validate_all(msgs, every=25)
    steam_rows = hot_rows = 0
    for m in msgs:
        if m.leaf != "telemetry":
            continue
        b = m.body
        assert isinstance(b, dict)
        unit = sim.units[m.device_id]
        assert 0 <= b["pressure_mpa"] < (unit.safety_valve_set_mpa or 0)  # no lift without a fault
        assert 0.5 <= b["o2_pct"] <= 20.9
        assert 40 <= b["flue_gas_temp_c"] <= 260
        if b["burner"] in ("off", "purge", "lockout"):
            assert b["fuel_flow_nm3h"] == 0
        if unit.steam:
            steam_rows += 1
            assert -60 <= b["water_level_mm"] <= 60  # normal band ±40 plus noise and transients
            assert abs(b["steam_temp_c"] - steam_saturation_c(b["pressure_mpa"])) < 2.5
            assert b["steam_flow_tph"] <= (unit.capacity_tph or 0) * 1.01
            assert b["fuel_flow_nm3h"] <= (unit.capacity_tph or 0) * 75 * 1.01
        else:
            hot_rows += 1
            assert "water_level_mm" not in b
            assert 40 <= b["outlet_temp_c"] <= 125
            assert b["return_temp_c"] <= b["outlet_temp_c"] + 0.5
    assert steam_rows > 1000 and hot_rows > 500
    # the burner sequence runs: purge, ignition and firing states all appear
    burners = {m.body["burner"] for m in msgs if m.leaf == "telemetry" and isinstance(m.body, dict)}
    assert {"purge", "ignition", "low_fire", "high_fire", "off"} <= burners


def test_seq_increases_per_device_and_every_device_announces() -> None:
    units = generate_fleet(10, 3, seed=2)
    sim = FleetSim(units, seed=2, options=SimOptions(human=False))
    msgs = sim.run_for(3600)
    last: dict[str, int] = {}
    for m in msgs:
        if isinstance(m.body, dict) and m.device_id:
            assert m.body["seq"] > last.get(m.device_id, 0)
            last[m.device_id] = m.body["seq"]
    announced = {m.device_id for m in msgs if m.leaf == "status" and m.retain}
    assert announced == {u.device_id for u in units if u.status != "scrapped"}
    # heartbeats: about one status a minute per device
    statuses = sum(1 for m in msgs if m.leaf == "status")
    assert 50 * len(announced) < statuses < 70 * len(announced)


def test_same_seed_same_stream_different_seed_differs() -> None:
    def stream(seed: int) -> list[tuple[str, bytes, int]]:
        units = generate_fleet(20, 4, seed=1)
        options = SimOptions(
            faults="background", fault_rate_multiplier=2000, network=NetworkOptions.realistic()
        )
        sim = FleetSim(units, seed=seed, start_ms=1_795_000_000_000, options=options)
        return [(m.topic, m.payload(), m.t) for m in sim.run_for(2 * 3600, step_s=900)]

    a, b, c = stream(7), stream(7), stream(8)
    assert len(a) > 5_000
    assert a == b
    assert a != c
    events = [orjson.loads(p) for t, p, _ in a if t.endswith("/event") and p.startswith(b"{")]
    assert len(events) > 10  # background faults did happen
