"""The city map's ``unit`` points (store/points.py ``UnitMap``): state from records, refresh, seeding.

Pure tests drive :class:`store.points.PointMaker` with Kafka record values as the stage reads them
and an injected clock (no sleeps); every expected line is built with influxdb-client's ``Point``,
so they also check that the map's lines are byte-identical to it. One test runs the board's map
query and the stage's start-up read-back against a real Debian influxd.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from influxdb_client import Point, WritePrecision

from grafana.boards import UNIT_STATES as BOARD_UNIT_STATES
from grafana.export import all_boards
from grafana.macros import expand
from sesmon.contract.registry import Registry, Unit
from sesmon.runtime.services import ManagedProcess, start_influxdb
from store.points import STATE_RANK, UNIT_STATES, PointMaker, UnitMap
from store.sink import UNIT_SEED_QUERY, BatchBuilder, seed_units
from store.wire import V1Wire, query

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, ms: device and store times of these tests


class Clock:
    """Wall time in seconds, moved by the test."""

    def __init__(self, ms: int = T0) -> None:
        self.now = ms / 1000

    def __call__(self) -> float:
        return self.now

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


def unit(device_id: str, kind: str = "elevator", *, coords: bool = True, status: str = "in_use") -> Unit:
    return Unit(
        device_id=device_id,
        kind=kind,
        district="天河",
        firm_id="F1",
        lat=23.1291 if coords else None,
        lon=113.2644 if coords else None,
        status=status,
    )


def make(*units: Unit, refresh_s: float = 300.0) -> tuple[PointMaker, UnitMap, Clock]:
    registry = Registry({u.device_id: u for u in units})
    clock = Clock()
    unit_map = UnitMap(registry.get, lambda: list(registry.units), refresh_s, clock=clock)
    place = lambda d: (registry.units[d].district, registry.units[d].firm_id) if d in registry.units else None  # noqa: E731
    return PointMaker(place, unit_map), unit_map, clock


def expected(
    u: Unit, state: str, time_ms: int, *, online: bool = True, mode: str | None = None, firing: str = ""
) -> str:
    point = (
        Point("unit")
        .tag("device_id", u.device_id)
        .tag("kind", u.kind.value)
        .tag("district", u.district)
        .tag("firm_id", u.firm_id)
        .field("lat", u.lat)
        .field("lon", u.lon)
        .field("state", state)
        .field("state_rank", STATE_RANK[state])
        .field("online", online)
        .field("firing", firing)
    )
    if mode is not None:
        point = point.field("mode", mode)
    return point.time(time_ms, WritePrecision.MS).to_line_protocol()


def telemetry(device_id: str, seq: int, kind: str = "elevator", **fields: Any) -> bytes:
    body = {"device_id": device_id, "ts": T0 + seq, "seq": seq, **fields}
    env = {"type": "telemetry", "kind": kind, "device_id": device_id, "received_ms": T0 + seq, "ts": T0 + seq}
    return orjson.dumps([env | {"body": body}])  # grouped, as ingest writes


def status(device_id: str, value: str, seq: int = 0) -> bytes:
    body = {"device_id": device_id, "ts": T0 + seq, "status": value}
    return orjson.dumps(
        {
            "type": "status",
            "kind": "elevator",
            "device_id": device_id,
            "received_ms": T0,
            "ts": T0,
            "body": body,
        }
    )


def alert(u: Unit, rule: str, state: str, changed: int = 5) -> bytes:
    return orjson.dumps(
        {
            "alert_id": f"{u.device_id}.{rule}.{T0}",
            "device_id": u.device_id,
            "kind": u.kind.value,
            "district": u.district,
            "firm_id": u.firm_id,
            "rule": rule,
            "level": "P1",
            "state": state,
            "opened_at": T0,
            "changed_at": T0 + changed,
        }
    )


def unit_lines(maker: PointMaker, stream: str, value: bytes) -> list[str]:
    return [line for line in maker.record_lines(stream, value).lines if line.startswith("unit,")]


# --------------------------------------------------------------------------- state from records


def test_the_states_and_the_boards_legend_agree() -> None:
    assert UNIT_STATES == BOARD_UNIT_STATES
    assert [STATE_RANK[s] for s in UNIT_STATES] == list(range(len(UNIT_STATES)))


def test_a_point_only_when_the_displayed_state_changes() -> None:
    e1 = unit("E1")
    maker, units, clock = make(e1)
    # the first reading: the unit's first point; the same mode again costs nothing
    assert unit_lines(maker, "telemetry", telemetry("E1", 1, mode="normal")) == [
        expected(e1, "normal", clock.ms, mode="normal")
    ]
    clock.now += 1
    assert unit_lines(maker, "telemetry", telemetry("E1", 2, mode="normal", moving=True)) == []
    # inspection operation (检修): a technician at work
    assert unit_lines(maker, "telemetry", telemetry("E1", 3, mode="inspection")) == [
        expected(e1, "maintenance", clock.ms, mode="inspection")
    ]
    clock.now += 1
    assert unit_lines(maker, "telemetry", telemetry("E1", 4, mode="out_of_service")) == [
        expected(e1, "out_of_service", clock.ms, mode="out_of_service")
    ]
    # a mode that shows as the same state changes the remembered mode but writes nothing
    clock.now += 1
    assert unit_lines(maker, "telemetry", telemetry("E1", 5, mode="fire_recall")) == [
        expected(e1, "normal", clock.ms, mode="fire_recall")
    ]
    assert unit_lines(maker, "telemetry", telemetry("E1", 6, mode="normal")) == []
    assert units.points == 4
    assert units.modes == {"E1": "normal"}


def test_a_boiler_reading_without_mode_gives_its_first_point_only() -> None:
    b1 = unit("B1", "boiler")
    maker, units, clock = make(b1)
    assert unit_lines(maker, "telemetry", telemetry("B1", 1, "boiler", pressure_mpa=0.8)) == [
        expected(b1, "normal", clock.ms)
    ]
    for seq in range(2, 50):
        assert unit_lines(maker, "telemetry", telemetry("B1", seq, "boiler", pressure_mpa=0.8)) == []
    assert units.points == 1


def test_status_offline_then_online() -> None:
    e1 = unit("E1")
    maker, _, clock = make(e1)
    assert unit_lines(maker, "telemetry", telemetry("E1", 1, mode="normal")) == [
        expected(e1, "normal", clock.ms, mode="normal")
    ]
    clock.now += 60
    assert maker.record_lines("status", status("E1", "offline")).lines == [
        expected(e1, "offline", clock.ms, online=False, mode="normal")
    ]
    assert maker.record_lines("status", status("E1", "offline")).lines == []  # a repeated Will
    clock.now += 60
    assert maker.record_lines("status", status("E1", "online")).lines == [
        expected(e1, "normal", clock.ms, mode="normal")
    ]
    # a status record holds no point of its own, and without a map none at all
    assert PointMaker().record_lines("status", status("E1", "offline")).lines == []


def test_an_alert_opening_and_clearing() -> None:
    e1 = unit("E1")
    maker, _, clock = make(e1)
    unit_lines(maker, "telemetry", telemetry("E1", 1, mode="normal"))
    clock.now += 1
    opened = maker.record_lines("alerts", alert(e1, "elevator.door_close_fault", "firing")).lines
    assert opened[0].startswith("alert,")  # the alert's own point first
    assert opened[1:] == [expected(e1, "fault", clock.ms, mode="normal", firing="elevator.door_close_fault")]
    # an escalation of the same alert (still firing) changes nothing on the map
    assert (
        unit_lines(maker, "alerts", alert(e1, "elevator.door_close_fault", "firing", changed=300_000)) == []
    )
    # trapped passengers outrank the fault
    clock.now += 1
    assert unit_lines(maker, "alerts", alert(e1, "elevator.trapped", "firing")) == [
        expected(e1, "trapped", clock.ms, mode="normal", firing="elevator.door_close_fault,elevator.trapped")
    ]
    clock.now += 1
    assert unit_lines(maker, "alerts", alert(e1, "elevator.trapped", "resolved")) == [
        expected(e1, "fault", clock.ms, mode="normal", firing="elevator.door_close_fault")
    ]
    clock.now += 1
    assert unit_lines(maker, "alerts", alert(e1, "elevator.door_close_fault", "resolved")) == [
        expected(e1, "normal", clock.ms, mode="normal")
    ]


def test_offline_and_paperwork_alerts_are_not_faults() -> None:
    e1 = unit("E1")
    maker, _, clock = make(e1)
    unit_lines(maker, "telemetry", telemetry("E1", 1, mode="normal"))
    # an overdue inspection is the hidden-danger board's business: the unit itself runs
    assert unit_lines(maker, "alerts", alert(e1, "inspection_overdue", "firing")) == []
    clock.now += 1
    # the deadman (silent terminal, no Will) shows the unit offline though its status never said so
    assert unit_lines(maker, "alerts", alert(e1, "offline", "firing")) == [
        expected(e1, "offline", clock.ms, mode="normal", firing="inspection_overdue,offline")
    ]


def test_precedence_of_the_states() -> None:
    e1, suspended = unit("E1"), unit("E2", status="suspended")
    maker, _, clock = make(e1, suspended)
    # a unit not in use in the registry is out of service whatever its terminal says
    assert unit_lines(maker, "telemetry", telemetry("E2", 1, mode="normal")) == [
        expected(suspended, "out_of_service", clock.ms, mode="normal")
    ]
    unit_lines(maker, "telemetry", telemetry("E1", 1, mode="inspection"))
    # offline outranks maintenance, a fault outranks offline, trapped outranks everything
    assert 'state="offline"' in unit_lines(maker, "status", status("E1", "offline"))[0]
    assert 'state="fault"' in unit_lines(maker, "alerts", alert(e1, "elevator.power_failure", "firing"))[0]
    assert 'state="trapped"' in unit_lines(maker, "alerts", alert(e1, "elevator.trapped", "firing"))[0]


def test_a_unit_without_coordinates_is_skipped_and_counted() -> None:
    nowhere, e1 = unit("E9", coords=False), unit("E1")
    maker, units, clock = make(nowhere, e1)
    made = maker.record_lines("telemetry", telemetry("E9", 1, mode="normal"))
    assert len(made.lines) == 1 and made.lines[0].startswith("elevator,")  # its reading is still stored
    assert unit_lines(maker, "alerts", alert(nowhere, "elevator.trapped", "firing")) == []
    # a device the registry does not know has no coordinates either
    assert maker.record_lines("status", status("X1", "offline")).lines == []
    clock.now += 300
    assert units.refresh() == [expected(e1, "normal", clock.ms)]
    assert units.snapshot()["units_without_coordinates"] == 2
    assert units.snapshot()["unit_points"] == 1
    units.forget()  # a new registry: counted again from there
    assert units.snapshot()["units_without_coordinates"] == 0


# --------------------------------------------------------------------------- the refresh


def test_the_refresh_writes_every_unit_once_per_interval_spread_over_it() -> None:
    fleet = [unit(f"E{n:02d}") for n in range(10)]
    _, units, clock = make(*fleet, refresh_s=100.0)
    written: list[tuple[float, str]] = []
    start = clock.now
    for _ in range(300):  # three intervals, a tick every second
        for line in units.refresh():
            written.append((clock.now - start, line.split(",", 2)[1].removeprefix("device_id=")))
        clock.now += 1
    per_cycle = [sorted(d for t, d in written if c * 100 <= t < (c + 1) * 100) for c in range(3)]
    assert per_cycle == [sorted(u.device_id for u in fleet)] * 3  # each unit once per interval
    first = [t for t, _ in written if t < 100]
    assert first == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]  # spread, not a burst
    # a refreshed unit carries its current state
    units.status("E03", False)
    clock.now = start + 330
    assert expected(fleet[3], "offline", clock.ms, online=False) in units.refresh()


def test_the_refresh_follows_the_registry_and_survives_a_clock_step_back() -> None:
    e1, e2 = unit("E1"), unit("E2")
    registry = Registry({"E1": e1})
    clock = Clock()
    units = UnitMap(registry.get, lambda: list(registry.units), 10.0, clock=clock)
    assert units.refresh() == [expected(e1, "normal", clock.ms)]
    registry.units["E2"] = e2
    clock.now += 10
    assert [line.split(",")[1] for line in units.refresh()] == ["device_id=E1"]  # a new cycle: E2 at its half
    clock.now += 5
    assert [line.split(",")[1] for line in units.refresh()] == ["device_id=E2"]
    clock.now -= 3600  # NTP stepped the clock back: a new cycle from here, not an hour of silence
    assert [line.split(",")[1] for line in units.refresh()] == ["device_id=E1"]


def test_refresh_lines_make_a_batch_without_offsets() -> None:
    builder = BatchBuilder(max_points=100, max_age_s=0.0)
    builder.add_lines(['unit,device_id=E1 state="normal" 1'])
    assert builder.due(float("inf"))
    batch = builder.take()
    assert batch is not None and batch.points == 1 and batch.offsets == {}
    assert builder.take() is None


def test_seed_restores_the_state_a_restart_would_forget() -> None:
    e1, e2 = unit("E1"), unit("E2")
    maker, units, clock = make(e1, e2)
    answer = {
        "results": [
            {
                "series": [
                    {
                        "name": "unit",
                        "tags": {"device_id": "E1"},
                        "columns": ["time", "state", "mode", "online", "firing"],
                        "values": [[0, "trapped", "normal", True, "elevator.trapped"]],
                    },
                    {
                        "name": "unit",
                        "tags": {"device_id": "E2"},
                        "columns": ["time", "state", "mode", "online", "firing"],
                        "values": [[0, "offline", None, False, ""]],
                    },
                ]
            }
        ]
    }
    assert seed_units(units, answer) == 2
    # the alert that opened before the restart closes after it: the map follows
    assert unit_lines(maker, "alerts", alert(e1, "elevator.trapped", "resolved")) == [
        expected(e1, "normal", clock.ms, mode="normal")
    ]
    assert unit_lines(maker, "status", status("E2", "online")) == [expected(e2, "normal", clock.ms)]


# --------------------------------------------------------------------------- a real influxd


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    server = start_influxdb(tmp_path_factory.mktemp("influx"))
    yield server
    server.stop()


def test_the_board_query_and_the_read_back_against_influxd(influxd: ManagedProcess, tmp_path: Path) -> None:
    url, db = f"http://127.0.0.1:{influxd.port}", "units"
    fleet = [unit("E1"), unit("E2"), unit("B1", "boiler"), unit("E9", coords=False)]
    maker, units, clock = make(*fleet, refresh_s=60.0)
    lines = unit_lines(maker, "telemetry", telemetry("E1", 1, mode="normal"))
    clock.now += 1
    lines += unit_lines(maker, "alerts", alert(fleet[0], "elevator.trapped", "firing"))
    lines += unit_lines(maker, "status", status("E2", "offline"))
    for _ in range(60):
        clock.now += 1
        lines += units.refresh()
    wire = V1Wire(url, db)
    wire.create_database()
    wire.write(("\n".join(lines) + "\n").encode())
    wire.close()

    board = all_boards()["city-overview"]
    (panel,) = [p for p in board["panels"] if p["type"] == "geomap"]
    sql = expand(panel["targets"][0]["query"], T0 - 60_000, clock.ms + 60_000, {"district": ".*"})
    series = query(url, sql, db)["results"][0]["series"]
    rows = {}
    for s in series:
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        rows[s["tags"]["device_id"]] = (row["lat"], row["lon"], row["state"], row["state_rank"])
    assert rows == {
        "E1": (23.1291, 113.2644, "trapped", 5),
        "E2": (23.1291, 113.2644, "offline", 3),
        "B1": (23.1291, 113.2644, "normal", 0),
    }
    # what a restarted stage reads back (the query has a `now() - 7d` bound: use the present)
    fresh = UnitMap(lambda d: None, list, 60.0)
    untimed = expected(fleet[0], "trapped", 0, mode="normal", firing="elevator.trapped").rsplit(" ", 1)[0]
    wire = V1Wire(url, "seed")
    wire.create_database()
    wire.write(untimed.encode() + b"\n")  # no time: the server's now
    wire.close()
    assert seed_units(fresh, query(url, UNIT_SEED_QUERY, "seed")) == 1
    assert fresh.units["E1"].firing == {"elevator.trapped"} and fresh.units["E1"].shown == "trapped"
