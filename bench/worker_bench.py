"""The Faust worker alone on a prefilled topic: readings/s for one and for two workers.

The telemetry topic is filled first with grouped records (as ingest's fast path writes them,
``sesmon.contract.groups``), then ``sesmon worker`` process(es) start in one consumer group and
evaluate it all; the rate is taken from the workers' own ``pipeline`` counters (``processed``),
from the first record evaluated to the last, so Faust's start-up is not counted.

Usage: python bench/worker_bench.py [--readings 400000] [--group 100] [--workers 1,2]

Each worker gets its own state directory (RocksDB), as on separate machines; on this 2-core
machine two workers means one per core, with Tansu sharing them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from sesmon.contract.groups import GROUP_COUNT_HEADER, encode_group, partition_of
from sesmon.contract.registry import write_registry
from sesmon.runtime.kafka import ensure_topics, make_consumer, make_producer
from sesmon.runtime.services import EmbeddedServices
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet


def prefill(settings: Settings, device_ids: list[str], readings: int, group: int) -> int:
    """Write ``readings`` running-elevator readings, ``group`` per record; returns records written."""
    producer = make_producer(settings)
    topic = settings.topic("telemetry")
    base = int(time.time() * 1000) - 60_000
    open_groups: dict[int, list[bytes]] = {}
    records = 0

    def flush(partition: int) -> None:
        nonlocal records
        items = open_groups.pop(partition)
        headers = [(GROUP_COUNT_HEADER, str(len(items)).encode())]
        producer.produce(topic, encode_group(items), partition=partition, headers=headers)
        producer.poll(0)
        records += 1

    for i in range(readings):
        device = device_ids[i % len(device_ids)]
        ts = base + i // 10  # 10 readings per ms of device time: the topic spans readings/10 ms
        seq = 100 + i // len(device_ids)
        body = {"device_id": device, "ts": ts, "seq": seq, "moving": True, "door": "closed", "speed_mps": 0.9}
        envelope = {
            "type": "telemetry",
            "kind": "elevator",
            "device_id": device,
            "ts": ts,
            "seq": seq,
            "received_ms": ts,
            "mqtt_topic": f"sesmon/v1/elevator/{device}/telemetry",
            "body": body,
        }
        partition = partition_of(device.encode(), settings.kafka_partitions)
        open_groups.setdefault(partition, []).append(orjson.dumps(envelope))
        if len(open_groups[partition]) >= group:
            flush(partition)
    for partition in list(open_groups):
        flush(partition)
    producer.flush(120)
    return records


def run_workers(settings: Settings, env: dict[str, str], work: Path, count: int, readings: int) -> dict:
    """Start ``count`` workers (fresh consumer group), wait until they evaluated everything."""
    app_id = f"bench-worker-{count}-{time.monotonic_ns()}"
    procs = []
    for n in range(count):
        data_dir = work / f"state-{app_id}-{n}"
        worker_env = {**os.environ, **env, "SESMON_FAUST_APP_ID": app_id, "SESMON_DATA_DIR": str(data_dir)}
        log = (work / f"{app_id}-{n}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "sesmon.app.cli", "worker"],
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    consumer = make_consumer(settings, f"{app_id}-stats", ["pipeline"], **{"auto.offset.reset": "latest"})
    per_worker: dict[int, tuple[float, int]] = {}  # pid -> (time, processed), the latest
    first: float | None = None
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            for record in consumer.consume(200, 0.5):
                if record.error():
                    continue
                stats = orjson.loads(record.value())
                if stats.get("stage") != "streams" or stats.get("health", {}).get("pid") not in {
                    p.pid for p in procs
                }:
                    continue
                processed = int(stats.get("processed", 0))
                if processed and first is None:
                    first = time.monotonic()
                per_worker[stats["health"]["pid"]] = (time.monotonic(), processed)
            total = sum(p for _, p in per_worker.values())
            if total >= readings:
                break
        done = max(t for t, _ in per_worker.values())
        total = sum(p for _, p in per_worker.values())
        cpu = []
        for proc in procs:
            out = subprocess.run(
                ["ps", "-o", "rss=,cputime=", "-p", str(proc.pid)], capture_output=True, text=True
            )
            cpu.append(out.stdout.strip())
        assert first is not None
        return {
            "workers": count,
            "processed": total,
            "rate": total / max(done - first, 1e-3),
            "shares": sorted(p for _, p in per_worker.values()),
            "rss_kb_cpu": cpu,
        }
    finally:
        consumer.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=400_000)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--group", type=int, default=100, help="readings per Kafka record")
    parser.add_argument("--workers", default="1", help="comma-separated worker counts to run in turn")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sesmon-worker-bench-"))
    units = generate_fleet(args.units, 0, seed=5)
    registry = work / "registry.csv"
    write_registry(units, registry)
    with EmbeddedServices(work / "servers") as services:
        settings = Settings(mqtt_url=services.mqtt_url, kafka_url=services.kafka_url, data_dir=work / "state")
        ensure_topics(settings)
        t0 = time.perf_counter()
        records = prefill(
            settings, [u.device_id for u in units if u.kind == "elevator"], args.readings, args.group
        )
        print(
            f"prefilled {args.readings:,} readings as {records:,} records "
            f"({args.readings / records:.0f} per record) in {time.perf_counter() - t0:.1f} s"
        )
        env = {**services.env(), "SESMON_REGISTRY": str(registry)}
        results = [run_workers(settings, env, work, int(n), args.readings) for n in args.workers.split(",")]
    for r in results:
        print(
            f"{r['workers']} worker(s): {r['processed']:,} readings at {r['rate']:,.0f} readings/s; "
            f"shares {r['shares']}; rss kB / cpu {r['rss_kb_cpu']}"
        )
    if len(results) > 1:
        ratio = results[-1]["rate"] / results[0]["rate"]
        print(f"{results[-1]['workers']} workers / {results[0]['workers']}: {ratio:.2f}x")
    print(f"logs: {work}")


if __name__ == "__main__":
    main()
