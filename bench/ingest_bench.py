"""Ingest alone: QoS 1 readings over MQTT -> ``sesmon ingest`` -> Kafka, readings/s and CPU per 1,000.

What it runs: Tansu and mosquitto on loopback (mosquitto saving its store only every
``--autosave-changes`` changes, so the broker's disk writes do not set the pace), the real
``sesmon ingest`` process, and a paho QoS 1 publisher in its own process (``bench.e2e.Publisher``:
at most 10,000 PUBACKs owed). For each ``--group-max`` (default ``1,500``) a fresh set of topics:

- ``live``: the publisher sends ``--readings`` readings flat out while ingest runs; readings/s =
  readings / (ingest's last produced - first publish). Bounded by the publisher if ingest keeps up.
- ``backlog``: ingest subscribes (persistent session) and is stopped, the readings are published
  into its session, then ingest is started again: readings/s = readings / (time from the
  restarted process's first stats record to its last produced), i.e. ingest alone, not waiting
  for a publisher.

``--archive on,off,on,off`` alternates runs with and without the raw archive (issue 12:
``SESMON_ARCHIVE``), to measure what archiving adds per reading on a noisy machine; ``--repeat N``
runs the whole list N times (interleaved, so a busy spell of the machine hits both sides) and a
summary prints the medians and what the archive adds. Two CPU figures: ingest's own to the last
reading produced (what the archive adds to ingest's path), and to the process's exit (``wait4``),
which also counts stopping and the archive's folder process that ingest waits for (its start,
~0.3 s of imports, and its fold of every journal segment, the day's new unit files included: a
run of a few seconds spreads those over few readings).

``--group-max 1`` makes every reading its own Kafka record (one produce and one delivery report
per reading), as the bridge did before grouped records: the "before" figure. ``--mqtt-client``
picks ingest's receive path (``SESMON_INGEST_MQTT_CLIENT``: its own MQTT session, or paho). CPU
seconds are ingest's (utime + stime from /proc) over the measured span, per 1,000 readings.
Completion is read from ingest's ``pipeline`` counters (every 0.2 s) and checked against the
envelopes on Kafka.

``--parts N`` measures parts of ingest's cost per message in this process instead: the MQTT
receive path alone (N QoS 1 readings queued in a persistent session, drained and acked in the
callback, by paho and by ``ingest.mqtt_session``: CPU of this process per message), and
validation of one reading (``parse_mqtt`` + ``model_dump`` vs ``device_envelope``, timeit), and the
raw archive's parts (the journal on the receive path, and the folder: CPU per reading, best of 5).

Usage: python bench/ingest_bench.py [--readings 200000] [--units 2000] [--group-max 1,500]
                                    [--mode live,backlog] [--partitions 4] [--mqtt-client session,paho]
       python bench/ingest_bench.py --parts 50000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench.e2e import Publisher, StatsReader, proc_rss_cpu
from sesmon.contract.groups import envelopes_of
from sesmon.contract.registry import write_registry
from sesmon.runtime.kafka import ensure_topics, make_reader
from sesmon.runtime.services import start_kafka, start_mqtt
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet

T0_MS = 1_795_300_000_000  # fixed device clock
STATS_EVERY_S = 0.2


def readings(device_ids: list[str], count: int) -> list[tuple[str, bytes]]:
    """Elevator telemetry as the simulated fleet sends it (~250 bytes), round-robin over the units."""
    out = []
    for i in range(count):
        device = device_ids[i % len(device_ids)]
        body = {
            "device_id": device,
            "ts": T0_MS + i,
            "seq": i // len(device_ids),
            "mode": "normal",
            "moving": i % 3 == 0,
            "direction": "up",
            "floor": i % 20,
            "door_zone": True,
            "door": "closed",
            "speed_mps": 1.6,
            "load_pct": 35.0,
            "occupied": True,
            "safety_circuit_open": False,
        }
        out.append((f"sesmon/v1/elevator/{device}/telemetry", orjson.dumps(body)))
    return out


def publish(port: int, messages: list[tuple[str, bytes]], result: Any) -> None:
    """Child process: publish everything with QoS 1, wait for every PUBACK, report the start time."""
    pub = Publisher(port, f"ingest-bench-pub-{os.getpid()}")
    started = time.time()
    for topic, payload in messages:
        pub.publish(topic, payload)
    pub.flush(600)
    result.put((started, time.time()))
    pub.close()


def ingest_stats(stats: StatsReader, pid: int, predicate: Any, timeout: float) -> dict[str, Any]:
    """The ingest process's latest ``pipeline`` record, once ``predicate`` holds for it."""
    key = ("ingest", pid)
    stats.wait(lambda: predicate(stats.latest.get(key, {})), timeout, f"ingest {pid}")
    return stats.latest[key]


