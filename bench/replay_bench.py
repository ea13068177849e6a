"""Replay throughput (issue 12: >= 50,000 archived readings/s as fast as possible).

Writes a synthetic archive in the format ingest writes (``sesmon.contract.archive``: one gzip
JSON-lines file per unit and local day), a registry and the catalogue version, then times
``sesmon replay --district`` over it: reading the archive, re-parsing every payload with ingest's
validation, the rules with fresh state, the response loop. Prints readings/s for the replay
engine alone (archive -> decisions) and for the whole command (with the JSONL files and the
report). ``--parts`` times each part of a reading alone (archive read, ingest's validation, the
rules; CPU µs per reading, median of the runs), ``--profile`` prints where the engine's time goes.
``--jobs N`` (default: as ``sesmon replay``, the number of cores) also times the engine over N
worker processes (``replay.parallel``), after the one-process run.
The machine is shared: CPU time per reading (``time.process_time``, summed over the parent and
its workers) is the steadier figure; wall readings/s depends on what else runs.

    python bench/replay_bench.py [--units 200] [--readings 500] [--runs 3] [--jobs N] [--parts] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replay.cli import run_replay
from replay.engine import CatalogueSchedule, Replayer
from replay.parallel import default_jobs, replay_parallel
from replay.window import Target, span_window
from rules import RuleEngine
from rules.catalogue import load_catalogue
from rules.catalogue_store import store_catalogue
from rules.testing import elevator
from sesmon.contract.archive import (
    archive_line,
    day_name,
    default_archive_dir,
    device_partition,
    gzip_member,
    iter_archive,
    partition_path,
)
from sesmon.contract.fast_envelope import device_envelope_text
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.settings import Settings

T0 = 1_795_300_000_000  # 2026-11-22 06:26:40 Guangzhou time: one local day holds the whole run
DISTRICT = "天河"


def write_archive(data: Path, units: int, readings: int, every_ms: int = 2000) -> int:
    """``units`` elevators, ``readings`` telemetry readings each (a trapped passenger on every 50th)."""
    fleet = [elevator(f"GZBENCH{n:05d}", district=DISTRICT) for n in range(units)]
    write_registry(fleet, data / "registry.csv")
    store_catalogue(data, load_catalogue(None), loaded_at_ms=T0 - 86_400_000)
    archive = default_archive_dir(data)
    seq = 0
    for n, unit in enumerate(fleet):
        lines = []
        trapped = n % 50 == 0
        for i in range(readings):
            ts = T0 + i * every_ms + n
            inside = trapped and readings // 3 <= i < readings // 2
            body = {
                "device_id": unit.device_id,
                "ts": ts,
                "seq": i,
                "mode": "normal",
                "moving": not inside and i % 7 < 3,
                "direction": "up" if i % 7 < 3 else "none",
                "floor": i % 12,
                "door_zone": True,
                "door": "closed" if inside or i % 7 < 4 else "open",
                "speed_mps": 1.0 if i % 7 < 3 else 0.0,
                "load_pct": (i * 7) % 80,
                "occupied": inside or i % 5 == 0,
            }
            topic = f"sesmon/v1/elevator/{unit.device_id}/telemetry".encode()
            seq += 1
            lines.append(
                archive_line(
                    received_ms=ts + 250,
                    seq=seq,
                    writer="bench",
                    topic=topic,
                    payload=orjson.dumps(body),
                    verdict="ok",
                    ts=ts,
                )
            )
        path = partition_path(archive, day_name(T0), device_partition(unit.device_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip_member(lines))
    return units * readings


def engine_only(data: Path, end_ms: int, jobs: int = 1) -> tuple[float, float, int]:
    """Archive -> parse -> rules -> response loop, no files written: (wall s, CPU s of every
    process, readings)."""
    settings = Settings(data_dir=data)
    registry = Registry.load(data / "registry.csv")
    window = span_window(T0, end_ms, warmup_s=0)
    devices = frozenset(u.device_id for u in registry)
    if jobs > 1:
        started, cpu = time.perf_counter(), time.process_time()
        run = replay_parallel(
            settings,
            target=Target("district", DISTRICT),
            window=window,
            registry=registry,
            data_dir=data,
            archive_dir=data / "archive",
            devices=devices,
            jobs=jobs,
            keep_signals=False,
        )
        wall = time.perf_counter() - started
        return wall, time.process_time() - cpu + run.worker_cpu_s, run.result.readings
    replayer = Replayer(
        settings,
        target=Target("district", DISTRICT),
        window=window,
        registry=registry,
        catalogues=CatalogueSchedule.load(data),
        devices=devices,
        keep_signals=False,
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = replayer.run(iter_archive(data / "archive", start_ms=T0, end_ms=end_ms, devices=set(devices)))
    return time.perf_counter() - started, time.process_time() - cpu, result.readings


def parts(data: Path, end_ms: int, runs: int) -> dict[str, float]:
    """CPU µs per reading of each part alone (median of ``runs``): what the engine's loop adds is the rest."""

    def cpu(work: Callable[[], object]) -> float:
        times = []
        for _ in range(runs):
            started = time.process_time()
            work()
            times.append(time.process_time() - started)
        return statistics.median(times)

    messages = list(iter_archive(data / "archive", start_ms=T0, end_ms=end_ms))
    count = len(messages)
    read = cpu(lambda: list(iter_archive(data / "archive", start_ms=T0, end_ms=end_ms)))
    inputs = [(m.topic, m.payload, m.received_ms) for m in messages]  # the archive's text, as the replay
    envelopes: list[Any] = []

    def validate() -> None:
        envelopes[:] = [device_envelope_text(t, p, r) for t, p, r in inputs]

    envelope = cpu(validate)
    units = {u.device_id: u for u in Registry.load(data / "registry.csv")}

    def rules() -> None:
        engine, states = RuleEngine(), {}
        for env in envelopes:
            device_id = env["device_id"]
            states[device_id] = engine.process(states.get(device_id), env, units[device_id]).state

    rule = cpu(rules)
    return {
        "archive read": read / count * 1e6,
        "validation": envelope / count * 1e6,
        "rules": rule / count * 1e6,
    }


