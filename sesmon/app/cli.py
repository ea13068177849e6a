"""The ``sesmon`` command line (DESIGN.md §10)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from sesmon.contract.registry import Registry, RegistryError
from sesmon.runtime.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("mqtt_url", "kafka_url", "registry"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _registry(settings: Settings) -> Registry | None:
    return Registry.load(settings.registry) if settings.registry else None


def cmd_demo(args: argparse.Namespace) -> int:
    from sesmon.app.demo import run_demo

    summary = run_demo(
        duration=args.duration,
        elevators=args.elevators,
        boilers=args.boilers,
        registry=args.registry,
        simulator=not args.no_simulator,
        mqtt_port=args.mqtt_port,
        seed=args.seed,
        faults=args.faults,
        time_scale=args.time_scale,
        secure=args.secure,
    )
    return 0 if summary else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.bridge import run

    settings = _settings(args)
    run(settings, _registry(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run

    settings = _settings(args)
    sys.argv = [sys.argv[0]]  # Faust's worker parses argv itself
    run(settings, _registry(settings), loglevel=args.loglevel)
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from alerts.audit import AuditError
    from alerts.publisher import run
    from alerts.routing_file import RoutingError
    from alerts.stations import StationsError

    try:
        run(_settings(args))
    except (RoutingError, StationsError, AuditError) as exc:
        print(f"sesmon alerts: {exc}", file=sys.stderr)
        return 2
    return 0


def _data_settings(args: argparse.Namespace) -> Settings:
    settings = _settings(args)
    data_dir = getattr(args, "data_dir", None)
    return settings.model_copy(update={"data_dir": data_dir}) if data_dir is not None else settings


def _minutes(seconds: int | None) -> str:
    """Seconds as ``m:ss`` or ``h:mm:ss`` (``-`` before: overdue); ``-`` for a clock that does not run."""
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{sign}{rest // 60}:{rest % 60:02d}"


def cmd_alerts_list(args: argparse.Namespace) -> int:
    """Open incidents from the stage's store, opened read-only beside the running stage."""
    import json

    from rich.console import Console
    from rich.table import Table

    from alerts.incident_store import IncidentStore
    from alerts.incidents import EventClock

    settings = _data_settings(args)
    path = settings.data_dir / "alerts" / "incidents.sqlite"
    if not path.exists():
        print(f"no incident store at {path} (has the alerts stage run with this data dir?)", file=sys.stderr)
        return 2
    store = IncidentStore(path, readonly=True)
    try:
        # the stage's own "now": device time + the wall time since it last moved (alerts/incidents.py)
        clock = EventClock(max_ahead_ms=int(settings.alerts_clock_max_ahead_s * 1000))
        clock.restore(store.clock_state())
        now = clock.now() or int(time.time() * 1000)
        incidents = store.list_open(limit=args.limit)
    finally:
        store.close()
    rows = []
    for incident in incidents:
        clocks = incident.clocks(now)
        rows.append(
            {
                "alert_id": incident.alert_id,
                "level": incident.level,
                "rule": incident.rule,
                "unit": incident.device_id,
                "district": incident.district,
                "firm": incident.firm_id,
                "escalation": incident.escalation,
                "sla_breach": incident.sla_breach,
                "accident": incident.accident,
                "last": incident.timeline[-1].what if incident.timeline else "",
                **clocks,
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    table = Table(title=f"open incidents: {len(rows)} (clocks in device time; - = not running)")
    for col in (
        "level",
        "esc",
        "rule",
        "unit",
        "district",
        "firm",
        "age",
        "accept in",
        "on site in",
        "accident in",
        "last step",
        "alert id",
    ):
        table.add_column(col)
    for row in rows:
        flags = " SLA" if row["sla_breach"] else ""
        flags += " ACCIDENT" if row["accident"] else ""
        table.add_row(
            row["level"],
            f"{row['escalation']}{flags}",
            row["rule"],
            row["unit"],
            row["district"],
            row["firm"],
            _minutes(row["age_s"]),
            _minutes(row["accept_in_s"]),
            _minutes(row["on_site_in_s"]),
            _minutes(row["accident_in_s"]),
            row["last"],
            row["alert_id"],
        )
    Console(width=220).print(table)
    return 0


def cmd_alerts_dispatch(args: argparse.Namespace) -> int:
    """Publish a dispatch action over MQTT as an operator, then say what the stage made of it."""
    from sesmon.app.operator_desk import send_dispatch

    action = getattr(args, "action", None) or "ack"
    return send_dispatch(_data_settings(args), args.alert_id, action, args.by, wait_s=args.wait)


def cmd_alerts_routing_check(args: argparse.Namespace) -> int:
    from alerts.routing_file import DEFAULT_ROUTING, check_routing

    settings = Settings()
    path = args.file or settings.alerts_routing_file or DEFAULT_ROUTING
    stations = args.stations or settings.alerts_stations_file
    problems = check_routing(path, centre_id=settings.centre_id, stations_path=stations)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{path}: {len(problems)} problem(s); the stage keeps the table it has in force")
        return 1
    print(f"{path}: OK")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from alerts.audit import verify_command

    return verify_command(_data_settings(args).data_dir)


def cmd_store(args: argparse.Namespace) -> int:
    from store.sink import run

    settings = _settings(args)
    run(settings, _registry(settings))
    return 0


def cmd_kpi(args: argparse.Namespace) -> int:
    from kpi.stage import run

    settings = _settings(args)
    run(settings, _registry(settings))
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from rich.live import Live

    from sesmon.app.board import BoardFeed

    feed = BoardFeed(_settings(args))
    try:
        with Live(feed.render(), refresh_per_second=2) as live:
            while True:
                feed.poll(0.5)
                live.update(feed.render())
    except KeyboardInterrupt:
        return 0
    finally:
        feed.close()


def cmd_mqtt_credentials(args: argparse.Namespace) -> int:
    from sesmon.runtime.broker_auth import write_credentials

    creds = write_credentials(Registry.load(args.registry), args.out, operators=args.operators)
    roles: dict[str, int] = {}
    for account in creds.accounts.values():
        roles[account.role] = roles.get(account.role, 0) + 1
    print(f"wrote {creds.passwd}, {creds.acl} and {creds.csv} (mode 0600): {roles}")
    print("mosquitto.conf: password_file, acl_file, allow_anonymous false, use_username_as_clientid true")
    return 0


def _add_alerts_commands(sub: Any) -> None:
    """``sesmon alerts`` (the stage), its operator commands, and ``sesmon audit``."""
    from sesmon.contract.schemas import DISPATCH_ACTIONS

    alerts = sub.add_parser(
        "alerts", help="the response loop: pages, webhooks, dispatch, escalation (no subcommand: run it)"
    )
    alerts.add_argument("--mqtt-url", default=None)
    alerts.add_argument("--kafka-url", default=None)
    alerts.add_argument("--registry", type=Path, default=None)
    alerts.set_defaults(func=cmd_alerts)
    commands = alerts.add_subparsers(dest="alerts_command", metavar="{list,ack,dispatch,routing-check}")

    listing = commands.add_parser(
        "list", help="open incidents: level, unit, firm, age, time left on each clock"
    )
    listing.add_argument("--data-dir", type=Path, default=None, help="the stage's SESMON_DATA_DIR")
    listing.add_argument("--limit", type=int, default=None, help="the oldest N only")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_alerts_list)

    def desk(name: str, helptext: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=helptext)
        parser.add_argument("alert_id")
        if name == "dispatch":
            parser.add_argument("action", choices=DISPATCH_ACTIONS)
        parser.add_argument("--by", default=None, help="who acts (default: the MQTT username, else operator)")
        parser.add_argument(
            "--mqtt-url", default=None, help="mqtt[s]://user:password@host:port (SESMON_MQTT_URL)"
        )
        parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the outcome")
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="the stage's data dir: a refusal's reason is read there",
        )
        parser.set_defaults(func=cmd_alerts_dispatch)
        return parser

    desk("ack", "acknowledge an alert as an operator (a dispatch action over MQTT)")
    desk("dispatch", "publish a dispatch action on an alert as an operator")

    check = commands.add_parser("routing-check", help="validate a routing file before putting it in place")
    check.add_argument("file", nargs="?", type=Path, default=None, help="default: the file in force")
    check.add_argument("--stations", type=Path, default=None, help="stations CSV (default: the one in force)")
    check.set_defaults(func=cmd_alerts_routing_check)

    audit = sub.add_parser("audit", help="the alerts stage's hash-chained audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="check the chain: 0 intact, 1 names the first bad entry"
    )
    verify.add_argument("--data-dir", type=Path, default=None, help="SESMON_DATA_DIR (default .sesmon)")
    verify.set_defaults(func=cmd_audit_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sesmon", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="embedded brokers + whole pipeline + simulated fleet + terminal board")
    demo.add_argument("--duration", type=float, default=None, help="stop after S seconds (unattended runs)")
    demo.add_argument("--elevators", type=int, default=2000)
    demo.add_argument("--boilers", type=int, default=200)
    demo.add_argument(
        "--registry", type=Path, default=None, help="registry CSV (DESIGN.md §3) instead of a generated fleet"
    )
    demo.add_argument(
        "--no-simulator", action="store_true", help="run all but the fleet; devices publish to the MQTT port"
    )
    demo.add_argument(
        "--mqtt-port", type=int, default=None, help="MQTT port to listen on (default: a free one)"
    )
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--faults", default="demo", choices=("none", "background", "demo"))
    demo.add_argument("--time-scale", type=float, default=1.0)
    demo.add_argument(
        "--secure",
        action="store_true",
        help="MQTT with a password per device and stage and an ACL (credentials in <state dir>/mqtt/)",
    )
    demo.set_defaults(func=cmd_demo)

    for name, func, helptext in (
        ("ingest", cmd_ingest, "MQTT -> Kafka bridge (validate, dead-letter)"),
        ("worker", cmd_worker, "Faust worker: rules, state, alerts"),
        ("store", cmd_store, "Kafka -> InfluxDB sink (SESMON_INFLUX_*; spools to disk while it is down)"),
        ("kpi", cmd_kpi, "live safety KPIs: reports, alerts, hazards, dispatch, status -> safety_kpi rows"),
        ("board", cmd_board, "terminal board on a running pipeline"),
    ):
        stage = sub.add_parser(name, help=helptext)
        stage.add_argument("--mqtt-url", default=None)
        stage.add_argument("--kafka-url", default=None)
        stage.add_argument("--registry", type=Path, default=None)
        if name == "worker":
            stage.add_argument("--loglevel", default="warn")
        stage.set_defaults(func=func)

    _add_alerts_commands(sub)

    try:
        from simulators.cli import register
    except ImportError:  # the simulator package is optional for production stages
        pass
    else:
        register(sub)
    mqtt_cmd = sub.add_parser("mqtt", help="MQTT broker administration")
    mqtt_sub = mqtt_cmd.add_subparsers(dest="mqtt_command", required=True)
    creds = mqtt_sub.add_parser(
        "credentials", help="write a mosquitto password file, ACL and credentials.csv for a registry"
    )
    creds.add_argument("--registry", type=Path, required=True, help="registry CSV (DESIGN.md §3)")
    creds.add_argument("--out", type=Path, required=True, help="directory for passwd, acl, credentials.csv")
    creds.add_argument(
        "--operators", type=int, default=1, metavar="N", help="centre desks: operator … operator-N"
    )
    creds.set_defaults(func=cmd_mqtt_credentials)

    from rules.cli import register as register_rules  # sesmon rules check|show|schema

    register_rules(sub)
    from grafana.cli import register as register_grafana  # sesmon grafana export|push

    register_grafana(sub)
    from replay.cli import register as register_replay  # sesmon replay

    register_replay(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except RegistryError as exc:
        print(f"sesmon: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
