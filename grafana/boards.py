"""The monitoring centre's boards, one function each, built with grafana-foundation-sdk.

Every query is InfluxQL over the measurements ``store/points.py`` writes (DESIGN.md §7):
``elevator`` / ``boiler`` (tags device_id, district, firm_id; fields = telemetry), ``event``
(+ code, state), ``alert`` (+ rule, level, state; fields alert_id, title, opened_at, open_s,
escalation), ``hazard`` (+ grade, status, supervision, source; fields hazard_id, open,
overdue, deadline, …), ``dispatch`` (+ action, rule; fields alert_id, actor, since_alarm_s),
``pipeline`` (tag stage; every counter flattened), ``safety_kpi`` (tags scope, scope_id, kind,
window), ``unit`` (the map: tags device_id, kind, district, firm_id; fields lat, lon, state,
state_rank, online, mode, firing) and the replay's ``replay_signal`` / ``replay_alert`` / ``replay_timeline``.

How "the current state" is read from a log of changes: a record's tags are part of its series,
so an alert that resolves, or a hazard that is rectified, starts a new series. The queries
therefore take ``last()`` per *entity* (``GROUP BY device_id, rule`` for an alert,
``device_id, source`` for a hazard) in a subquery, selecting the tags that change as values,
and filter or count outside it.

Grafana substitutes ``$timeFilter``, ``$__interval`` and the ``$district`` / ``$firm`` / ``$kind``
/ ``$window`` / ``$run`` variables; ``grafana.macros.expand`` does the same for the tests.
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import Dashboard, DashboardCursorSync

from grafana.influxql import InfluxQL, datasource_ref
from grafana.panels import (
    AMBER,
    RED,
    bar_panel,
    choice_variable,
    count_by,
    geomap_panel,
    merge,
    pie_panel,
    stat_panel,
    steps,
    table_panel,
    tag_variable,
    timeseries_panel,
)
from metrics.targets import (
    ACCIDENTS_PER_10K_MAX,
    DEATHS_PER_10K_MAX,
    MAJOR_RECTIFICATION_RATE_MIN,
    RESCUE_ARRIVAL_MAX_MIN,
    SHANXI_ACCIDENTS_PER_10K_MAX,
)
from sesmon.contract.physics import DEFAULT_AIR_C, OTHER_LOSSES_GAS_PCT, SIEGERT_A_GAS, SIEGERT_B_GAS

DISTRICT = "district =~ /^$district$/"
FIRM = "firm_id =~ /^$firm$/"
KPI = "kind = '$kind' AND \"window\" = '$window'"
#: hazards are long-lived: their panels look back a year whatever the picker says
HAZARD_LOOKBACK = "365d"
#: rescuers on site within 30 min (Guangzhou 96333), in seconds, as dispatch's since_alarm_s
ARRIVAL_LIMIT_S = RESCUE_ARRIVAL_MAX_MIN * 60
#: boiler drum level alarms of the rule catalogue's defaults (rules/catalogue.yaml: low -50, trip -120 mm)
WATER_LOW_MM, WATER_EXTREME_LOW_MM = -50.0, -120.0

TAGS = ["sesmon"]

#: the map's unit states by ``state_rank`` (store/points.py ``UNIT_STATES``; a test holds them equal)
UNIT_STATES = ("normal", "maintenance", "out_of_service", "offline", "fault", "trapped")
#: their colours, in rank order
UNIT_STATE_COLOURS = ("green", "blue", "purple", "#8e8e8e", AMBER, RED)
#: the city overview map's initial view: Guangzhou (越秀, 23.13 N 113.26 E), the central districts
GUANGZHOU = (23.13, 113.26)
GUANGZHOU_ZOOM = 10


def q(query: str, ref: str = "A", *, table: bool = False, alias: str = "") -> InfluxQL:
    target = InfluxQL(query, ref)
    if table:
        target = target.table()
    if alias:
        target = target.alias(alias)
    return target


def _board(uid: str, title: str, description: str, time_from: str = "now-6h") -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time(time_from, "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .readonly()
    )


def _district() -> dash.QueryVariable:
    return tag_variable("district", "District", 'SHOW TAG VALUES WITH KEY = "district"')


def _firm() -> dash.QueryVariable:
    return tag_variable("firm", "Maintenance firm", 'SHOW TAG VALUES WITH KEY = "firm_id"')


def _kind() -> dash.CustomVariable:
    return choice_variable("kind", "Kind", ["all", "elevator", "boiler"])


def _window() -> dash.CustomVariable:
    return choice_variable("window", "Window", ["365d", "ytd"])


def _numbered(board: Dashboard) -> Dashboard:
    """Panel ids 1..n in board order (Grafana links, library panels and the tests address them)."""
    n = 0
    for panel in board.panels or []:
        n += 1
        panel.id_val = n
        for inner in getattr(panel, "panels", None) or []:
            n += 1
            inner.id_val = n
    return board


# --------------------------------------------------------------------------- (1) city overview


def city_overview() -> Dashboard:
    """Units by state, online rate and trapped passengers now, by district."""
    live_units = (
        "SELECT count(received_ms) AS units FROM (SELECT last(received_ms) AS received_ms FROM {m} "
        f"WHERE $timeFilter AND {DISTRICT} GROUP BY device_id)"
    )
    trapped_now = (
        "SELECT count(alert_id) AS trapped FROM (SELECT last(alert_id) AS alert_id, state FROM alert "
        f"WHERE rule = 'elevator.trapped' AND $timeFilter AND {DISTRICT} GROUP BY device_id) "
        "WHERE state = 'firing'"
    )
    board = (
        _board("sesmon-city", "sesmon · city overview", "Units by state, terminal online rate, trapped now.")
        .with_variable(_district())
        .with_row(dash.Row("Now"))
        .with_panel(
            stat_panel(
                "Units reporting",
                [
                    q(live_units.format(m="elevator"), "A", alias="elevators"),
                    q(live_units.format(m="boiler"), "B", alias="boilers"),
                ],
                description="Units with at least one reading in the time range.",
            )
        )
        .with_panel(
            stat_panel(
                "Terminals online",
                [
                    q(
                        "SELECT last(online_units) / last(registry_units) AS online_rate FROM pipeline "
                        "WHERE stage = 'streams' AND $timeFilter"
                    )
                ],
                unit="percentunit",
                thresholds=steps((0.9, AMBER), (0.95, "green"), base=RED),
                description="Units heard within their heartbeat over units in the registry (city).",
            )
        )
        .with_panel(
            stat_panel(
                "Trapped now",
                [q(trapped_now)],
                thresholds=steps((1, RED)),
                no_value="0",
                description="Elevators whose latest trapped-passenger alert is still firing.",
            )
        )
        .with_panel(
            stat_panel(
                "Alerts firing",
                [
                    q(
                        "SELECT last(alerts_firing) AS firing FROM pipeline "
                        "WHERE stage = 'streams' AND $timeFilter"
                    )
                ],
                thresholds=steps((1, AMBER)),
            )
        )
        .with_row(dash.Row("Units by state"))
        .with_panel(units_map())
        .with_panel(
            pie_panel(
                "Elevators by service mode",
                [
                    q(
                        "SELECT last(mode) AS mode FROM elevator "
                        f"WHERE $timeFilter AND {DISTRICT} GROUP BY device_id",
                        table=True,
                    )
                ],
                transformations=[merge(), count_by("mode", "device_id")],
                description="Latest GB/T 24476 service mode of each elevator.",
            )
        )
        .with_panel(
            bar_panel(
                "Elevators reporting by district",
                [
                    q(
                        "SELECT count(received_ms) AS units FROM (SELECT last(received_ms) AS received_ms "
                        f"FROM elevator WHERE $timeFilter AND {DISTRICT} GROUP BY device_id, district) "
                        "GROUP BY district",
                        alias="$tag_district",
                    )
                ],
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Trapped-passenger alarms",
                [
                    q(
                        "SELECT count(seq) AS trapped FROM event WHERE code = 'trapped' AND state = 'occur' "
                        f"AND $timeFilter AND {DISTRICT} GROUP BY time($__interval), district fill(none)",
                        alias="$tag_district",
                    )
                ],
                bars=True,
                width=8,
            )
        )
        .with_row(dash.Row("Units"))
        .with_panel(
            table_panel(
                "Latest state of each elevator",
                [
                    q(
                        "SELECT last(mode) AS mode, last(moving) AS moving, last(door) AS door, "
                        "last(floor) AS floor, last(speed_mps) AS speed_mps FROM elevator "
                        f"WHERE $timeFilter AND {DISTRICT} GROUP BY device_id, district, firm_id",
                        table=True,
                    )
                ],
                transformations=[merge()],
                units={"speed_mps": "velocityms"},
            )
        )
    )
    return _numbered(board.build())


def units_map() -> dash.Panel:
    """Every unit at its registry coordinates, coloured by its state (the store's ``unit`` points)."""
    key = " · ".join(f"{rank} {state.replace('_', ' ')}" for rank, state in enumerate(UNIT_STATES))
    return geomap_panel(
        "Map of units by state",
        [
            q(
                "SELECT last(lat) AS lat, last(lon) AS lon, last(state) AS state, "
                "last(state_rank) AS state_rank FROM unit "
                f"WHERE $timeFilter AND {DISTRICT} GROUP BY device_id, district, firm_id",
                table=True,
            )
        ],
        latitude="lat",
        longitude="lon",
        color_field="state_rank",
        thresholds=steps(*((rank, UNIT_STATE_COLOURS[rank]) for rank in range(1, len(UNIT_STATES)))),
        layer_name=f"State: {key}",
        centre=GUANGZHOU,
        zoom=GUANGZHOU_ZOOM,
        tooltip_hidden=["Time", "lat", "lon", "state_rank"],
        transformations=[merge()],
        description=(
            "Each unit at its registry coordinates, coloured by its latest state: trapped (an "
            "elevator.trapped alert firing), fault (another alert firing), offline (Last Will or no "
            "heartbeat), out of service (mode, or not in use in the registry), maintenance "
            "(inspection mode), normal. Units without coordinates are not shown."
        ),
    )


# --------------------------------------------------------------------------- (2) incident queue


def incident_queue() -> Dashboard:
    """Open alerts with their clocks (since alarm, dispatch, accept, on site) and response level."""
    open_alerts = (
        "SELECT * FROM (SELECT last(alert_id) AS alert_id, opened_at, escalation, open_s, state, level, "
        "title FROM alert "
        f"WHERE $timeFilter AND {DISTRICT} AND {FIRM} GROUP BY device_id, rule, district, firm_id) "
        "WHERE state = 'firing'"
    )

    def clock(action: str, ref: str) -> InfluxQL:
        return q(
            f"SELECT last(since_alarm_s) AS {action}_s FROM dispatch WHERE action = '{action}' "
            f"AND $timeFilter AND {DISTRICT} AND {FIRM} GROUP BY device_id, rule",
            ref,
            table=True,
        )

    board = (
        _board(
            "sesmon-incidents",
            "sesmon · incident queue",
            "Open alerts, the 96333 clocks and the response level (escalation 0..3).",
        )
        .with_variable(_district())
        .with_variable(_firm())
        .with_panel(
            stat_panel(
                "Open incidents",
                [
                    q(
                        "SELECT last(open_incidents) AS open FROM pipeline "
                        "WHERE stage = 'alerts' AND $timeFilter"
                    )
                ],
                thresholds=steps((1, AMBER)),
            )
        )
        .with_panel(
            stat_panel(
                "SLA breaches open",
                [
                    q(
                        "SELECT last(sla_breaches_open) AS breaches FROM pipeline "
                        "WHERE stage = 'alerts' AND $timeFilter"
                    )
                ],
                thresholds=steps((1, RED)),
                description="Rescuers not on site within 30 minutes (level 3, 119).",
            )
        )
        .with_panel(
            stat_panel(
                "On site within 30 min",
                [
                    q(
                        f"SELECT percentile(since_alarm_s, 90) AS p90 FROM dispatch WHERE action = 'on_site' "
                        f"AND $timeFilter AND {DISTRICT} AND {FIRM}"
                    )
                ],
                unit="s",
                thresholds=steps((ARRIVAL_LIMIT_S, RED)),
                description="P90 of alarm → on site (s); the plan: every rescue within 30 minutes.",
            )
        )
        .with_panel(
            stat_panel(
                "Accepted (median)",
                [
                    q(
                        "SELECT median(since_alarm_s) AS accepted FROM dispatch WHERE action = 'accepted' "
                        f"AND $timeFilter AND {DISTRICT} AND {FIRM}"
                    )
                ],
                unit="s",
                thresholds=steps((300, RED)),
                description="Alarm → accepted; not accepted in 5 minutes escalates to level 2.",
            )
        )
        .with_panel(
            table_panel(
                "Open alerts",
                [q(open_alerts, table=True)],
                transformations=[merge()],
                units={"opened_at": "dateTimeFromNow", "open_s": "s"},
                thresholds={"escalation": steps((1, AMBER), (2, RED))},
                sort_by="opened_at",
                descending=False,
                description="Since alarm: opened_at (live). Escalation: 0 firm, 1 rescue station, 2 119, "
                "3 regulator.",
            )
        )
        .with_panel(
            table_panel(
                "Response clocks (seconds after the alarm)",
                [
                    clock("dispatched", "A"),
                    clock("accepted", "B"),
                    clock("on_site", "C"),
                    clock("freed", "D"),
                ],
                transformations=[merge()],
                units={
                    "dispatched_s": "s",
                    "accepted_s": "s",
                    "on_site_s": "s",
                    "freed_s": "s",
                },
                thresholds={"accepted_s": steps((300, RED)), "on_site_s": steps((ARRIVAL_LIMIT_S, RED))},
            )
        )
        .with_panel(
            timeseries_panel(
                "Alarm → on site",
                [
                    q(
                        "SELECT mean(since_alarm_s) AS on_site_s FROM dispatch WHERE action = 'on_site' "
                        f"AND $timeFilter AND {DISTRICT} AND {FIRM} GROUP BY time($__interval), district "
                        "fill(none)",
                        alias="$tag_district",
                    )
                ],
                unit="s",
                thresholds=steps((ARRIVAL_LIMIT_S, RED)),
                threshold_style=common.GraphThresholdsStyleMode.DASHED,
            )
        )
        .with_panel(
            table_panel(
                "Responders' actions",
                [
                    q(
                        "SELECT action, actor, alert_id, since_alarm_s, district, firm_id FROM dispatch "
                        f"WHERE $timeFilter AND {DISTRICT} AND {FIRM} ORDER BY time DESC LIMIT 500",
                        table=True,
                    )
                ],
                units={"since_alarm_s": "s"},
                width=12,
                height=8,
            )
        )
    )
    return _numbered(board.build())


# --------------------------------------------------------------------------- (3) safety KPIs


def safety_kpis() -> Dashboard:
    """The plan's numbers (accidents, deaths per 10k; major rectification) by city, district, firm."""
    per_10k = steps((ACCIDENTS_PER_10K_MAX, RED))
    deaths = steps((DEATHS_PER_10K_MAX, RED))
    rectified = steps((MAJOR_RECTIFICATION_RATE_MIN, "green"), base=RED)

    def city(field: str, alias: str) -> InfluxQL:
        return q(
            f"SELECT last({field}) AS {alias} FROM safety_kpi WHERE scope = 'city' AND {KPI} AND $timeFilter"
        )

    def by(scope: str) -> InfluxQL:
        return q(
            "SELECT last(accidents_per_10k) AS accidents_per_10k, last(deaths_per_10k) AS deaths_per_10k, "
            "last(trapped_per_10k) AS trapped_per_10k, last(major_rectification_rate) AS major_rectified, "
            "last(overdue_rate) AS overdue_rate, last(accidents) AS accidents, last(deaths) AS deaths, "
            f"last(units_in_use) AS units_in_use FROM safety_kpi WHERE scope = '{scope}' AND {KPI} "
            "AND $timeFilter GROUP BY scope_id",
            table=True,
        )

    columns = {
        "units": {"major_rectified": "percentunit", "overdue_rate": "percentunit"},
        "thresholds": {
            "accidents_per_10k": per_10k,
            "deaths_per_10k": deaths,
            "major_rectified": rectified,
        },
    }
    board = (
        _board(
            "sesmon-safety-kpis",
            "sesmon · safety KPIs against the plan",
            f"Guangzhou plan: < {ACCIDENTS_PER_10K_MAX} accidents and < {DEATHS_PER_10K_MAX} deaths per "
            f"10,000 units in use; every major hidden danger rectified "
            f"(Shanxi: {SHANXI_ACCIDENTS_PER_10K_MAX}).",
            time_from="now-7d",
        )
        .with_variable(_kind())
        .with_variable(_window())
        .with_row(dash.Row("City"))
        .with_panel(
            stat_panel(
                "Accidents / 10k units",
                [city("accidents_per_10k", "accidents_per_10k")],
                thresholds=per_10k,
                decimals=3,
            )
        )
        .with_panel(
            stat_panel(
                "Deaths / 10k units",
                [city("deaths_per_10k", "deaths_per_10k")],
                thresholds=deaths,
                decimals=3,
            )
        )
        .with_panel(
            stat_panel(
                "Major hazards rectified",
                [city("major_rectification_rate", "major_rectified")],
                unit="percentunit",
                thresholds=rectified,
                no_value="none identified",
                description="Cohort of major hidden dangers identified in the window, verified closed.",
            )
        )
        .with_panel(
            stat_panel(
                "Overdue inspections",
                [city("overdue_inspections", "overdue"), city("overdue_rate", "overdue_rate").ref_id("B")],
                thresholds=steps((1, AMBER)),
            )
        )
        .with_panel(
            timeseries_panel(
                "Accidents and deaths per 10k units (city)",
                [
                    q(
                        "SELECT last(accidents_per_10k) AS accidents_per_10k, last(deaths_per_10k) AS "
                        f"deaths_per_10k FROM safety_kpi WHERE scope = 'city' AND {KPI} AND $timeFilter "
                        "GROUP BY time($__interval) fill(none)"
                    )
                ],
                thresholds=steps((DEATHS_PER_10K_MAX, AMBER), (ACCIDENTS_PER_10K_MAX, RED)),
                threshold_style=common.GraphThresholdsStyleMode.DASHED,
            )
        )
        .with_panel(
            timeseries_panel(
                "Trapped incidents per 10k elevators (city)",
                [
                    q(
                        "SELECT last(trapped_per_10k) AS trapped_per_10k, last(trapped) AS trapped FROM "
                        f"safety_kpi WHERE scope = 'city' AND {KPI} AND $timeFilter "
                        "GROUP BY time($__interval) fill(none)"
                    )
                ],
            )
        )
        .with_row(dash.Row("By district"))
        .with_panel(
            table_panel(
                "Districts against the plan",
                [by("district")],
                transformations=[merge()],
                units=columns["units"],
                thresholds=columns["thresholds"],
                sort_by="accidents_per_10k",
            )
        )
        .with_row(dash.Row("By maintenance firm"))
        .with_panel(
            table_panel(
                "Firms against the plan",
                [by("firm")],
                transformations=[merge()],
                units=columns["units"],
                thresholds=columns["thresholds"],
                sort_by="accidents_per_10k",
            )
        )
    )
    return _numbered(board.build())


# --------------------------------------------------------------------------- (4) firm ranking


def firm_ranking() -> Dashboard:
    """Maintenance firms ranked: trapped rate, response times, alerts, open and overdue hazards."""
    board = (
        _board(
            "sesmon-firms",
            "sesmon · maintenance firm ranking",
            "Worst first: trapped incidents per 10k elevators, slow rescues, open hidden dangers.",
            time_from="now-7d",
        )
        .with_variable(_window())
        .with_variable(_firm())
        .with_panel(
            table_panel(
                "Firms (elevators)",
                [
                    q(
                        "SELECT last(trapped_per_10k) AS trapped_per_10k, last(trapped) AS trapped, "
                        "last(hazards_open) AS hazards_open, last(hazards_overdue) AS hazards_overdue, "
                        "last(overdue_rate) AS overdue_inspection_rate, last(elevators_in_use) AS elevators "
                        "FROM safety_kpi WHERE scope = 'firm' AND kind = 'elevator' "
                        "AND \"window\" = '$window' "
                        "AND scope_id =~ /^$firm$/ AND $timeFilter GROUP BY scope_id",
                        table=True,
                    )
                ],
                transformations=[merge()],
                units={"overdue_inspection_rate": "percentunit"},
                thresholds={
                    "hazards_overdue": steps((1, RED)),
                    "overdue_inspection_rate": steps((0.01, AMBER)),
                },
                sort_by="trapped_per_10k",
            )
        )
        .with_panel(
            bar_panel(
                "Alarm → on site, median by firm",
                [
                    q(
                        "SELECT median(since_alarm_s) AS on_site_s FROM dispatch WHERE action = 'on_site' "
                        f"AND {FIRM} AND $timeFilter GROUP BY firm_id",
                        alias="$tag_firm_id",
                    )
                ],
                unit="s",
                thresholds=steps((ARRIVAL_LIMIT_S / 2, AMBER), (ARRIVAL_LIMIT_S, RED)),
            )
        )
        .with_panel(
            bar_panel(
                "Alerts raised by firm",
                [
                    q(
                        "SELECT count(alert_id) AS alerts FROM alert WHERE state = 'firing' "
                        f"AND {FIRM} AND $timeFilter GROUP BY firm_id",
                        alias="$tag_firm_id",
                    )
                ],
            )
        )
        .with_panel(
            bar_panel(
                "Trapped alarms by firm",
                [
                    q(
                        "SELECT count(seq) AS trapped FROM event WHERE code = 'trapped' AND state = 'occur' "
                        f"AND {FIRM} AND $timeFilter GROUP BY firm_id",
                        alias="$tag_firm_id",
                    )
                ],
                thresholds=steps((1, AMBER)),
            )
        )
        .with_panel(
            bar_panel(
                "Open hidden dangers by firm",
                [
                    q(
                        "SELECT count(hazard_id) AS open FROM (SELECT last(hazard_id) AS hazard_id, "
                        f"last(open) AS open FROM hazard WHERE {FIRM} AND $timeFilter "
                        "GROUP BY device_id, source, firm_id) WHERE open = true GROUP BY firm_id",
                        alias="$tag_firm_id",
                    )
                ],
                thresholds=steps((1, AMBER)),
                time_from=HAZARD_LOOKBACK,
                no_value="0",
            )
        )
    )
    return _numbered(board.build())


# --------------------------------------------------------------------------- (5) hidden dangers


def hidden_dangers() -> Dashboard:
    """Open hidden dangers (隐患) by supervision level (挂牌督办) and grade, overdue ones first."""
    latest = (
        "SELECT last(hazard_id) AS hazard_id, last(open) AS open FROM hazard "
        f"WHERE $timeFilter AND {DISTRICT} GROUP BY device_id, source, {{by}}"
    )
    board = (
        _board(
            "sesmon-hazards",
            "sesmon · hidden dangers",
            "Hidden dangers by supervision level and grade; overdue rectifications and inspections.",
            time_from="now-30d",
        )
        .with_variable(_district())
        .with_panel(
            stat_panel(
                "Open",
                [
                    q(
                        "SELECT last(hazards_open) AS open, last(hazards_open_major) AS major "
                        "FROM safety_kpi "
                        "WHERE scope = 'city' AND kind = 'all' AND \"window\" = '365d' AND $timeFilter"
                    )
                ],
                thresholds=steps((1, AMBER)),
                time_from=HAZARD_LOOKBACK,
            )
        )
        .with_panel(
            stat_panel(
                "Overdue rectification",
                [
                    q(
                        "SELECT last(hazards_overdue) AS overdue FROM safety_kpi "
                        "WHERE scope = 'city' AND kind = 'all' AND \"window\" = '365d' AND $timeFilter"
                    )
                ],
                thresholds=steps((1, RED)),
                time_from=HAZARD_LOOKBACK,
            )
        )
        .with_panel(
            stat_panel(
                "Major rectified (365 d)",
                [
                    q(
                        "SELECT last(major_rectification_rate) AS rectified FROM safety_kpi "
                        "WHERE scope = 'city' AND kind = 'all' AND \"window\" = '365d' AND $timeFilter"
                    )
                ],
                unit="percentunit",
                thresholds=steps((MAJOR_RECTIFICATION_RATE_MIN, "green"), base=RED),
                no_value="none identified",
                time_from=HAZARD_LOOKBACK,
            )
        )
        .with_panel(
            stat_panel(
                "Overdue inspections",
                [
                    q(
                        "SELECT last(overdue_inspections) AS overdue FROM safety_kpi "
                        "WHERE scope = 'city' AND kind = 'all' AND \"window\" = '365d' AND $timeFilter"
                    )
                ],
                thresholds=steps((1, AMBER)),
                time_from=HAZARD_LOOKBACK,
            )
        )
        .with_panel(
            bar_panel(
                "Open by supervision level",
                [
                    q(
                        f"SELECT count(hazard_id) AS open FROM ({latest.format(by='supervision')}) "
                        "WHERE open = true GROUP BY supervision",
                        alias="$tag_supervision",
                    )
                ],
                time_from=HAZARD_LOOKBACK,
                no_value="0",
                description="none: not supervised; district, city, province: 挂牌督办 level.",
            )
        )
        .with_panel(
            bar_panel(
                "Open by grade",
                [
                    q(
                        f"SELECT count(hazard_id) AS open FROM ({latest.format(by='grade')}) "
                        "WHERE open = true GROUP BY grade",
                        alias="$tag_grade",
                    )
                ],
                time_from=HAZARD_LOOKBACK,
                no_value="0",
            )
        )
        .with_panel(
            table_panel(
                "Open hidden dangers",
                [
                    q(
                        "SELECT * FROM (SELECT last(hazard_id) AS hazard_id, title, open, overdue, deadline, "
                        "opened_at, grade, status, supervision FROM hazard "
                        f"WHERE $timeFilter AND {DISTRICT} GROUP BY device_id, source, district, firm_id) "
                        "WHERE open = true",
                        table=True,
                    )
                ],
                transformations=[merge()],
                units={"deadline": "dateTimeFromNow", "opened_at": "dateTimeAsLocal"},
                sort_by="deadline",
                descending=False,
                time_from=HAZARD_LOOKBACK,
            )
        )
        .with_panel(
            table_panel(
                "Overdue inspections by district",
                [
                    q(
                        "SELECT last(overdue_inspections) AS overdue, last(overdue_rate) AS overdue_rate, "
                        "last(hazards_overdue) AS hazards_overdue, last(hazards_open_major) AS major_open "
                        "FROM safety_kpi WHERE scope = 'district' AND kind = 'all' AND \"window\" = '365d' "
                        "AND scope_id =~ /^$district$/ AND $timeFilter GROUP BY scope_id",
                        table=True,
                    )
                ],
                transformations=[merge()],
                units={"overdue_rate": "percentunit"},
                thresholds={"overdue": steps((1, AMBER)), "hazards_overdue": steps((1, RED))},
                sort_by="overdue",
                time_from=HAZARD_LOOKBACK,
            )
        )
    )
    return _numbered(board.build())


# --------------------------------------------------------------------------- (6) boilers


def boilers() -> Dashboard:
    """Boiler physics: pressure against set points, drum level band, flue gas, O₂, efficiency."""
    boiler = "device_id =~ /^$boiler$/"
    efficiency = (
        f"{100 - OTHER_LOSSES_GAS_PCT} - (mean(flue_gas_temp_c) - {DEFAULT_AIR_C}) * "
        f"({SIEGERT_A_GAS} / (21 - mean(o2_pct)) + {SIEGERT_B_GAS})"
    )

    def series(field: str, unit_alias: str = "") -> InfluxQL:
        return q(
            f"SELECT mean({field}) AS {unit_alias or field} FROM boiler WHERE $timeFilter AND {DISTRICT} "
            f"AND {boiler} GROUP BY time($__interval), device_id fill(none)",
            alias="$tag_device_id",
        )

    board = (
        _board(
            "sesmon-boilers", "sesmon · boilers", "Pressure, drum level, flue gas, O₂ and thermal efficiency."
        )
        .with_variable(_district())
        .with_variable(
            tag_variable("boiler", "Boiler", 'SHOW TAG VALUES FROM "boiler" WITH KEY = "device_id"')
        )
        .with_variable(
            dash.TextBoxVariable("set_point_mpa")
            .label("Safety valve set (MPa)")
            .default_value("1.25")
            .description("The set point drawn on the pressure panel (registry column safety_valve_set_mpa).")
        )
        .with_panel(
            timeseries_panel(
                "Drum pressure against the safety-valve set point",
                [
                    series("pressure_mpa"),
                    q(
                        "SELECT max(pressure_mpa) * 0 + $set_point_mpa AS set_point FROM boiler "
                        f"WHERE $timeFilter AND {DISTRICT} AND {boiler} "
                        "GROUP BY time($__interval) fill(none)",
                        "B",
                        alias="set point",
                    ),
                ],
                unit="suffix: MPa",
                description="Gauge pressure (MPa); the dashed line is the set point chosen above.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Drum water level (vs normal water level)",
                [series("water_level_mm")],
                unit="lengthmm",
                thresholds=steps((WATER_EXTREME_LOW_MM, AMBER), (WATER_LOW_MM, "green"), base=RED),
                threshold_style=common.GraphThresholdsStyleMode.LINE_AND_AREA,
                description=f"Low-water alarm at {WATER_LOW_MM:g} mm, extreme low (trip) at "
                f"{WATER_EXTREME_LOW_MM:g} mm (the rule catalogue's defaults).",
            )
        )
        .with_panel(timeseries_panel("Flue gas temperature", [series("flue_gas_temp_c")], unit="celsius"))
        .with_panel(timeseries_panel("O₂ in flue gas", [series("o2_pct")], unit="percent"))
        .with_panel(
            timeseries_panel(
                "Thermal efficiency (indirect, flue-gas loss)",
                [
                    q(
                        f"SELECT {efficiency} AS efficiency_pct FROM boiler WHERE $timeFilter AND {DISTRICT} "
                        f"AND {boiler} AND o2_pct < 21 GROUP BY time($__interval), device_id fill(none)",
                        alias="$tag_device_id",
                    )
                ],
                unit="percent",
                thresholds=steps((85, AMBER), (90, "green"), base=RED),
                description="η ≈ 100 − q5 − q2, Siegert: q2 = (t_fg − t_air)·(0.66/(21 − O₂) + 0.009) "
                "(domain.md §2.5).",
            )
        )
        .with_panel(
            table_panel(
                "Latest reading of each boiler",
                [
                    q(
                        "SELECT last(pressure_mpa) AS pressure_mpa, last(water_level_mm) AS water_level_mm, "
                        "last(flue_gas_temp_c) AS flue_gas_temp_c, last(o2_pct) AS o2_pct, "
                        "last(burner) AS burner FROM boiler "
                        f"WHERE $timeFilter AND {DISTRICT} AND {boiler} GROUP BY device_id, district",
                        table=True,
                    )
                ],
                transformations=[merge()],
                thresholds={
                    "water_level_mm": steps((WATER_EXTREME_LOW_MM, AMBER), (WATER_LOW_MM, "green"), base=RED)
                },
                width=12,
            )
        )
    )
    return _numbered(board.build())


# --------------------------------------------------------------------------- (7) pipeline health


def pipeline_health() -> Dashboard:
    """The pipeline's own health: ingest rate, lag, dead letters, store backlog, stage liveness."""

    def stage(field: str, name: str, alias: str = "") -> InfluxQL:
        return q(
            f"SELECT last({field}) AS {alias or field} FROM pipeline WHERE stage = '{name}' "
            "AND $timeFilter GROUP BY time($__interval) fill(none)"
        )

    board = (
        _board(
            "sesmon-pipeline",
            "sesmon · pipeline health",
            "Each stage's counters (the pipeline topic).",
            "now-1h",
        )
        .refresh("10s")
        .with_panel(
            timeseries_panel(
                "Ingest rate",
                [
                    q(
                        "SELECT non_negative_derivative(max(produced), 1s) AS produced_per_s FROM pipeline "
                        "WHERE stage = 'ingest' AND $timeFilter GROUP BY time($__interval) fill(none)"
                    ),
                    q(
                        "SELECT non_negative_derivative(max(processed), 1s) AS evaluated_per_s FROM pipeline "
                        "WHERE stage = 'streams' AND $timeFilter GROUP BY time($__interval) fill(none)",
                        "B",
                    ),
                ],
                unit="reqps",
            )
        )
        .with_panel(
            timeseries_panel(
                "Worker lag (device time → evaluated)",
                [stage("lag_ms_last", "streams", "lag_ms"), stage("input_pending", "streams").ref_id("B")],
                unit="ms",
                thresholds=steps((5_000, AMBER), (30_000, RED)),
                threshold_style=common.GraphThresholdsStyleMode.DASHED,
            )
        )
        .with_panel(
            timeseries_panel(
                "Dead letters",
                [
                    q(
                        "SELECT non_negative_difference(max(dead_lettered)) AS dead_lettered FROM pipeline "
                        "WHERE stage = 'ingest' AND $timeFilter GROUP BY time($__interval) fill(none)"
                    )
                ],
                bars=True,
                description="Messages refused by ingest (bad JSON, schema, unknown device, oversize) "
                "per interval.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Store: points written, waiting and spooled",
                [
                    q(
                        "SELECT non_negative_derivative(max(written_points), 1s) AS written_per_s "
                        "FROM pipeline "
                        "WHERE stage = 'store' AND $timeFilter GROUP BY time($__interval) fill(none)"
                    ),
                    stage("pending_points", "store").ref_id("B"),
                    stage("spool_points", "store").ref_id("C"),
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "Alerts: pages in flight and delivered",
                [stage("in_flight", "alerts"), stage("delivered", "alerts").ref_id("B")],
            )
        )
        .with_panel(
            table_panel(
                "Stages",
                [
                    q(
                        "SELECT last(health_ok) AS ok, last(health_pid) AS pid, "
                        "last(health_last_progress_ms) AS last_progress FROM pipeline "
                        "WHERE $timeFilter GROUP BY stage",
                        table=True,
                    )
                ],
                transformations=[merge()],
                units={"last_progress": "dateTimeFromNow"},
                width=12,
            )
        )
    )
    return _numbered(board.build())


# --------------------------------------------------------------------------- (8) replay


def replay() -> Dashboard:
    """One replay run (issue 12) chosen by ``$run``: its signals, alert changes and timeline."""
    run = "run = '$run'"
    board = (
        _board("sesmon-replay", "sesmon · replay", "An archived stream re-run for inspectors.", "now-30d")
        .with_variable(
            dash.QueryVariable("run")
            .label("Replay run")
            .datasource(datasource_ref())
            .query('SHOW TAG VALUES FROM "replay_signal" WITH KEY = "run"')
        )
        .with_panel(
            timeseries_panel(
                "Signals",
                [
                    q(
                        f"SELECT mean(value) AS value FROM replay_signal WHERE {run} AND $timeFilter "
                        "GROUP BY time($__interval), device_id, signal fill(none)",
                        alias="$tag_device_id $tag_signal",
                    )
                ],
                width=24,
            )
        )
        .with_panel(
            table_panel(
                "Alert changes",
                [
                    q(
                        "SELECT alert_id, escalation, rule, level, state FROM replay_alert "
                        f"WHERE {run} AND $timeFilter",
                        table=True,
                    )
                ],
                width=12,
            )
        )
        .with_panel(
            table_panel(
                "Timeline",
                [
                    q(
                        f'SELECT alert_id, what, "by" FROM replay_timeline WHERE {run} AND $timeFilter',
                        table=True,
                    )
                ],
                width=12,
            )
        )
    )
    return _numbered(board.build())


#: every board by its file name (``sesmon grafana export`` writes ``<name>.json``)
BOARDS: dict[str, Callable[[], Dashboard]] = {
    "city-overview": city_overview,
    "incident-queue": incident_queue,
    "safety-kpis": safety_kpis,
    "firm-ranking": firm_ranking,
    "hidden-dangers": hidden_dangers,
    "boilers": boilers,
    "pipeline-health": pipeline_health,
    "replay": replay,
}
