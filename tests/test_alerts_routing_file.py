"""Routing as data (alerts/routing_file.py) and rescue stations (alerts/stations.py): pure logic, no servers.

The shipped routing file must page exactly who is paged today for every rule of the shipped
catalogue, plus the escalation's rescue station and 119.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alerts.routing_file import DEFAULT_ROUTING, RoutingError, RoutingTable, RoutingWatcher, check_routing
from alerts.stations import DEFAULT_STATIONS, Stations, StationsError, great_circle_km, parse_stations
from rules.catalogue import load_catalogue
from sesmon.contract.receivers import alert_receivers, receivers_of
from sesmon.contract.registry import DISTRICTS, Unit
from sesmon.contract.schemas import Alert, Receiver

CENTRE = "96333"


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return RoutingTable.load(centre_id=CENTRE)


def unit(kind: str = "elevator", **over: object) -> Unit:
    row: dict[str, object] = {
        "device_id": "D1",
        "kind": kind,
        "district": "天河",
        "firm_id": "F001",
        "user_unit_id": "U01",
        "lat": 23.13,
        "lon": 113.36,
    }
    return Unit.model_validate(row | over)


def alert(
    rule: str = "elevator.trapped",
    kind: str = "elevator",
    level: str = "P1",
    *,
    centre: bool | None = None,
    regulator: bool = False,
    listed: bool = True,
    **over: object,
) -> Alert:
    """An alert as the rules emit it: receivers listed from the rule's flags (``listed=False``: an
    alert from elsewhere, without a list)."""
    fields: dict[str, object] = {"district": "天河", "firm_id": "F001", "user_unit_id": "U01"} | over
    receivers = (
        alert_receivers(
            kind,
            firm_id=str(fields["firm_id"]),
            user_unit_id=str(fields["user_unit_id"]),
            district=str(fields["district"]),
            centre=(level == "P1" and kind == "elevator") if centre is None else centre,
            regulator=regulator,
            centre_id=CENTRE,
        )
        if listed
        else []
    )
    return Alert.model_validate(
        {
            "alert_id": f"D1.{rule}.1",
            "rule": rule,
            "level": level,
            "device_id": "D1",
            "kind": kind,
            "opened_at": 1,
            "changed_at": 1,
            "state": "firing",
            "receivers": [r.model_dump() for r in receivers],
        }
        | fields
    )


def names(receivers: list[Receiver]) -> list[str]:
    return [f"{r.kind}:{r.id}" for r in receivers]


BASE = ["firm:F001", "user_unit:U01"]
LIFT_P1 = [*BASE, "centre:96333"]
TIANHE = "regulator:district:天河"

# (case, alert, unit, escalation, sla_breach, accident, expected receivers in order)
CASES = [
    ("lift P1: firm, user unit, 96333", alert(), unit(), 0, False, False, LIFT_P1),
    ("lift P1 level 1: unchanged", alert(), unit(), 1, False, False, LIFT_P1),
    ("level 2 adds the nearest rescue station", alert(), unit(), 2, False, False,
     [*LIFT_P1, "rescue:GZ-TH-DISTRICT"]),
    ("level 3 adds 119 as well", alert(), unit(), 3, False, False,
     [*LIFT_P1, "rescue:GZ-TH-DISTRICT", "fire:119"]),
    ("rescue: the station nearest the unit, not its district's", alert(), unit(lat=23.126, lon=113.271), 2,
     False, False, [*LIFT_P1, "rescue:GZ-YX-WENMINGLU"]),
    ("rescue without coordinates: the district's station", alert(), unit(lat=None, lon=None, district="增城"),
     2, False, False, [*LIFT_P1, "rescue:GZ-ZC-BAIJIANG"]),
    ("SLA breach: the district regulator", alert(), unit(), 3, True, False,
     [*LIFT_P1, TIANHE, "rescue:GZ-TH-DISTRICT", "fire:119"]),
    ("accident (trapped >= 2 h by the clock): the regulator", alert(), unit(), 0, False, True,
     [*LIFT_P1, TIANHE]),
    ("the rules' trapped_2h: the regulator", alert("elevator.trapped_2h", regulator=True), unit(), 0, False,
     False, [*LIFT_P1, TIANHE]),
    ("a reported accident: the regulator", alert("accident", regulator=True), unit(), 0, False, False,
     [*LIFT_P1, TIANHE]),
    ("a major hidden danger the rule marks: the regulator",
     alert("elevator.unintended_movement", regulator=True), unit(), 0, False, False, [*LIFT_P1, TIANHE]),
    ("boiler P1: its own responders, never 96333", alert("boiler.extreme_low_water", "boiler"),
     unit("boiler"), 0, False, False, BASE),
    ("boiler P1 at level 3: rescue and 119 but still no 96333", alert("boiler.gas_leak", "boiler"),
     unit("boiler"), 3, False, False, [*BASE, "rescue:GZ-TH-DISTRICT", "fire:119"]),
    ("a boiler alert that lists 96333 itself: still not paged",
     alert("boiler.overpressure", "boiler", centre=True).model_copy(
         update={"receivers": [Receiver(kind="centre", id=CENTRE)]}), unit("boiler"), 0, False, False, BASE),
    ("boiler alert from elsewhere (no list): no 96333", alert("x", "boiler", listed=False), None, 0, False,
     False, BASE),
    ("lift P2 the rule marks for 96333 (alarm button)", alert("elevator.alarm_button", level="P2",
     centre=True), unit(), 0, False, False, LIFT_P1),
    ("lift P2 unmarked: firm and user unit", alert("elevator.door_close_fault", level="P2"), unit(), 0, False,
     False, BASE),
    ("lift P1 from elsewhere (no list): 96333 by default", alert(listed=False), None, 0, False, False,
     LIFT_P1),
    ("the registry row wins over the alert's fields", alert(), unit(firm_id="F777", user_unit_id="U77"), 0,
     False, False, ["firm:F777", "user_unit:U77", "centre:96333"]),
    ("no registry row: the alert's fields", alert(firm_id="F2", user_unit_id="U2"), None, 0, False, False,
     ["firm:F2", "user_unit:U2", "centre:96333"]),
    ("no row, no fields: the alert's own list", alert(firm_id="F3", user_unit_id="U3").model_copy(
        update={"firm_id": "", "user_unit_id": ""}), None, 0, False, False, ["firm:F3", "user_unit:U3",
        "centre:96333"]),
    ("no row: regulator from the alert's district", alert(district="海珠"), None, 0, True, False,
     [*LIFT_P1, "regulator:district:海珠"]),
    ("escalation defaults to the alert's own", alert(escalation=2), unit(), None, False, False,
     [*LIFT_P1, "rescue:GZ-TH-DISTRICT"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "the_alert", "the_unit", "escalation", "sla", "accident", "expected"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_routing_cases(
    table: RoutingTable,
    case: str,
    the_alert: Alert,
    the_unit: Unit | None,
    escalation: int | None,
    sla: bool,
    accident: bool,
    expected: list[str],
) -> None:
    got = table.receivers(the_alert, the_unit, escalation=escalation, sla_breach=sla, accident=accident)
    assert names(got) == expected, case


def test_every_catalogue_rule_routes_as_today(table: RoutingTable) -> None:
    """For each rule and unit kind: the same receivers, in the same order, as
    sesmon.contract.receivers decides today; escalation adds rescue, then 119, and nothing else."""
    catalogue = load_catalogue()
    checked = 0
    for rule in catalogue.rules:
        for kind in ("elevator", "boiler") if rule.kind == "any" else (rule.kind,):
            marked = alert(rule.id, kind, rule.level, centre=rule.centre, regulator=rule.regulator)
            bare = alert(rule.id, kind, rule.level, listed=False)
            for the_alert in (marked, bare):
                today = names(receivers_of(the_alert, CENTRE))
                for the_unit in (unit(kind), None):
                    got = names(table.receivers(the_alert, the_unit, escalation=0))
                    assert got == today, (rule.id, kind, the_unit is not None)
                    up2 = names(table.receivers(the_alert, the_unit, escalation=2))
                    up3 = names(table.receivers(the_alert, the_unit, escalation=3))
                    rescue = "rescue:GZ-TH-DISTRICT"
                    assert up2 == [*today, rescue], rule.id
                    assert up3 == [*today, rescue, "fire:119"], rule.id
                    if kind == "boiler":
                        assert not any(n.startswith("centre:") for n in up3), rule.id
                checked += 1
    assert len(catalogue.rules) > 50  # every rule (both kinds for the "any" rules), listed and bare
    assert checked == 2 * (len(catalogue.rules) + sum(r.kind == "any" for r in catalogue.rules))


# --------------------------------------------------------------------------- the file itself

GOOD = """\
version: 1
fire: {default: "119", by_district: {南沙: "fire-ns"}}
routes:
  - name: responders
    receivers: {firm: always, user_unit: always}
  - name: lift-centre
    match: {kind: elevator, level: [P1, P2]}
    receivers: {centre: rule}
  - name: fire
    match: {min_escalation: 3}
    receivers: {fire: always}
    stop: true
  - name: never-reached-at-level-3
    match: {rule: "elevator.*"}
    receivers: {regulator: always}
