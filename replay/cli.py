"""``sesmon replay``: one incident, a unit or a district, re-run from the raw archive.

    sesmon replay --alert ALERT_ID --data-dir DIR --out OUT
    sesmon replay --hazard HAZARD_ID --data-dir DIR --out OUT
    sesmon replay --unit DEVICE_ID --from T --to T --data-dir DIR --out OUT
    sesmon replay --district NAME --from T --to T --data-dir DIR --out OUT [--speed N] [--influx-url URL]
                  [--jobs N]

Reads ``DIR`` (the live data dir, or a demo's state dir ``.sesmon/demo-…``): the archive, the
catalogue versions, the audit log and the registry; writes only under ``OUT`` (refused inside
``DIR``) and, with ``--influx-url``, replay_* points tagged ``run``. ``--jobs N`` (default: the
number of cores) spreads the units of a district over N processes (``replay.parallel``) with the
same output, byte for byte; one unit, ``--speed`` and small archives run in one process.

Exit status: 0 done; 1 the live audit chain is broken (the report's first line says where);
2 a request that cannot be answered; 3 the alert or hidden danger asked about was not reproduced.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sesmon.contract.archive import ReadStats, default_archive_dir, iter_archive
from sesmon.contract.registry import Registry
from sesmon.contract.time import local_datetime
from sesmon.runtime.settings import Settings

from .window import (
    MIN_MARGIN_S,
    PLOTTED_UNITS,
    SelectionError,
    Target,
    Window,
    incident_window,
    parse_alert_id,
    parse_hazard_id,
    parse_time,
    span_window,
)

if TYPE_CHECKING:  # the engine, the report (matplotlib) and InfluxDB load only when a replay runs:
    # every stage builds the `sesmon` parser, and matplotlib alone took ~1 s of each start
    from .engine import Replayer, ReplayResult


@dataclass
class ReplayRun:
    """What a replay did: where its files are, the result, what the archive read saw."""

    out_dir: Path
    result: ReplayResult
    counts: dict[str, int]
    read: ReadStats
    report: Path
    influx_points: int = 0


def find_registry(data_dir: Path, explicit: Path | None, settings: Settings) -> Registry | None:
    """``--registry``, else the data dir's ``registry.csv`` (a demo keeps it there), else SESMON_REGISTRY."""
    for path in (explicit, data_dir / "registry.csv", settings.registry):
        if path is not None and Path(path).is_file():
            return Registry.load(path)
    return None


def _receivers(settings: Settings, registry: Registry | None) -> Any:
    """The alerts stage's resolver: the routing file's answer for the incident after each change
    (``alerts.publisher.AlertPublisher._receivers``, without its cache)."""
    from alerts.routing_file import RoutingWatcher

    table = RoutingWatcher.from_settings(settings).table

    def resolve(incident: Any) -> list[Any]:
        last = incident.timeline[-1].what if incident.timeline else ""
        unit = registry.get(incident.device_id) if registry is not None else None
        return table.receivers(
            incident.alert_view(),
            unit,
            escalation=incident.escalation,
            sla_breach=incident.sla_breach and last == "sla_breach",
            accident=incident.accident and not incident.followup and last == "accident",
        )

    return resolve


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def run_replay(
    settings: Settings,
    target: Target,
    window: Window,
    *,
    data_dir: Path,
    out_dir: Path,
    registry: Registry | None = None,
    speed: float | None = None,
    influx_url: str | None = None,
    run_id: str | None = None,
    progress: Any = None,
    archive_dir: Path | None = None,
    jobs: int | None = None,
) -> ReplayRun:
    """The whole replay: read the archive, re-run, write OUT (and InfluxDB when asked).

    ``jobs``: worker processes (None: the number of cores, when the archive is big enough to
    gain from them; 1: in this process)."""
    from .engine import CatalogueSchedule, Replayer
    from .output import write_influx, write_jsonl
    from .report import audit_findings, render_report

    if _inside(out_dir, data_dir):
        raise SelectionError(
            f"--out {out_dir} is inside the data dir {data_dir}: a replay never writes there"
        )
    devices: frozenset[str]
    if target.mode == "district":
        if registry is None:
            raise SelectionError(
                "--district needs the registry (--registry, or registry.csv in the data dir)"
            )
        devices = frozenset(u.device_id for u in registry if u.district == target.ident)
        if not devices:
            raise SelectionError(f"no unit of the registry is in district {target.ident!r}")
    else:
        assert target.device_id is not None
        devices = frozenset({target.device_id})
    archive = archive_dir or default_archive_dir(data_dir)
    if not archive.is_dir():
        raise SelectionError(f"no archive at {archive} (is SESMON_ARCHIVE on for this data dir?)")
    replay_settings = settings.model_copy(update={"data_dir": data_dir})
    workers, sizes = _jobs(jobs, devices, speed, progress, archive, window)
    # every unit's samples only for the replay board; the report plots three, read again at the end
    keep_signals = influx_url is not None or len(devices) <= PLOTTED_UNITS
    if workers > 1:
        from .parallel import replay_parallel

        parallel = replay_parallel(
            replay_settings,
            target=target,
            window=window,
            registry=registry,
            data_dir=data_dir,
            archive_dir=archive,
            devices=devices,
            jobs=workers,
            resolver=_receivers(replay_settings, registry),
            keep_signals=keep_signals,
            sizes=sizes,
        )
        result, read, replayer = parallel.result, parallel.read, parallel.parent
    else:
        replayer = Replayer(
            replay_settings,
            target=target,
            window=window,
            registry=registry,
            catalogues=CatalogueSchedule.load(data_dir),
            resolver=_receivers(replay_settings, registry),
            devices=devices,
            speed=speed,
            progress=progress,
            keep_signals=keep_signals,
        )
        read = ReadStats()
        messages = iter_archive(
            archive, start_ms=window.warmup_ms, end_ms=window.cap_ms, devices=set(devices), stats=read
        )
        result = replayer.run(messages)
    if not keep_signals:
        result.signals = _plotted_signals(replayer, archive, window, devices)
    counts = write_jsonl(result, out_dir)
    change_ids = [p["change_id"] for p in _window_pages(result)]
    alert_ids = {p["alert_id"] for p in _window_pages(result)}
    audit = audit_findings(data_dir, alert_ids, change_ids)
    report = render_report(result, out_dir, data_dir=data_dir, audit=audit, counts=counts)
    run = ReplayRun(out_dir, result, counts, read, report)
    if influx_url:
        from store.wire import InfluxWriter

        writer = InfluxWriter(settings.model_copy(update={"influx_url": influx_url}))
        try:
            run.influx_points = write_influx(result, run_id or default_run_id(target, window), writer)
        finally:
            writer.close()
    return run


