"""The Grafana boards as code (issue 11 G): models, export, push, and every query against real data.

- every board is built through grafana-foundation-sdk's builders and loads back through its
  model loader (``Dashboard.from_json``) to the same JSON; every panel carries raw InfluxQL;
  uids are stable; ``sesmon grafana export`` writes one file per board;
- ``sesmon grafana push`` sends the datasource and every board to a real HTTP server (a
  recorder in a thread), overwriting by uid;
- the important one: a short run of the real pipeline (mosquitto → ingest → Tansu → worker →
  alerts) with trapped passengers, responders' actions, boilers and an overdue inspection, the
  real ``sesmon kpi`` stage, all stored by the real ``sesmon store`` stage into Debian's
  influxd, plus a few ``replay_*`` points as the replay writes them; then every target of every
  board, with Grafana's macros and template variables substituted as Grafana would, returns a
  row with a value.

Every wait is on a count with a generous deadline; device times are relative to the wall clock.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from influxdb_client import Point, WritePrecision

from grafana import cli as grafana_cli
from grafana.boards import BOARDS
from grafana.export import all_boards, board_json, dumps, load_board
from grafana.influxql import DATASOURCE_UID
from grafana.macros import expand
from sesmon.app.cli import main as sesmon_main
from sesmon.app.demo import Stage
from sesmon.contract.gbt24476 import is_escalator
from sesmon.contract.registry import Registry, Unit, write_registry
from sesmon.runtime.services import ManagedProcess, start_influxdb, start_mqtt
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet
from store.wire import V1Wire, query
from tests.conftest import clock_date, mqtt_client, publish_all, reading
from tests.pipeline_support import AlertInbox, stage_env, start_stages, stop_stages, wait_for

MIN = 60_000


# --------------------------------------------------------------------------- the simulated run


@dataclass
class Run:
    settings: Settings
    registry: Registry
    start_ms: int
    end_ms: int
    district: str
    firm: str
    replay_run: str
    alert_ids: list[str] = field(default_factory=list)

    def values(self, q: str) -> int | str:
        """Rows with a non-null value besides time (``fill`` rows of nothing do not count), or the error."""
        answer = query(self.settings.influx_url or "", q, self.settings.influx_db)
        results = answer.get("results") or [{}]
        if "error" in results[0]:
            return str(results[0]["error"])
        series = results[0].get("series") or ()
        return sum(any(v is not None for v in row[1:]) for s in series for row in s.get("values") or ())


def measurement_count(run_settings: Settings, measurement: str, fieldname: str) -> int:
    answer = query(
        run_settings.influx_url or "",
        f'SELECT count("{fieldname}") FROM "{measurement}"',
        run_settings.influx_db,
    )
    series = answer["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def elevator_reading(unit: Unit, seq: int, ts: int, **fields: Any) -> tuple[str, bytes]:
    base = {"mode": "normal", "moving": False, "door": "closed", "door_zone": True, "speed_mps": 0.0}
    return reading(
        unit.device_id, seq, ts, **(base | {"floor": seq % 5, "load_pct": 10.0 * (seq % 4)} | fields)
    )


def boiler_reading(unit: Unit, seq: int, ts: int) -> tuple[str, bytes]:
    fields = {
        "pressure_mpa": round(0.6 + 0.01 * (seq % 5), 3),
        "water_level_mm": -10.0 + seq % 7,
        "steam_temp_c": 165.0,
        "outlet_temp_c": 85.0,
        "return_temp_c": 65.0,
        "feedwater_temp_c": 95.0,
        "steam_flow_tph": 3.2,
        "flue_gas_temp_c": 150.0 + seq % 9,
        "o2_pct": 3.5,
        "fuel_flow_nm3h": 250.0,
        "burner": "high_fire",
    }
    return reading(unit.device_id, seq, ts, kind="boiler", **fields)


def in_date(registry: Iterable[Unit], kind: str) -> list[Unit]:
    """Units in use and in date (an overdue inspection raises its own alert and hazard)."""
    today = clock_date()
    return [
        u
        for u in registry
        if u.kind == kind
        and u.in_use
        and (u.next_inspection_due is None or u.next_inspection_due > today + timedelta(days=40))
    ]


def trapped_candidates(units: Iterable[Unit]) -> list[Unit]:
    """Elevators (not escalators) in date: those that can report trapped passengers."""
    return [u for u in in_date(units, "elevator") if not is_escalator(u.type_code or "")]


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory: pytest.TempPathFactory, kafka_server: ManagedProcess) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("grafana-run")
    mqtt = start_mqtt(tmp / "mqtt")
    (tmp / "influx").mkdir()
    influx = start_influxdb(tmp / "influx")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt.port}",
        kafka_url=f"127.0.0.1:{kafka_server.port}",
        influx_url=f"http://127.0.0.1:{influx.port}",
        influx_db="sesmon",
        data_dir=tmp / "state",
        topic_prefix=f"g{tag}",
        mqtt_client_id=f"ingest-{tag}",
        faust_app_id=f"streams-{tag}",
        kafka_partitions=2,
    )
    units = generate_fleet(16, 6, seed=23, today=clock_date())
    # one elevator overdue for inspection: the rules open a hidden danger for it
    first = next(i for i, u in enumerate(units) if u.kind == "elevator" and u.in_use)
    units[first] = units[first].model_copy(update={"next_inspection_due": clock_date() - timedelta(days=3)})
    # a steam boiler in the district of the trapped elevators, so one $district shows every panel
    district = trapped_candidates(units)[0].district
    steam = units.index(next(u for u in in_date(units, "boiler") if u.steam))
    units[steam] = units[steam].model_copy(update={"district": district})
    path = tmp / "registry.csv"
    write_registry(units, path)
    registry = Registry.load(path)
    stages = start_stages(settings, registry, tmp / "logs")
    env = stage_env(settings, registry) | {
        "SESMON_INFLUX_URL": settings.influx_url or "",
        "SESMON_INFLUX_DB": settings.influx_db,
        "SESMON_STORE_FLUSH_INTERVAL_S": "0.2",
        "SESMON_STATS_EVERY_S": "0.5",
        "SESMON_STORE_UNIT_REFRESH_S": "5",  # the map's refresh: every registry unit within seconds
    }
    stages["store"] = Stage("store", ["store"], env, tmp / "logs" / "store.log").start()
    inbox = AlertInbox(settings)
    client = mqtt_client(settings)
    try:
        start = int(time.time() * 1000)
        boilers = [u for u in in_date(registry, "boiler") if u.steam]
        trapped = trapped_candidates(registry)[:2]
        messages: list[tuple[str, bytes]] = []
        for step in range(4):
            ts = start - (4 - step) * 1000
            messages += [elevator_reading(u, step + 1, ts) for u in registry if u.kind == "elevator"]
            messages += [boiler_reading(u, step + 1, ts) for u in boilers]
        for unit in trapped:
            event = {"device_id": unit.device_id, "ts": start, "seq": 10, "code": "trapped", "state": "occur"}
            messages.append((f"sesmon/v1/elevator/{unit.device_id}/event", orjson.dumps(event)))
        # what a broken terminal sends: dead-lettered by ingest (the pipeline board counts it)
        messages.append((f"sesmon/v1/elevator/{trapped[0].device_id}/telemetry", b"\x00 not json"))
        publish_all(client, messages)

        def trapped_alerts() -> list[dict[str, Any]]:
            return [a for _, a in inbox.firing() if a["device_id"] in {u.device_id for u in trapped}]

        wait_for(lambda: len({a["alert_id"] for a in trapped_alerts()}) >= 2, 90, "two trapped alerts")
        alert_ids = sorted({a["alert_id"] for a in trapped_alerts()})
        actions = []
        for n, alert_id in enumerate(alert_ids):
            steps = [("dispatched", 1), ("accepted", 2), ("on_site", 9 + n), ("freed", 12 + n)]
            for action, seconds in steps:
                body = {
                    "alert_id": alert_id,
                    "action": action,
                    "by": "firm-test",
                    "ts": start + seconds * 1000,
                }
                actions.append((f"sesmon/v1/dispatch/{alert_id}", orjson.dumps(body)))
        publish_all(client, actions)
        end = int(time.time() * 1000)
        run = Run(
            settings=settings,
            registry=registry,
            start_ms=start - 10 * MIN,
            end_ms=end + 10 * MIN,
            district=trapped[0].district,
            firm=trapped[0].firm_id,
            replay_run="run-1",
            alert_ids=alert_ids,
        )
        # the KPI stage folds alerts, hazards and dispatch into safety_kpi rows (the store writes them)
        stages["kpi"] = Stage("kpi", ["kpi"], env, tmp / "logs" / "kpi.log").start()
        write_replay(run, start)
        wanted = {
            ("elevator", "received_ms"): 4 * sum(u.kind == "elevator" for u in registry),
            ("boiler", "received_ms"): 4 * len(boilers),
            ("event", "seq"): 2,
            ("dispatch", "actor"): len(actions),
        }
        wait_for(
            lambda: all(measurement_count(settings, m, f) >= n for (m, f), n in wanted.items()),
            120,
            f"stored points {wanted}",
            every=0.5,
        )
        wait_for(lambda: measurement_count(settings, "alert", "opened_at") >= 2, 60, "alerts stored")
        wait_for(lambda: measurement_count(settings, "hazard", "deadline") >= 1, 60, "a hazard stored")
        wait_for(
            lambda: measurement_count(settings, "safety_kpi", "units_in_use") >= 1, 90, "KPI rows stored"
        )
        stages_seen = {"ingest", "streams", "alerts", "store"}
        wait_for(
            lambda: (
                stages_seen
                <= {
                    row[1]
                    for row in (
                        query(
                            settings.influx_url or "",
                            'SHOW TAG VALUES FROM "pipeline" WITH KEY = "stage"',
                            "sesmon",
                        )["results"][0].get("series")
                        or [{"values": []}]
                    )[0]["values"]
                }
            ),
            60,
            "pipeline records of every stage",
        )
        yield run
    finally:
        client.loop_stop()
        client.disconnect()
        inbox.client.loop_stop()
        stop_stages(stages)
        influx.stop()
        mqtt.stop()


def write_replay(run: Run, start: int) -> None:
    """What ``sesmon replay`` writes for a run: signals, alert changes, the timeline."""
    points = []
    for i in range(5):
        points.append(
            Point("replay_signal")
            .tag("run", run.replay_run)
            .tag("device_id", "E1")
            .tag("signal", "speed_mps")
            .field("value", 0.5 * i)
            .time(start + i * 1000, WritePrecision.MS)
        )
    points.append(
        Point("replay_alert")
        .tag("run", run.replay_run)
        .tag("rule", "elevator.trapped")
        .tag("level", "P1")
        .tag("state", "firing")
        .field("alert_id", f"E1.elevator.trapped.{start}")
        .field("escalation", 0)
        .time(start + 2000, WritePrecision.MS)
    )
    points.append(
        Point("replay_timeline")
        .tag("run", run.replay_run)
        .tag("what", "on_site")
        .tag("by", "firm-test")
        .field("alert_id", f"E1.elevator.trapped.{start}")
        .time(start + 3000, WritePrecision.MS)
    )
    body = "\n".join(p.to_line_protocol() for p in points).encode()
    wire = V1Wire(run.settings.influx_url or "", run.settings.influx_db)
    wire.create_database()  # the store may not have written its first batch yet
    wire.write(body)
    wire.close()


# --------------------------------------------------------------------------- the boards as models


def panels_of(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are not panels with data."""
    out = []
    for panel in board.get("panels", []):
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