webhooks:
  - kind: firm
    url: "https://hooks.example.com/firms/{id}"
    secret_env: T_SECRET_FIRMS
  - kind: firm
    id: F001
    url: "http://127.0.0.1:9/f001"
    secret_env: T_SECRET_F001
    timeout_s: 2
  - kind: regulator
    url: "https://gov.example.com/{kind}/{id}"
    secret_env: T_SECRET_FIRMS
"""
ENV = {"T_SECRET_FIRMS": "s3cret-firms", "T_SECRET_F001": "s3cret-f001"}


def write(tmp_path: Path, text: str, name: str = "routing.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_custom_file_globs_stop_and_fire_by_district(tmp_path: Path) -> None:
    custom = RoutingTable.load(write(tmp_path, GOOD), env=ENV)
    ns = unit(district="南沙")
    assert names(custom.receivers(alert(), ns, escalation=3)) == [
        *LIFT_P1,
        "fire:fire-ns",
    ]  # stop: no regulator
    assert names(custom.receivers(alert(), unit(), escalation=0)) == [*LIFT_P1, TIANHE]
    assert names(custom.receivers(alert("boiler.x", "boiler"), unit("boiler"))) == BASE


def test_webhooks_per_kind_and_per_receiver_secrets_from_the_environment(tmp_path: Path) -> None:
    custom = RoutingTable.load(write(tmp_path, GOOD), env=ENV)
    (one,) = custom.webhooks_for(Receiver(kind="firm", id="F002"))
    assert one.url == "https://hooks.example.com/firms/F002"
    assert one.secret == b"s3cret-firms" and one.receiver == "firm/F002"
    assert "s3cret" not in repr(one)  # a target in a log line does not leak its secret
    (own,) = custom.webhooks_for(Receiver(kind="firm", id="F001"))  # its own entry replaces the kind's
    assert (own.url, own.secret, own.timeout_s) == ("http://127.0.0.1:9/f001", b"s3cret-f001", 2)
    (gov,) = custom.webhooks_for(Receiver(kind="regulator", id="district:天河"))
    assert gov.url == "https://gov.example.com/regulator/district%3A%E5%A4%A9%E6%B2%B3"
    assert custom.webhooks_for(Receiver(kind="centre", id=CENTRE)) == []
    assert "s3cret" not in (tmp_path / "routing.yaml").read_text()


BAD_CASES = [
    ("a misspelt match key", GOOD.replace("level: [P1, P2]", "levl: [P1, P2]"),
     ["route 2 'lift-centre'", "match.levl", "unknown key"]),
    ("a misspelt receiver kind", GOOD.replace("{centre: rule}", "{centr: rule}"),
     ["route 2 'lift-centre'", "receivers.centr", "unknown key"]),
    ("a misspelt top-level key", GOOD.replace("webhooks:", "webhook:"),
     ["line 16", "webhook", "unknown key"]),
    ("a bad level", GOOD.replace("[P1, P2]", "[P1, P4]"),
     ["route 2 'lift-centre'", "match.level[1]", "'P4'"]),
    ("rule flag for the escalation's receivers", GOOD.replace("{fire: always}", "{fire: rule}"),
     ["route 3 'fire'", "receivers.fire"]),
    ("96333 on a route that does not match elevators", GOOD.replace("kind: elevator, ", ""),
     ["route 2 'lift-centre'", "elevator emergency platform"]),
    ("a route without receivers", GOOD.replace("{firm: always, user_unit: always}", "{}"),
     ["route 1 'responders'", "lists no receiver"]),
    ("two routes of one name", GOOD.replace("name: fire", "name: responders"), ["unique: responders"]),
    ("a key given twice", GOOD.replace("    stop: true\n", "    stop: true\n    stop: false\n"),
     ["line 13", "routes[2].stop", "twice"]),
    ("not YAML", GOOD.replace("routes:", "routes: [", 1), ["routing.yaml line", "not valid YAML"]),
    ("a webhook URL that is not http", GOOD.replace("http://127.0.0.1:9/f001", "ftp://x/f"),
     ["webhook 2", "url", "not an http(s) URL"]),
    ("an unknown URL field", GOOD.replace("firms/{id}", "firms/{firm}"), ["webhook 1", "{firm}"]),
    ("a secret in the file instead of a variable name",
     GOOD.replace("secret_env: T_SECRET_F001", "secret: x"),
     ["webhook 2", "secret", "unknown key", "secret_env: required key is missing"]),
    ("an empty file", "", ["empty"]),
    ("no version", GOOD.replace("version: 1\n", ""), ["version: required key is missing"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "expect"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_a_bad_file_is_refused_naming_the_file_the_route_and_the_key(
    tmp_path: Path, case: str, text: str, expect: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RoutingError) as caught:
        RoutingTable.load(path, env=ENV)
    message = str(caught.value)
    assert str(path) in message, message
    for part in expect:
        assert part in message, (case, part, message)
    assert check_routing(path, env=ENV) == caught.value.problems


def test_an_unset_secret_variable_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    problems = check_routing(path, env={"T_SECRET_FIRMS": "x"})
    assert (
        len(problems) == 1
        and "T_SECRET_F001 is not set" in problems[0]
        and "webhook 2 (firm/F001)" in problems[0]
    )


def test_the_shipped_files_check_clean(tmp_path: Path) -> None:
    assert check_routing(DEFAULT_ROUTING, env={}) == []
    assert check_routing(tmp_path / "missing.yaml", env={}) == ["file not found"]


# --------------------------------------------------------------------------- reload on change


def bump(path: Path, text: str) -> None:
    """Rewrite with a new mtime, as an editor would (no reliance on the clock's resolution)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_the_watcher_reloads_and_keeps_the_previous_table_on_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    watcher = RoutingWatcher(path, env=ENV, every_s=3600)
    first = watcher.table
    assert watcher.poll(force=True) is False  # unchanged

    bump(path, GOOD.replace('by_district: {南沙: "fire-ns"}', "by_district: {南沙: fire-2}"))
    assert watcher.poll() is False  # not due yet (every_s): the stage's loop may call it often
    assert watcher.poll(force=True) is True and watcher.reloads == 1
    assert names(watcher.table.receivers(alert(), unit(district="南沙"), escalation=3))[-1] == "fire:fire-2"
    good = watcher.table
    assert good is not first

    bump(path, GOOD.replace("level: [P1, P2]", "levl: [P1, P2]"))
    assert watcher.poll(force=True) is False
    assert watcher.table is good and watcher.rejected == 1 and "match.levl" in watcher.last_error
    assert watcher.poll(force=True) is False and watcher.rejected == 1  # the same bad version: counted once

    stations = tmp_path / "stations.csv"
    bump(stations, "id,name,district,lat,lon,approximate\nS1,one,南沙,22.8,113.5,true\n")
    on_stations = RoutingWatcher(
        write(tmp_path, DEFAULT_ROUTING.read_text(encoding="utf-8"), "shipped.yaml"), stations_path=stations
    )
    assert names(on_stations.table.receivers(alert(), unit(), escalation=2))[-1] == "rescue:S1"
    bump(stations, "id,name,district,lat,lon,approximate,extra\nS1,one,南沙,22.8,113.5,true,x\n")
    assert on_stations.poll(force=True) is False and on_stations.rejected == 1
    assert "unknown column 'extra'" in on_stations.last_error

    bump(path, GOOD)
    assert watcher.poll(force=True) is True and watcher.reloads == 2 and watcher.last_error == ""


def test_a_broken_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="levl"):
        RoutingWatcher(write(tmp_path, GOOD.replace("level:", "levl:")), env=ENV)


