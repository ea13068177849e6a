"""``sesmon fleet generate`` and ``sesmon simulate`` (DESIGN.md §10).

``register(subparsers)`` plugs both into the ``sesmon`` command line; ``python -m
simulators.cli`` runs them standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulators.network import NetworkOptions


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``fleet generate`` and ``simulate`` to an argparse subparsers object."""
    fleet = sub.add_parser("fleet", help="fleet registry tools")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True)
    gen = fleet_sub.add_parser("generate", help="write a registry CSV (DESIGN.md §3) for a simulated city")
    gen.add_argument("--elevators", type=int, default=2000, metavar="N")
    gen.add_argument("--boilers", type=int, default=200, metavar="M")
    gen.add_argument("--seed", type=int, default=1, metavar="S")
    gen.add_argument("--today", default=None, help="reference date YYYY-MM-DD for inspection dates")
    gen.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    gen.set_defaults(func=cmd_fleet_generate)

    sim = sub.add_parser("simulate", help="publish a simulated fleet or a scenario to an MQTT broker")
    sim.add_argument("--registry", type=Path, default=None, metavar="FILE", help="registry CSV")
    sim.add_argument(
        "--mqtt-url",
        default=None,
        help="mqtt[s]://[user:pass@]host:port (default: SESMON_MQTT_URL or 127.0.0.1:1883)",
    )
    sim.add_argument(
        "--credentials",
        type=Path,
        default=None,
        metavar="FILE",
        help="credentials.csv of `sesmon mqtt credentials`: every device publishes over its own connection "
        "with its own account and Last Will; people as their firm, inspector-1 and operator",
    )
    sim.add_argument(
        "--start",
        default=None,
        metavar="TIME",
        help="simulated start, ISO 8601 (e.g. 2026-11-02T10:00+08:00; default: now)",
    )
    sim.add_argument(
        "--threads", type=int, default=2, metavar="N", help="with --credentials: threads for all connections"
    )
    sim.add_argument(
        "--time-scale", type=float, default=1.0, metavar="X", help="simulated seconds per wall second"
    )
    sim.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S wall seconds")
    sim.add_argument(
        "--faults",
        choices=("none", "background", "demo"),
        default="none",
        help="none; background = calibrated rates (domain.md §1.7); demo = a fault every few seconds",
    )
    sim.add_argument(
        "--fault-rate", type=float, default=1.0, metavar="K", help="multiply background rates by K"
    )
    sim.add_argument("--seed", type=int, default=1, metavar="S")
    sim.add_argument(
        "--scenario", default=None, metavar="FILE", help="YAML scenario (or a name in simulators/scenarios)"
    )
    sim.add_argument("--qos", type=int, choices=(0, 1), default=1)
    sim.add_argument(
        "--network",
        choices=("perfect", "realistic"),
        default="perfect",
        help="realistic = buffering, reordering, duplicates, skew, dropouts, malformed",
    )
    for name, helptext in (
        ("buffering", "per device per hour: chance of a buffering episode"),
        ("reorder", "per message: chance of late delivery"),
        ("duplicates", "per message: chance of double delivery"),
        ("skew-fraction", "share of devices with a skewed clock"),
        ("dropouts-per-year", "per device: link losses (LWT offline)"),
        ("malformed", "per message: chance of a corrupted payload"),
    ):
        sim.add_argument(f"--net-{name}", type=float, default=None, metavar="P", help=helptext)
    sim.add_argument("--no-human", action="store_true", help="no maintenance/inspection/accident reports")
    sim.add_argument("--no-responders", action="store_true", help="do not act on sesmon alerts")
    sim.add_argument(
        "--keep-online-on-exit",
        action="store_true",
        help="do not publish retained 'offline' for every device on exit",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress display")
    sim.set_defaults(func=cmd_simulate)


def cmd_fleet_generate(args: argparse.Namespace) -> int:
    from datetime import date

    from sesmon.contract.registry import write_registry
    from simulators.fleet import generate_fleet

    today = date.fromisoformat(args.today) if args.today else None
    units = generate_fleet(args.elevators, args.boilers, seed=args.seed, today=today)
    write_registry(units, args.output)
    overdue = sum(1 for u in units if u.next_inspection_due and today and u.next_inspection_due < today)
    print(
        f"wrote {len(units)} units ({args.elevators} elevators, {args.boilers} boilers) to {args.output}"
        + (f"; {overdue} overdue" if today else "")
    )
    return 0


def network_from_args(args: argparse.Namespace) -> NetworkOptions:
    net = NetworkOptions.realistic() if args.network == "realistic" else NetworkOptions()
    for name in ("buffering", "reorder", "duplicates", "skew_fraction", "dropouts_per_year", "malformed"):
        value = getattr(args, f"net_{name}")
        if value is not None:
            setattr(net, name, value)
    return net


def start_ms_from(text: str | None) -> int | None:
    """``--start``: an ISO 8601 time (a time without offset is Guangzhou time)."""
    if text is None:
        return None
    from datetime import datetime

    from sesmon.contract.time import LOCAL_TZ

    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=LOCAL_TZ)
    return int(when.timestamp() * 1000)


def cmd_simulate(args: argparse.Namespace) -> int:
    from sesmon.runtime.settings import get_settings
    from simulators.publisher import mqtt_endpoint, run_simulation

    settings = get_settings()
    url = args.mqtt_url or settings.mqtt_url or "mqtt://127.0.0.1:1883"
    registry = args.registry or settings.registry
    if registry is None and args.scenario is None:
        print("sesmon simulate: give --registry FILE or --scenario FILE", file=sys.stderr)
        return 2
    if args.credentials is not None and not args.credentials.is_file():
        print(f"sesmon simulate: no credentials file {args.credentials}", file=sys.stderr)
        return 2
    try:
        start_ms = start_ms_from(args.start)
    except ValueError as exc:
        print(f"sesmon simulate: --start: {exc}", file=sys.stderr)
        return 2
    endpoint = mqtt_endpoint(url, settings)
    try:
        stats = run_simulation(
            registry,
            endpoint.host,
            endpoint.port,
            time_scale=args.time_scale,
            duration=args.duration,
            faults=args.faults,
            seed=args.seed,
            scenario=args.scenario,
            qos=args.qos,
            network=network_from_args(args),
            human=not args.no_human,
            responders=not args.no_responders,
            fault_rate_multiplier=args.fault_rate,
            offline_on_exit=not args.keep_online_on_exit,
            progress=not args.quiet,
            start_ms=start_ms,
            endpoint=endpoint,
            settings=settings,
            credentials=args.credentials,
            threads=args.threads,
        )
    except ConnectionError as exc:
        print(f"sesmon simulate: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"published {stats['sent']} messages ({stats['failed']} failed) in {stats['elapsed_s']} s")
    # one machine-readable line even when quiet: what the demo's log and its tests read
    print("simulator final " + json.dumps(stats, default=str), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sesmon-sim")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