def _plotted_signals(
    replayer: Replayer, archive: Path, window: Window, devices: frozenset[str]
) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """The samples of the units the report plots (``report.plot_devices``), each chosen unit's
    archive read a second time (``Replayer.signals_of``)."""
    from .report import plot_devices

    samples: dict[str, list[tuple[int, dict[str, Any]]]] = {}

    def read(device: str) -> bool:
        samples[device] = replayer.signals_of(
            iter_archive(
                archive,
                start_ms=window.warmup_ms,
                end_ms=window.cap_ms,
                devices={device},
                include_dispatch=False,
                include_reports=False,
                include_unknown=False,
            )
        )
        return bool(samples[device])

    return {device: samples[device] for device in plot_devices(replayer.result, devices, read)}


def _jobs(
    jobs: int | None,
    devices: frozenset[str],
    speed: float | None,
    progress: Any,
    archive: Path,
    window: Window,
) -> tuple[int, dict[str, int] | None]:
    """How many worker processes: never more than units; one when paced (``--speed``) or when the
    archive is too small for workers to pay for their start (``jobs`` None only). With them, the
    units' archive sizes when they were read for that (the split reuses them)."""
    from .parallel import MIN_PARALLEL_BYTES, default_jobs

    if speed or progress is not None or len(devices) < 2:
        return 1, None
    if jobs is not None:
        return max(1, min(jobs, len(devices))), None
    wanted = min(default_jobs(), len(devices))
    if wanted < 2:
        return 1, None
    from sesmon.contract.archive import partition_bytes

    sizes = partition_bytes(archive, devices, start_ms=window.warmup_ms, end_ms=window.cap_ms)
    return (wanted, sizes) if sum(sizes.values()) >= MIN_PARALLEL_BYTES else (1, None)


def _window_pages(result: ReplayResult) -> list[dict[str, Any]]:
    from .output import in_window

    return in_window(result)[0]


def default_run_id(target: Target, window: Window) -> str:
    """The same request gives the same run tag: a repeated replay overwrites its own points."""
    return f"{target.mode}:{target.ident}:{window.start_ms}"


def select(args: argparse.Namespace) -> tuple[Target, Window]:
    """The request's target and window from the command line."""
    warmup = args.warmup
    if args.alert or args.hazard:
        target = parse_alert_id(args.alert) if args.alert else parse_hazard_id(args.hazard)
        assert target.anchor_ms is not None
        window = incident_window(
            target.anchor_ms,
            before_s=args.before,
            after_s=args.after,
            max_after_s=args.max_after,
            warmup_s=warmup,
        )
        return target, window
    if args.from_ is None or args.to is None:
        raise SelectionError("--unit and --district need --from and --to")
    window = span_window(parse_time(args.from_), parse_time(args.to), warmup_s=warmup)
    if args.unit:
        return Target("unit", args.unit, args.unit), window
    return Target("district", args.district), window


