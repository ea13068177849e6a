"""The ``sesmon`` command line (DESIGN.md §10)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
    from alerts.publisher import run

    run(_settings(args))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from store.sink import run

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
        ("alerts", cmd_alerts, "deliver alerts to MQTT receivers and the alert log"),
        ("store", cmd_store, "Kafka -> InfluxDB sink (SESMON_INFLUX_*; spools to disk while it is down)"),
        ("board", cmd_board, "terminal board on a running pipeline"),
    ):
        stage = sub.add_parser(name, help=helptext)
        stage.add_argument("--mqtt-url", default=None)
        stage.add_argument("--kafka-url", default=None)
        stage.add_argument("--registry", type=Path, default=None)
        if name == "worker":
            stage.add_argument("--loglevel", default="warn")
        stage.set_defaults(func=func)

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