EXPECTED_UIDS = {
    "city-overview": "sesmon-city",
    "incident-queue": "sesmon-incidents",
    "safety-kpis": "sesmon-safety-kpis",
    "firm-ranking": "sesmon-firms",
    "hidden-dangers": "sesmon-hazards",
    "boilers": "sesmon-boilers",
    "pipeline-health": "sesmon-pipeline",
    "replay": "sesmon-replay",
}


def test_every_board_round_trips_through_the_sdk_loader() -> None:
    for name, board in all_boards().items():
        loaded = load_board(board)
        assert board_json(loaded) == board, f"{name} changes when loaded by the SDK"
        assert dumps(board_json(loaded)) == dumps(board)


def test_every_panel_queries_influxql_through_the_sesmon_datasource() -> None:
    for name, board in all_boards().items():
        panels = panels_of(board)
        assert panels, name
        ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels if p not in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for panel in panels:
            where = f"{name} / {panel['title']}"
            assert panel["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}, where
            assert panel["targets"], f"{where} has no target"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs), f"{where}: refIds repeat"
            for target in panel["targets"]:
                assert target["rawQuery"] is True, where
                assert target["resultFormat"] in ("time_series", "table"), where
                assert target["datasource"]["uid"] == DATASOURCE_UID, where
                assert target["query"].startswith("SELECT "), where
                assert "$timeFilter" in target["query"], f"{where}: no time filter"