# --------------------------------------------------------------------------- rescue stations


def test_the_shipped_stations_cover_every_district_and_say_they_are_approximate() -> None:
    stations = Stations.load(DEFAULT_STATIONS)
    assert {s.district for s in stations.stations} >= set(DISTRICTS)
    assert all(s.approximate for s in stations.stations)
    assert "APPROXIMATE" in DEFAULT_STATIONS.read_text(encoding="utf-8")
    for district in DISTRICTS:
        station = stations.nearest(None, None, district)
        assert station is not None and station.district == district


def test_nearest_by_great_circle_distance() -> None:
    assert great_circle_km(23.0, 113.0, 24.0, 113.0) == pytest.approx(111.2, abs=0.1)
    stations = Stations(parse_stations("id,name,district,lat,lon,approximate\n"
                                       "A,a,越秀,23.10,113.20,false\n"
                                       "B,b,天河,23.10,113.40,false\n"
                                       "C,c,天河,23.40,113.30,true\n"))  # fmt: skip
    assert stations.nearest(23.11, 113.29, "天河").id == "A"  # nearer A, whatever the district
    assert stations.nearest(23.11, 113.31, "越秀").id == "B"
    assert stations.nearest(23.30, 113.30).id == "C"
    assert stations.nearest(None, None, "天河").id == "B"  # the district's first-listed station
    assert stations.nearest(None, 113.3, "天河").id == "B"
    assert stations.nearest(None, None, "nowhere") is None
    assert stations.nearest(None, None) is None