def _progress(result: ReplayResult, wall: int) -> None:
    moment = local_datetime(wall).strftime("%Y-%m-%d %H:%M:%S")
    line = (
        f"\rreplay {moment}  messages {result.stats.get('messages', 0)}  readings {result.readings}"
        f"  alert changes {len(result.rule_alerts)}  pages {len(result.pages)}  "
    )
    sys.stderr.write(line)
    sys.stderr.flush()


def cmd_replay(args: argparse.Namespace) -> int:
    settings = Settings()
    data_dir = (args.data_dir or settings.data_dir).resolve()
    try:
        target, window = select(args)
        registry = find_registry(data_dir, args.registry, settings)
        archive_dir = None if args.data_dir else settings.archive_dir
        run = run_replay(
            settings,
            target,
            window,
            data_dir=data_dir,
            out_dir=args.out,
            registry=registry,
            speed=args.speed,
            influx_url=args.influx_url,
            run_id=args.run,
            progress=_progress if args.speed else None,
            archive_dir=archive_dir,
            jobs=args.jobs,
        )
    except (SelectionError, LookupError) as exc:
        print(f"sesmon replay: {exc}", file=sys.stderr)
        return 2
    if args.speed:
        sys.stderr.write("\n")
    result = run.result
    print(
        f"replayed {result.stats.get('messages', 0)} messages ({result.readings} readings) "
        f"{local_datetime(window.start_ms):%Y-%m-%d %H:%M:%S} — {local_datetime(result.end_ms):%H:%M:%S}: "
        + ", ".join(f"{name} {n}" for name, n in run.counts.items())
    )
    print(f"report: {run.report}")
    if run.influx_points:
        print(f"InfluxDB: {run.influx_points} points, run={args.run or default_run_id(target, window)}")
    missing = [n for n in result.notes if n.startswith("the replay did not reproduce")]
    for note in missing:
        print(f"sesmon replay: {note} (see the report's notes)", file=sys.stderr)
    with run.report.open(encoding="utf-8") as report:
        first = report.readline()
    if "BROKEN" in first:
        print(f"sesmon replay: {first.strip('<!-> ')}", file=sys.stderr)
        return 1
    return 3 if missing else 0


def register(sub: Any) -> None:
    """``sesmon replay`` on the main command's subparsers."""
    parser = sub.add_parser(
        "replay",
        help="re-run an archived incident, unit or district through the rules and response loop of the time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--alert", metavar="ALERT_ID", help="an incident: {device_id}.{rule}.{opened_ms}")
    what.add_argument(
        "--hazard", metavar="HAZARD_ID", help="a hidden danger: HZ.{device_id}.{source}.{opened_ms}"
    )
    what.add_argument("--unit", metavar="DEVICE_ID", help="one unit over --from .. --to")
    what.add_argument("--district", metavar="NAME", help="a district's units over --from .. --to")
    parser.add_argument(
        "--from", dest="from_", metavar="T", help="epoch ms, ISO 8601 (local if no offset) or date"
    )
    parser.add_argument("--to", metavar="T")
    parser.add_argument("--data-dir", type=Path, default=None, help="the live data dir or a demo's state dir")
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (never inside the data dir)"
    )
    parser.add_argument(
        "--registry", type=Path, default=None, help="default: <data dir>/registry.csv, SESMON_REGISTRY"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        metavar="N",
        help="N x real time with a progress line (default: flat out)",
    )
    parser.add_argument(
        "--influx-url", default=None, help="also write replay_* points (tag run) to this InfluxDB"
    )
    parser.add_argument("--run", default=None, help="the run tag (default: derived from the request)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="processes for a district (default: the number of cores; 1: one process; same output)",
    )
    parser.add_argument(
        "--before", type=float, default=MIN_MARGIN_S, help="seconds before the incident (>= 120)"
    )
    parser.add_argument("--after", type=float, default=MIN_MARGIN_S, help="seconds after its end (>= 120)")
    parser.add_argument(
        "--max-after", type=float, default=3 * 3600, help="seconds replayed at most after the incident opened"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        metavar="S",
        help="build state from S seconds before the window (default: from local midnight, at least 1 h)",
    )
    parser.set_defaults(func=cmd_replay)


__all__ = ["ReplayRun", "cmd_replay", "default_run_id", "find_registry", "register", "run_replay", "select"]
