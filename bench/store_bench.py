"""Throughput of the InfluxDB sink into a local InfluxDB (Debian influxd 1.6.7, v1 /write).

Prints, per run and as the median of the runs, points/s and the write latency (one HTTP
write request of a batch: p50/p99 over the run's requests):

- **sink**: records as they lie on Kafka (simulator-shaped readings: 90 % elevators with 18
  fields, 10 % boilers with 14; ``--group N`` envelopes per record as ingest's fast path
  writes them, ``sesmon.contract.groups``, or ``--group 1`` one per record) → ``PointMaker`` →
  batches → the ``PointSink`` writer thread → InfluxDB, timed from the first record until the
  last point is acknowledged;
- **stage** (with ``--kafka``): the same through the whole ``sesmon store`` stage reading them
  from a Tansu broker, timed from the first record consumed (the consumer-group join, ~5 s on
  Tansu, is left out) until all are acknowledged;
- **raw /write**: the yardstick in the same run: the same points pre-built as line protocol,
  POSTed in batches of the same size over one connection;
- **encoder**: line protocol built with ``store.lineproto.encode`` vs influxdb-client ``Point``
  (conversion only, no I/O).

With ``--shape small`` each reading carries 4 fields instead of 18 (InfluxDB's cost grows with
the fields: 1.6.7 spends about 60 µs of CPU on an 18-field point here).

Usage: python bench/store_bench.py [--points 200000] [--batch 5000] [--runs 3] [--kafka] [--shape full|small]
                                   [--group 100]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import urllib3

from sesmon.contract.groups import encode_group, partition_of
from sesmon.runtime.kafka import ensure_topics, make_producer
from sesmon.runtime.services import start_influxdb, start_kafka
from sesmon.runtime.settings import Settings
from store.lineproto import encode, to_point
from store.points import PointMaker
from store.sink import BatchBuilder, PointSink, StoreStage
from store.spool import Spool
from store.wire import InfluxWriter, query

T0 = 1_800_000_000_000
DISTRICTS = ("越秀", "海珠", "荔湾", "天河", "白云", "黄埔", "番禺", "花都", "南沙", "从化", "增城")
PARTITIONS = 2

#: one Kafka record: (partition, key, value)
Record = tuple[int, bytes | None, bytes]


def envelopes(n: int, units: int = 2000, seed: int = 1, shape: str = "full") -> list[tuple[bytes, bytes]]:
    """Readings shaped like the simulator's (simulators/elevator.py, boiler.py), 1 s apart per unit;
    ``small``: two readings per message (4 fields with seq and received_ms, as stack.md §4 measured).
    Returns (device_id, envelope) pairs."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        unit = i % units
        ts = T0 + (i // units) * 1000 + unit
        if unit % 10:
            device, kind = f"E{unit:05d}", "elevator"
            moving = rnd.random() < 0.3
            body = {
                "mode": "normal",
                "moving": moving,
                "direction": rnd.choice(("up", "down")) if moving else "none",
                "floor": rnd.randint(1, 30),
                "door_zone": not moving,
                "door": "closed" if moving else "open",
                "speed_mps": round(rnd.uniform(0.5, 2.5), 2) if moving else 0.0,
                "load_pct": round(rnd.uniform(0, 80), 1),
                "occupied": rnd.random() < 0.5,
                "safety_circuit_open": False,
                "door_lock_circuit_open": False,
                "power": "mains",
                "up_limit": False,
                "down_limit": False,
                "run_count": 10_000 + i,
                "door_cycles": 20_000 + i,
            }
        else:
            device, kind = f"B{unit:05d}", "boiler"
            body = {
                "pressure_mpa": round(rnd.uniform(0.8, 1.2), 3),
                "water_level_mm": round(rnd.uniform(-30, 30), 1),
                "steam_temp_c": round(rnd.uniform(180, 190), 1),
                "feedwater_temp_c": 104.0,
                "steam_flow_tph": round(rnd.uniform(4, 8), 2),
                "feedwater_flow_tph": round(rnd.uniform(4, 8), 2),
                "flue_gas_temp_c": round(rnd.uniform(140, 170), 1),
                "o2_pct": round(rnd.uniform(3, 5), 2),
                "fuel_flow_nm3h": round(rnd.uniform(300, 600), 1),
                "burner": "high_fire",
            }
        if shape == "small":
            body = dict(list(body.items())[2:4])
        body = {"device_id": device, "ts": ts, "seq": i, **body}
        env = {
            "type": "telemetry",
            "kind": kind,
            "device_id": device,
            "mqtt_topic": f"sesmon/v1/{kind}/{device}/telemetry",
            "received_ms": ts + 150,
            "ts": ts,
            "seq": i,
            "body": body,
        }
        out.append((device.encode(), orjson.dumps(env)))
    return out


def to_records(items: list[tuple[bytes, bytes]], group: int) -> list[Record]:
    """Kafka records as ingest writes them: ``group`` envelopes of one partition per record
    (``partition_of``, flushed when full and at the end), or one envelope per record (``group`` 1)."""
    if group <= 1:
        return [(partition_of(key, PARTITIONS), key, value) for key, value in items]
    records: list[Record] = []
    open_groups: dict[int, list[bytes]] = {}
    for key, value in items:
        partition = partition_of(key, PARTITIONS)
        values = open_groups.setdefault(partition, [])
        values.append(value)
        if len(values) >= group:
            records.append((partition, None, encode_group(open_groups.pop(partition))))
    records += [(partition, None, encode_group(values)) for partition, values in open_groups.items()]
    return records


def place(device_id: str) -> tuple[str, str]:
    unit = int(device_id[1:])
    return DISTRICTS[unit % len(DISTRICTS)], f"F{unit % 40:02d}"


def count_points(url: str, db: str, measurement: str) -> int:
    answer = query(url, f"SELECT count(received_ms) FROM {measurement}", db)
    series = answer["results"][0].get("series") or [{"values": [[0, 0]]}]
    return int(series[0]["values"][0][1])


class TimedWriter(InfluxWriter):
    """The sink's writer, timing each write request (seconds, appended to ``latencies``)."""

    def __init__(self, settings: Settings, latencies: list[float]) -> None:
        super().__init__(settings)
        self.latencies = latencies

    def write(self, body: bytes) -> None:
        started = time.perf_counter()
        super().write(body)
        self.latencies.append(time.perf_counter() - started)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU microseconds per point of this process (client) and of influxd over a phase.

    Why: on a shared 2-core machine wall-clock rates swing with other people's load; the CPU
    each side spends per point does not, and says what the cores could carry.
    """

    def __init__(self, influxd_pid: int) -> None:
        self.influxd_pid = influxd_pid
        self.per_point: dict[str, list[tuple[float, float]]] = {}

    @contextlib.contextmanager
    def measure(self, phase: str, points: int) -> Iterator[None]:
        client, server = time.process_time(), process_cpu_s(self.influxd_pid)
        yield
        client = (time.process_time() - client) * 1e6 / points
        server = (process_cpu_s(self.influxd_pid) - server) * 1e6 / points
        self.per_point.setdefault(phase, []).append((client, server))


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def sink_run(
    url: str, work: Path, records: list[Record], points: int, batch: int, tag: str, latencies: list[float]
) -> float:
    settings = Settings(influx_url=url, influx_db=f"sink{tag}", data_dir=work)
    counters: Counter[str] = Counter()
    writer = TimedWriter(settings, latencies)
    sink = PointSink(writer, Spool(work / f"spool{tag}", 1 << 40), 10**9, counters).start()
    maker, builder = PointMaker(place), BatchBuilder(batch, 1.0)
    sink.writer.connect()  # the database exists before the clock starts
    started = time.perf_counter()
    for offset, (partition, _key, value) in enumerate(records):
        builder.add(maker.record_lines("telemetry", value).lines, "telemetry", partition, offset)
        if builder.full:
            sink.submit(builder.take())  # type: ignore[arg-type]
    last = builder.take()
    if last is not None:
        sink.submit(last)
    while counters["written_points"] < points:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    sink.stop()
    stored = count_points(url, settings.influx_db, "elevator") + count_points(
        url, settings.influx_db, "boiler"
    )
    assert stored == points, f"sink stored {stored} of {points}"
    return points / elapsed


def stage_run(
    url: str, kafka_port: int, work: Path, records: list[Record], points: int, batch: int, tag: str
) -> float:
    settings = Settings(
        kafka_url=f"127.0.0.1:{kafka_port}",
        influx_url=url,
        influx_db=f"stage{tag}",
        data_dir=work / f"stage{tag}",
        topic_prefix=f"bench{tag}",
        kafka_partitions=PARTITIONS,
        store_batch_points=batch,
        stats_every_s=5.0,
    )
    ensure_topics(settings)
    producer = make_producer(settings, **{"linger.ms": 50})
    for partition, key, value in records:
        while True:
            try:
                producer.produce(settings.topic("telemetry"), value=value, key=key, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    stage = StoreStage(settings)
    stage.maker = PointMaker(place)
    thread = threading.Thread(target=stage.run_forever, daemon=True)
    thread.start()
    while stage.counters["records_telemetry"] == 0:
        time.sleep(0.001)
    started = time.perf_counter()
    while (
        stage.counters["records_telemetry"] < len(records) or not stage.sink.drained or stage.builder.offsets
    ):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    stage.stop()
    thread.join(60)
    stored = count_points(url, settings.influx_db, "elevator") + count_points(
        url, settings.influx_db, "boiler"
    )
    assert stored == points, f"stage stored {stored} of {points}"
    assert stage.counters["envelopes_telemetry"] == points, stage.counters
    return points / elapsed


def raw_run(url: str, bodies: list[bytes], points: int, tag: str, latencies: list[float]) -> float:
    """The yardstick: the same lines, pre-built, POSTed batch after batch through the same HTTP client."""
    pool = urllib3.PoolManager(maxsize=1)
    pool.request("POST", f"{url}/query", fields={"q": f'CREATE DATABASE "raw{tag}"'})
    started = time.perf_counter()
    for body in bodies:
        sent = time.perf_counter()
        response = pool.request("POST", f"{url}/write?db=raw{tag}&precision=ms", body=body)
        latencies.append(time.perf_counter() - sent)
        assert response.status == 204, response.data
    return points / (time.perf_counter() - started)


def encoder_rates(values: list[bytes]) -> tuple[float, float]:
    maker = PointMaker(place)
    captured: list[tuple[str, dict, dict, int]] = []
    import store.points as points_module

    real_encode = points_module.encode
    points_module.encode = lambda m, t, f, ts, prefix=None: captured.append((m, dict(t), dict(f), ts)) or ""
    try:
        for value in values:
            device, first = orjson.loads(value)["device_id"], len(captured)
            maker.lines("telemetry", value)
            for i in range(first, len(captured)):  # the unit's tags (the maker passes its series prefix)
                m, _tags, f, ts = captured[i]
                captured[i] = (m, dict(maker._unit_tags(device)), f, ts)
    finally:
        points_module.encode = real_encode
    started = time.perf_counter()
    for m, t, f, ts in captured:
        encode(m, t, f, ts)
    fast = len(captured) / (time.perf_counter() - started)
    started = time.perf_counter()
    for m, t, f, ts in captured:
        to_point(m, t, f, ts).to_line_protocol()
    return fast, len(captured) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kafka", action="store_true", help="also run the whole stage reading from Tansu")
    parser.add_argument("--shape", choices=("full", "small"), default="full", help="fields per reading")
    parser.add_argument(
        "--group",
        type=int,
        default=100,
        help="envelopes per Kafka record, as ingest groups them (1: one each)",
    )
    args = parser.parse_args()

    items = envelopes(args.points, shape=args.shape)
    values = [value for _key, value in items]
    records = to_records(items, args.group)
    maker = PointMaker(place)
    lines = [line for v in values for line in maker.lines("telemetry", v)]
    bodies = [
        ("\n".join(lines[i : i + args.batch]) + "\n").encode() for i in range(0, len(lines), args.batch)
    ]
    print(
        f"{args.points} points ({sum(map(len, bodies)) / len(lines):.0f} bytes of line protocol each), "
        f"batches of {args.batch}; {len(records)} Kafka records ({args.points / len(records):.0f} per record)"
    )
    fast, slow = encoder_rates(values[:50_000])
    print(f"encoder: store.lineproto {fast:,.0f} points/s, influxdb-client Point {slow:,.0f} points/s")

    results: dict[str, list[float]] = {"sink": [], "raw /write": []}
    latencies: dict[str, list[float]] = {"sink": [], "raw /write": []}
    if args.kafka:
        results["stage (Kafka)"] = []
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        work = Path(tmp)
        (work / "influx").mkdir()
        influx = start_influxdb(work / "influx")
        kafka = start_kafka(work) if args.kafka else None
        url = f"http://127.0.0.1:{influx.port}"
        assert influx.proc is not None
        cpu = CpuMeter(influx.proc.pid)
        try:
            for run in range(1, args.runs + 1):
                with cpu.measure("raw /write", len(lines)):
                    results["raw /write"].append(
                        raw_run(url, bodies, len(lines), str(run), latencies["raw /write"])
                    )
                with cpu.measure("sink", args.points):
                    results["sink"].append(
                        sink_run(url, work, records, args.points, args.batch, str(run), latencies["sink"])
                    )
                if kafka is not None:
                    results["stage (Kafka)"].append(
                        stage_run(url, kafka.port, work, records, args.points, args.batch, str(run))
                    )
                print(f"run {run}: " + ", ".join(f"{k} {v[-1]:,.0f} points/s" for k, v in results.items()))
        finally:
            if kafka is not None:
                kafka.stop()
            influx.stop()
    print("median: " + ", ".join(f"{k} {statistics.median(v):,.0f} points/s" for k, v in results.items()))
    for name, values in latencies.items():
        ms = [v * 1000 for v in values]
        print(
            f"write latency ({name}, {len(ms)} requests of {args.batch} points): "
            f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms"
        )
    cores = os.cpu_count() or 1
    for name, runs in cpu.per_point.items():
        client = statistics.median(c for c, _ in runs)
        server = statistics.median(s for _, s in runs)
        print(
            f"CPU per point ({name}, median): this process {client:.1f} µs, influxd {server:.1f} µs "
            f"-> {cores} cores carry at most {cores * 1e6 / (client + server):,.0f} points/s"
        )


if __name__ == "__main__":
    main()