def forkserver_cpu() -> float | None:
    """CPU seconds of the forkserver (its one-off imports), when this process started one."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    with contextlib.suppress(OSError, ValueError, TypeError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def whole_command(data: Path, out: Path, end_ms: int, jobs: int) -> tuple[float, int]:
    settings = Settings(data_dir=data)
    started = time.perf_counter()
    run = run_replay(
        settings,
        Target("district", DISTRICT),
        span_window(T0, end_ms, warmup_s=0),
        data_dir=data,
        out_dir=out,
        registry=Registry.load(data / "registry.csv"),
        jobs=jobs,
    )
    return time.perf_counter() - started, run.result.readings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--readings", type=int, default=500, help="telemetry readings per unit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--jobs", type=int, default=default_jobs(), help="worker processes (default: the number of cores)"
    )
    parser.add_argument("--parts", action="store_true", help="time each part of a reading alone")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        total = write_archive(data, args.units, args.readings)
        took = time.perf_counter() - started
        print(f"archive: {total:,} readings of {args.units} units written in {took:.1f} s")
        end_ms = T0 + args.readings * 2000 + args.units
        medians: dict[int, float] = {}
        for jobs in sorted({1, args.jobs}):
            rates, cpu_rates, cpu_us = [], [], []
            for run in range(args.runs):
                seconds, cpu, readings = engine_only(data, end_ms, jobs)
                assert readings == total, (readings, total)
                rates.append(readings / seconds)
                cpu_rates.append(readings / cpu)
                cpu_us.append(cpu / readings * 1e6)
                print(
                    f"engine --jobs {jobs} run {run + 1}: {readings:,} readings in {seconds:.2f} s = "
                    f"{readings / seconds:,.0f} readings/s ({cpu:.2f} s of CPU in all processes: "
                    f"{cpu / readings * 1e6:.1f} µs a reading)"
                )
            medians[jobs] = statistics.median(cpu_us)
            print(
                f"engine --jobs {jobs} median: {statistics.median(rates):,.0f} readings/s wall, "
                f"{statistics.median(cpu_us):.1f} µs of CPU a reading in all processes "
                f"({statistics.median(cpu_rates):,.0f} per CPU second; target 50,000/s wall)"
            )
        once = forkserver_cpu()
        if once is not None:
            print(f"forkserver (started once, imports the replay): {once:.2f} s of CPU, not counted above")
        cpu_us = [medians[1]]
        if args.parts:
            alone = parts(data, end_ms, args.runs)
            rest = statistics.median(cpu_us) - sum(alone.values())
            print(
                "CPU µs a reading, each part alone: "
                + ", ".join(f"{name} {us:.1f}" for name, us in alone.items())
                + f"; the engine's own loop (the rest) {rest:.1f}"
            )
        seconds, readings = whole_command(data, Path(tmp) / "out", end_ms, args.jobs)
        rate = readings / seconds
        print(
            f"whole command --jobs {args.jobs} (jsonl + report): {readings:,} readings in {seconds:.2f} s "
            f"= {rate:,.0f}/s"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            engine_only(data, end_ms)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