def start_ingest(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "sesmon.app.cli", "ingest"], env=env, stdout=log_file, stderr=log_file
        )


def stop_ingest(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """SIGTERM and reap; returns the process's whole CPU time (user + system seconds, from wait4)."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"ingest {proc.pid} did not stop in {timeout:.0f} s")
        time.sleep(0.02)


def count_envelopes(settings: Settings, expected: int, timeout: float = 120.0) -> tuple[int, int]:
    """(envelopes, records) on the telemetry topic."""
    reader = make_reader(settings, ["telemetry"])
    envelopes = records = 0
    deadline = time.monotonic() + timeout
    try:
        while envelopes < expected and time.monotonic() < deadline:
            for record in reader.consume(10_000, 0.5):
                if not record.error():
                    records += 1
                    envelopes += len(envelopes_of(record.value()))
    finally:
        reader.close()
    return envelopes, records


def run_one(
    kafka_port: int,
    mqtt_port: int,
    work: Path,
    registry: Path,
    device_ids: list[str],
    args: Any,
    group_max: int,
    mode: str,
    mqtt_client: str = "session",
    archive: str = "on",
) -> dict[str, Any]:
    tag = f"g{group_max}{mode}{time.monotonic_ns() % 10**8}"
    settings = Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
        kafka_url=f"127.0.0.1:{kafka_port}",
        data_dir=work / tag,
        topic_prefix=tag,
        mqtt_client_id=f"ingest-{tag}",
        kafka_partitions=args.partitions,
    )
    ensure_topics(settings)
    env = {
        **os.environ,
        "SESMON_MQTT_URL": settings.mqtt_url or "",
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_DATA_DIR": str(settings.data_dir),
        "SESMON_REGISTRY": str(registry),
        "SESMON_TOPIC_PREFIX": tag,
        "SESMON_MQTT_CLIENT_ID": settings.mqtt_client_id,
        "SESMON_KAFKA_PARTITIONS": str(args.partitions),
        "SESMON_STATS_EVERY_S": str(STATS_EVERY_S),
        "SESMON_INGEST_GROUP_MAX": str(group_max),
        "SESMON_INGEST_MQTT_CLIENT": mqtt_client,
        "SESMON_ARCHIVE": str(archive == "on").lower(),
    }
    stats = StatsReader(settings)
    messages = readings(device_ids, args.readings)
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    publisher = ctx.Process(target=publish, args=(mqtt_port, messages, result))
    log_path = work / f"{tag}.log"
    proc = start_ingest(env, log_path)
    try:
        ingest_stats(stats, proc.pid, lambda s: s.get("mqtt_connected"), 60)
        if mode == "backlog":
            stop_ingest(proc)  # its persistent session keeps the subscription: the broker queues
            publisher.start()
            pub_started, pub_done = result.get(timeout=900)
            proc = start_ingest(env, log_path)
            ingest_stats(stats, proc.pid, bool, 60)
            began = stats.history[("ingest", proc.pid)][0][0]
            cpu0 = (proc_rss_cpu(proc.pid) or (0, 0.0))[1]
        else:
            cpu0 = (proc_rss_cpu(proc.pid) or (0, 0.0))[1]
            publisher.start()
            pub_started, pub_done = result.get(timeout=900)
            began = pub_started
        done = ingest_stats(stats, proc.pid, lambda s: s.get("produced", 0) >= args.readings, 900)
        ended = done["at"] / 1000
        cpu1 = (proc_rss_cpu(proc.pid) or (0, 0.0))[1]
        publisher.join(30)
        cpu_exit = stop_ingest(proc)  # the archive folder's last fold too
    finally:
        if proc.returncode is None and proc.poll() is None:
            stop_ingest(proc)
        stats.stop()
    envelopes, records = count_envelopes(settings, args.readings)
    span = max(ended - began, 1e-9)
    archived = settings.data_dir / "archive"
    return {
        "archive": archive,
        "archive_ack_waits": done.get("archive_ack_waits", 0),  # delivered records whose acks waited
        "archive_bytes": sum(f.stat().st_size for f in archived.rglob("*") if f.is_file()),
        "group_max": group_max,
        "mode": mode,
        "mqtt_client": mqtt_client,
        "readings": args.readings,
        "readings_per_s": args.readings / span,
        "publisher_per_s": args.readings / max(pub_done - pub_started, 1e-9),
        "cpu_s_per_1000": (cpu1 - cpu0) / (args.readings / 1000),
        "cpu_exit_s_per_1000": (cpu_exit - cpu0) / (args.readings / 1000),
        "cpu_share": (cpu1 - cpu0) / span,  # of one core, over the span (live: from ingest's side)
        "kafka_envelopes": envelopes,
        "kafka_records": records,
        "dead_lettered": done.get("dead_lettered", 0),
    }


def drain_cpu_us(
    port: int, count: int, messages: list[tuple[str, bytes]], client: str
) -> tuple[float, float]:
    """(CPU µs per message, messages/s) to drain ``count`` queued QoS 1 messages and ack each one."""
    import threading

    import paho.mqtt.client as mqtt

    from ingest.mqtt_session import MqttSession
    from sesmon.runtime.mqtt import connect_async, make_client

    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{port}")
    client_id = f"drain-{client}-{time.monotonic_ns()}"
    subscribed, done = threading.Event(), threading.Event()
    got = [0]
    session = MqttSession(
        settings, client_id, [("sesmon/v1/#", 1)], print, on_subscribed=lambda _c: subscribed.set()
    )
    session.start()
    subscribed.wait(30)
    session.close()
    publisher = Publisher(port, f"drain-pub-{time.monotonic_ns()}")
    for topic, payload in messages[:count]:
        publisher.publish(topic, payload)
    publisher.flush(600)
    publisher.close()
    start = time.perf_counter()
    cpu0 = time.process_time()
    if client == "session":

        def on_message(_topic: bytes, _payload: bytes, mid: int, qos: int) -> None:
            got[0] += 1
            drain.ack(mid, qos)
            if got[0] >= count:
                done.set()

        drain = MqttSession(settings, client_id, [("sesmon/v1/#", 1)], on_message).start()
        done.wait(600)
        cpu = time.process_time() - cpu0
        drain.close()
    else:
        paho = make_client(settings, client_id, clean_session=False, manual_ack=True)

        def on_paho(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            got[0] += 1
            c.ack(msg.mid, msg.qos)
            if got[0] >= count:
                done.set()

        paho.on_message = on_paho
        connect_async(paho, settings)
        done.wait(600)
        cpu = time.process_time() - cpu0
        paho.disconnect()
        paho.loop_stop()
    return cpu / got[0] * 1e6, got[0] / (time.perf_counter() - start)


def parts(args: Any, device_ids: list[str], work: Path) -> None:
    """The MQTT receive path alone (paho vs ingest's session), then validation (pydantic vs fast)."""
    import timeit

    from sesmon.contract.fast_envelope import device_envelope
    from sesmon.contract.registry import Registry
    from sesmon.contract.schemas import parse_mqtt
    from sesmon.runtime.kafka import dumps

    messages = readings(device_ids, args.parts)
    broker = start_mqtt(work / "mqtt-parts", autosave_changes=args.autosave_changes)
    try:
        for client in ("paho", "session"):
            cpu_us, rate = drain_cpu_us(broker.port, args.parts, messages, client)
            print(
                f"MQTT receive + PUBACK, {client:<7}: {cpu_us:6.1f} µs CPU a message, "
                f"{rate:>9,.0f} messages/s"
            )
    finally:
        broker.stop()
    known = Registry.load(work / "registry.csv").kind_of
    topic, payload = messages[0]
    paths = {
        "parse_mqtt + model_dump": lambda: dumps(
            parse_mqtt(topic, payload, T0_MS, known_device=known).model_dump(mode="json")
        ),
        "device_envelope": lambda: device_envelope(topic, payload, T0_MS, known_device=known),
    }
    for name, path in paths.items():
        best = min(timeit.repeat(path, number=2_000, repeat=25)) / 2_000
        print(f"validation, {name:<23}: {best * 1e6:6.1f} µs a message (best of 25 x 2,000)")
    archive_parts(messages, work)


def archive_parts(messages: list[tuple[str, bytes]], work: Path, batch: int = 500) -> None:
    """The raw archive's CPU a reading, in this thread (best of 5): the hot path, i.e. the MQTT
    session's receive path over the same stream of QoS 1 PUBLISH packets in ``recv``-sized chunks
    with and without the journal (a write every ``batch`` readings, as before each Kafka record),
    and the folder's work (``fold_journals``: parse, lines, gzip, append), which runs in a process of
    its own."""
    from ingest.archive import ArchiveJournal
    from ingest.archive_folder import fold_journals
    from ingest.mqtt_session import MqttSession
    from sesmon.runtime.mqtt_wire import packet

    stream = b"".join(
        packet(0x32, len(t).to_bytes(2, "big") + t + (i % 65535 + 1).to_bytes(2, "big") + p)
        for i, (t, p) in enumerate((topic.encode(), payload) for topic, payload in messages)
    )
    for size in (4096, 65536):
        chunks = [stream[at : at + size] for at in range(0, len(stream), size)]
        every = max(1, batch * len(chunks) // len(messages))  # chunks between two Kafka records
        best: dict[str, float] = {}
        for attempt in range(5):
            for archived in (False, True):
                where = work / f"archive-parts-{size}-{attempt}"
                journal = ArchiveJournal(where, folder=False, flush_s=1e9).start() if archived else None
                session = MqttSession(Settings(), "parts", [], lambda *_args: None, journal=journal)
                pending = b""
                t0 = time.thread_time()
                for n, data in enumerate(chunks):
                    pending = session._take(data, pending)
                    if journal is not None and n % every == 0:
                        journal.write_pending()
                if journal is not None:
                    journal.write_pending()
                name = "with journal" if archived else "without"
                best[name] = min(
                    best.get(name, float("inf")), (time.thread_time() - t0) / len(messages) * 1e6
                )
                if journal is not None:
                    journal.close()
                    t0 = time.thread_time()
                    fold_journals(where)
                    fold = (time.thread_time() - t0) / len(messages) * 1e6
                    best["folder"] = min(best.get("folder", float("inf")), fold)
        print(
            f"archive, recv chunks of {size // 1024} KiB: receive path {best['without']:.2f} µs a reading, "
            f"{best['with journal']:.2f} with the journal (+{best['with journal'] - best['without']:.2f}); "
            f"the folder {best['folder']:.2f} µs a reading in its own process (best of 5)"
        )


def summary(results: list[dict[str, Any]]) -> None:
    """Medians of ingest's CPU per 1,000 readings per mode, with and without the archive."""
    groups: dict[tuple[str, int, str], dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        cell = groups.setdefault((r["mode"], r["group_max"], r["mqtt_client"]), {})
        cell.setdefault(r["archive"], []).append(r)
    for (mode, group_max, client), by_archive in groups.items():
        medians = {
            archive: (
                statistics.median(r["cpu_s_per_1000"] for r in runs) * 1000,
                statistics.median(r["cpu_exit_s_per_1000"] for r in runs) * 1000,
                len(runs),
            )
            for archive, runs in by_archive.items()
        }
        line = ", ".join(
            f"archive {archive} {last:.1f} ms ({to_exit:.1f} to exit, {n} runs)"
            for archive, (last, to_exit, n) in sorted(medians.items())
        )
        added = ""
        if "on" in medians and "off" in medians:
            on, off = medians["on"], medians["off"]
            added = f": the archive adds {on[0] / off[0] - 1:+.1%} ({on[1] / off[1] - 1:+.1%} to exit)"
        print(f"median {mode:<8} {client:<7} group-max {group_max:>4}, CPU per 1,000 readings: {line}{added}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=2_000)
    parser.add_argument("--group-max", default="1,500", help="comma-separated; 1 = one record per reading")
    parser.add_argument("--mode", default="live,backlog", help="live, backlog or both")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--autosave-changes", type=int, default=1_000_000, help="mosquitto autosave_interval")
    parser.add_argument("--mqtt-client", default="session", help="session, paho or both (comma-separated)")
    parser.add_argument(
        "--archive", default="on", help="raw archive on, off, or a list to alternate (on,off,on,off)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="run the --archive list this many times")
    parser.add_argument(
        "--parts", type=int, default=0, help="measure receive and validation alone, N messages"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sesmon-ingest-bench-") as tmp:
        work = Path(tmp)
        registry = work / "registry.csv"
        fleet = generate_fleet(args.units, 0, seed=9)
        write_registry(fleet, registry)
        device_ids = [u.device_id for u in fleet]
        if args.parts:
            parts(args, device_ids, work)
            return 0
        kafka = start_kafka(work / "tansu")
        broker = start_mqtt(work / "mqtt", autosave_changes=args.autosave_changes)
        results = []
        try:
            runs = [
                (mode, int(group_max), client, archive)
                for mode in args.mode.split(",")
                for group_max in args.group_max.split(",")
                for client in args.mqtt_client.split(",")
                for _ in range(args.repeat)
                for archive in args.archive.split(",")
            ]
            for mode, group_max, client, archive in runs:
                r = run_one(
                    kafka.port,
                    broker.port,
                    work,
                    registry,
                    device_ids,
                    args,
                    group_max,
                    mode,
                    client,
                    archive,
                )
                results.append(r)
                lost = r["readings"] - r["kafka_envelopes"] - r["dead_lettered"]
                print(
                    f"{mode:<8} {client:<7} group-max {group_max:>4} archive {archive:<3}: "
                    f"{r['readings_per_s']:>8,.0f} readings/s, "
                    f"ingest CPU {r['cpu_s_per_1000'] * 1000:,.1f} ms per 1,000 readings "
                    f"({r['cpu_exit_s_per_1000'] * 1000:,.1f} to exit) "
                    f"({r['cpu_share']:.0%} of a core), publisher {r['publisher_per_s']:,.0f}/s, "
                    f"{r['kafka_records']:,} Kafka records for {r['kafka_envelopes']:,} readings, "
                    f"lost {lost}, archive {r['archive_bytes'] / max(r['readings'], 1):.0f} B a reading"
                    f" ({r['archive_ack_waits']:,} records' acks waited for it)",
                    flush=True,
                )
        finally:
            broker.stop()
            kafka.stop()
        summary(results)
    return 0 if all(r["kafka_envelopes"] + r["dead_lettered"] == r["readings"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