STATION_ERRORS = [
    ("an extra column", "id,name,district,lat,lon,approximate,radius\n", "unknown column 'radius'"),
    ("a missing column", "id,name,district,lat,approximate\n", "missing column 'lon'"),
    ("a bad number", "id,name,district,lat,lon,approximate\nA,a,越秀,23.1N,113.2,true\n",
     "line 2, column lat"),
    ("a latitude out of range", "id,name,district,lat,lon,approximate\nA,a,越秀,123.1,113.2,true\n",
     "line 2, column lat"),
    ("not a bool", "id,name,district,lat,lon,approximate\nA,a,越秀,23.1,113.2,roughly\n",
     "line 2, column approximate"),
    ("a cell too many", "id,name,district,lat,lon,approximate\nA,a,越秀,23.1,113.2,true,x\n",
     "line 2: 7 cells"),
    ("a duplicate id",
     "id,name,district,lat,lon,approximate\nA,a,越秀,23.1,113.2,true\n# c\nA,b,越秀,23,113,true\n",
     "line 4: duplicate station id A"),
    ("no stations", "# only a comment\nid,name,district,lat,lon,approximate\n", "no stations"),
    ("nothing", "", "no header row"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "expect"), STATION_ERRORS, ids=[c[0] for c in STATION_ERRORS])
def test_a_bad_stations_file_is_refused_with_the_line(
    tmp_path: Path, case: str, text: str, expect: str
) -> None:
    path = tmp_path / "stations.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StationsError) as caught:
        Stations.load(path)
    assert expect in str(caught.value) and str(path) in str(caught.value), (case, str(caught.value))


def test_all_bad_station_rows_are_reported_at_once() -> None:
    with pytest.raises(StationsError) as caught:
        parse_stations("id,name,district,lat,lon,approximate\nA,a,越秀,x,113,true\nB,b,越秀,23,y,true\n")
    assert [p.split(",")[0] for p in caught.value.problems] == ["line 2", "line 3"]