def test_uids_are_stable_and_export_writes_one_file_per_board(tmp_path: Path) -> None:
    assert grafana_cli.DATASOURCE_UID == DATASOURCE_UID
    boards_now = all_boards()
    assert {name: b["uid"] for name, b in boards_now.items()} == EXPECTED_UIDS
    assert all(b["schemaVersion"] == 41 for b in boards_now.values())  # the Grafana 11.6 model
    assert all_boards() == boards_now  # built twice: the same boards
    out = tmp_path / "boards"
    (out / "stale").mkdir(parents=True)  # something else in the directory stays as it was
    assert sesmon_main(["grafana", "export", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == sorted(f"{name}.json" for name in BOARDS)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "stale"])
    for name in BOARDS:
        assert json.loads((out / f"{name}.json").read_text("utf-8")) == boards_now[name]
    first = {p.name: p.read_bytes() for p in out.glob("*.json")}
    assert sesmon_main(["grafana", "export", "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == first  # byte-stable


# --------------------------------------------------------------------------- push, to a real HTTP server


class FakeGrafana:
    """An HTTP server in a thread that answers like Grafana's API and records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: set[str] = set()
        self.dashboards: dict[str, dict[str, Any]] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((method, self.path, dict(self.headers), body))
                status, answer = fake.route(method, self.path, body)
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if method == "GET":
                found = self.datasources.get(uid)
                return (200, found) if found else (404, {"message": "Data source not found"})
            self.datasources[uid] = body
            return 200, {"message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            self.datasources[body["uid"]] = body
            return 200, {"message": "Datasource added", "id": 1}
        if path.startswith("/api/folders/") and method == "GET":
            uid = path.rsplit("/", 1)[1]
            return (200, {"uid": uid}) if uid in self.folders else (404, {"message": "folder not found"})
        if path == "/api/folders" and method == "POST":
            self.folders.add(body["uid"])
            return 200, {"uid": body["uid"], "title": body["title"]}
        if path == "/api/dashboards/db" and method == "POST":
            self.dashboards[body["dashboard"]["uid"]] = body
            return 200, {"status": "success", "uid": body["dashboard"]["uid"]}
        return 404, {"message": f"no route {method} {path}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    yield server
    server.close()


def test_push_sends_the_datasource_and_every_board_idempotently(fake_grafana: FakeGrafana) -> None:
    argv = [
        "grafana",
        "push",
        "--url",
        fake_grafana.url,
        "--token",
        "glsa_secret",
        "--influx-url",
        "http://influxdb:8086",
        "--database",
        "sesmon",
        "--influx-token",
        "influx-token-1",
    ]
    assert sesmon_main(argv) == 0
    source = fake_grafana.datasources[DATASOURCE_UID]
    assert source["type"] == "influxdb" and source["url"] == "http://influxdb:8086"
    assert source["jsonData"]["version"] == "InfluxQL" and source["jsonData"]["dbName"] == "sesmon"
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    assert source["secureJsonData"]["httpHeaderValue1"] == "Token influx-token-1"
    expected = all_boards()
    assert set(fake_grafana.dashboards) == {b["uid"] for b in expected.values()}
    for board in expected.values():
        sent = fake_grafana.dashboards[board["uid"]]
        assert sent["dashboard"] == board and sent["overwrite"] is True and sent["folderUid"] == "sesmon"
    assert all(h.get("Authorization") == "Bearer glsa_secret" for _, _, h, _ in fake_grafana.requests)
    first_round = len(fake_grafana.requests)

    # again: the datasource is updated in place (PUT by uid), no second folder, boards overwritten
    assert sesmon_main(argv) == 0
    again = fake_grafana.requests[first_round:]
    methods = [(m, p) for m, p, _, _ in again]
    assert ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}") in methods
    assert ("POST", "/api/datasources") not in methods and ("POST", "/api/folders") not in methods
    assert sum(p == "/api/dashboards/db" for _, p in methods) == len(BOARDS)


def test_push_reports_a_refusing_grafana(
    fake_grafana: FakeGrafana, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_grafana.route = lambda method, path, body: (401, {"message": "invalid API key"})  # type: ignore[method-assign]
    assert sesmon_main(["grafana", "push", "--url", fake_grafana.url, "--token", "bad"]) == 1
    assert "refused" in capsys.readouterr().err


# --------------------------------------------------------------------------- every query, real data


def test_every_panel_query_returns_rows_after_a_simulated_run(simulated_run: Run) -> None:
    run = simulated_run
    variables = {
        "district": run.district,
        "firm": run.firm,
        "kind": "all",
        "window": "365d",
        "run": run.replay_run,
        "boiler": ".*",  # "All"
        "set_point_mpa": "1.25",
    }
    empty = []
    checked = 0
    for name, board in all_boards().items():
        for panel in panels_of(board):
            for target in panel["targets"]:
                sql = expand(
                    target["query"], run.start_ms, run.end_ms, variables, time_from=panel.get("timeFrom", "")
                )
                assert not re.search(r"\$\w", sql), sql
                got = run.values(sql)
                if not got or isinstance(got, str):
                    empty.append(
                        f"{name} / {panel['title']} / {target['refId']}: {got or 'no value'}\n    {sql}"
                    )
                checked += 1
    assert checked >= 60
    assert not empty, "queries without a value:\n" + "\n".join(empty)


def test_the_map_shows_every_registry_unit_at_its_coordinates(simulated_run: Run) -> None:
    """The city map's query: one row per unit with coordinates, its registry lat/lon, a known state."""
    run = simulated_run
    (panel,) = [p for p in panels_of(all_boards()["city-overview"]) if p["type"] == "geomap"]
    sql = expand(panel["targets"][0]["query"], run.start_ms, run.end_ms, {"district": ".*"})
    placed = {u.device_id: (u.lat, u.lon) for u in run.registry if u.lat is not None and u.lon is not None}
    assert placed

    def rows() -> dict[str, dict[str, Any]]:
        answer = query(run.settings.influx_url or "", sql, run.settings.influx_db)
        series = answer["results"][0].get("series") or []
        return {s["tags"]["device_id"]: dict(zip(s["columns"], s["values"][0], strict=True)) for s in series}

    wait_for(lambda: set(rows()) == set(placed), 60, "a map row for every registry unit (the refresh)")
    for device_id, row in rows().items():
        assert (row["lat"], row["lon"]) == placed[device_id], device_id
        assert row["state"] in ("normal", "maintenance", "out_of_service", "offline", "fault", "trapped")
    trapped_seen = (
        query(
            run.settings.influx_url or "",
            "SELECT count(state_rank) FROM unit WHERE state = 'trapped' GROUP BY device_id",
            run.settings.influx_db,
        )["results"][0].get("series")
        or []
    )
    assert {s["tags"]["device_id"] for s in trapped_seen} >= {a.split(".", 1)[0] for a in run.alert_ids}


def test_the_variables_list_real_values(simulated_run: Run) -> None:
    run = simulated_run
    for board in all_boards().values():
        for variable in board["templating"].get("list", []):
            if variable["type"] != "query":
                continue
            answer = query(run.settings.influx_url or "", variable["query"], run.settings.influx_db)
            series = answer["results"][0].get("series") or []
            values = {row[1] for s in series for row in s["values"]}
            assert values, f"{board['uid']} ${variable['name']}: {variable['query']}"
            wanted = {"district": run.district, "firm": run.firm, "run": run.replay_run}.get(variable["name"])
            assert wanted is None or wanted in values, (variable["name"], values)
