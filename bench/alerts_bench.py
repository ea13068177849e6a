"""The alerts stage on loopback: delivery throughput, and latency from the alert record to the page.

Starts mosquitto and Tansu and runs ``sesmon alerts`` as a child process, exactly as production.

``--mode throughput`` (the old bench): N P1 alert changes (3 receivers each) put on the alerts
topic first, then pages/s as an MQTT subscriber receives them, from the first to the last (the
consumer group join, ~8 s on Tansu, is left out).

``--mode latency`` (issue 10): alert changes produced at ``--rate`` per second for ``--seconds``,
with a dead webhook receiver configured for every firm (a closed port: each change's webhook
fails, retries, and most end as ``queue_full`` dead letters). For every page: the time from the
alert record being in Kafka (the producer's delivery report) to the page reaching a subscriber
in another process (same host, same clock). Prints p50 / p99 / max and what the stage counted.

Usage: python bench/alerts_bench.py [--mode latency|throughput] [--rate 1000] [--seconds 45]
       [--level P1|P2] [--broker-autosave 1] [--runs 1] [--changes 5000] [--inflight 10 100]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.routing_file import DEFAULT_ROUTING
from sesmon.contract.receivers import alert_receivers
from sesmon.contract.schemas import Alert
from sesmon.runtime.kafka import ensure_topics, make_producer, make_reader
from sesmon.runtime.services import free_port, start_kafka, start_mqtt
from sesmon.runtime.settings import Settings
from tests.test_alerts_crash import PageInbox, alerts_stage, p1_alert, produce_alerts

SECRET_ENV = "SESMON_BENCH_WEBHOOK_SECRET"


def stage_settings(
    mqtt_port: int, kafka_port: int, data_dir: Path, prefix: str, inflight: int = 10
) -> Settings:
    """The alerts stage's settings for one run: its own broker, state and topics."""
    return Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
        kafka_url=f"127.0.0.1:{kafka_port}",
        data_dir=data_dir,
        topic_prefix=prefix,
        kafka_partitions=2,
        alerts_max_inflight=inflight,
    )


# ---------------------------------------------------------------------------- throughput (as before)


def throughput_run(kafka_port: int, work: Path, changes: int, inflight: int, tag: str) -> float:
    mqtt = start_mqtt(work / f"mqtt-{tag}")
    settings = stage_settings(mqtt.port, kafka_port, work / f"state-{tag}", f"bench{tag}", inflight)
    ensure_topics(settings)
    inbox = PageInbox(settings)
    times: list[float] = []
    inbox.on_page = lambda _count: times.append(time.perf_counter())
    produce_alerts(settings, [p1_alert(i, s) for i in range(changes // 2) for s in ("firing", "resolved")])
    stage = alerts_stage(settings, work / f"alerts-{tag}.log")
    stage.env = {**(stage.env or {}), "SESMON_ALERTS_MAX_INFLIGHT": str(inflight)}
    stage.start()
    try:
        wanted = 3 * (changes // 2) * 2
        if not inbox.wait(lambda box: len(box.pages) >= wanted, 300):
            raise SystemExit(f"only {len(inbox.pages)} of {wanted} pages\n{stage.log_tail()}")
        return (len(times) - 1) / (times[-1] - times[0])
    finally:
        stage.stop()
        inbox.close()
        mqtt.stop()


# ---------------------------------------------------------------------------- latency


def subscriber_main(host: str, port: int, out: str) -> None:
    """Child process: receive every page, note (arrival time, key, topic); say how many each second.

    A raw MQTT 3.1.1 subscriber at QoS 1, as receivers subscribe (the broker then keeps each page
    until acknowledged, which is what its persistence saves), with the PUBACKs of each read sent
    together: a paho subscriber took a third of a core for 3,000 pages/s on this 2-core machine,
    time the stage under test did not get.
    """
    import socket
    import struct

    from alerts.mqtt_wire import split_packets

    def utf8(text: str) -> bytes:
        return struct.pack(">H", len(text.encode())) + text.encode()

    def packet(header: int, body: bytes) -> bytes:
        length, out_ = len(body), bytearray([header])
        while True:
            byte, length = length & 0x7F, length >> 7
            out_.append(byte | (0x80 if length else 0))
            if not length:
                return bytes(out_) + body

    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + utf8(f"bench-sub-{os.getpid()}")))
    sock.sendall(packet(0x82, b"\x00\x01" + utf8("sesmon/v1/alerts/#") + b"\x01"))
    seen: list[tuple[float, str, str]] = []
    marker = b'"idempotency_key":"'
    buf, subscribed = b"", False
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sock.settimeout(1.0)
    next_count = time.monotonic() + 1.0
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            data = b""
        now = time.time()
        packets, buf = split_packets(buf + data)
        acks = []
        for header, body in packets:
            kind = header >> 4
            if kind == 9 and not subscribed:  # SUBACK
                subscribed = True
                print("ready", flush=True)
            elif kind == 3:  # PUBLISH: topic, packet id (QoS 1), payload
                (length,) = struct.unpack(">H", body[:2])
                topic = body[2 : 2 + length].decode()
                qos = (header >> 1) & 3
                payload = body[2 + length + (2 if qos else 0) :]
                if qos:
                    acks.append(b"\x40\x02" + body[2 + length : 4 + length])
                at = payload.find(marker) + len(marker)
                key = payload[at : payload.find(b'"', at)].decode()
                seen.append((now, key, topic))
                if key.startswith("WARM"):
                    print(f"warm {key}", flush=True)
        if acks:
            sock.sendall(b"".join(acks))
        if time.monotonic() >= next_count:
            next_count += 1.0
            print(f"count {len(seen)}", flush=True)
            if int(time.monotonic()) % 20 == 0:
                sock.sendall(b"\xc0\x00")  # PINGREQ now and then (keepalive 60 s)
    with open(out, "wb") as fh:
        fh.write(orjson.dumps(seen))


def bench_alert(index: int, level: str, state: str, opened_at: int, changed_at: int, tag: str) -> Alert:
    device = f"B{index:06d}"
    firm, unit = f"F{index % 50:03d}", f"U{index % 200:03d}"
    kind = "elevator"
    return Alert(
        alert_id=f"{tag}{device}.elevator.trapped.{opened_at}",
        rule="elevator.trapped" if level == "P1" else "elevator.door_close_fault",
        level=level,  # type: ignore[arg-type]
        device_id=device,
        kind=kind,  # type: ignore[arg-type]
        district="天河",
        firm_id=firm,
        user_unit_id=unit,
        opened_at=opened_at,
        changed_at=changed_at,
        state=state,  # type: ignore[arg-type]
        receivers=alert_receivers(
            kind,
            firm_id=firm,
            user_unit_id=unit,
            district="天河",
            centre=level == "P1",
            regulator=False,
            centre_id="96333",
        ),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat): the fair cost figure on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_run(
    kafka_port: int,
    work: Path,
    rate: int,
    seconds: float,
    level: str,
    tag: str,
    autosave: int = 1,
    inflight: int = 10,
) -> dict[str, Any]:
    mqtt = start_mqtt(work / f"mqtt-{tag}", autosave_changes=autosave)
    dead_port = free_port()  # nobody listens: the dead webhook receiver
    routing = work / f"routing-{tag}.yaml"
    routing.write_text(
        DEFAULT_ROUTING.read_text(encoding="utf-8").replace(
            "webhooks: []",
            f'webhooks:\n  - kind: firm\n    url: "http://127.0.0.1:{dead_port}/firms/{{id}}"\n'
            f"    secret_env: {SECRET_ENV}\n",
        ),
        encoding="utf-8",
    )
    settings = stage_settings(mqtt.port, kafka_port, work / f"state-{tag}", f"lat{tag}")
    ensure_topics(settings)
    out = work / f"pages-{tag}.json"
    sub = subprocess.Popen(
        [sys.executable, __file__, "--subscriber", "127.0.0.1", str(mqtt.port), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    assert sub.stdout.readline().strip() == "ready"
    counts = [0]

    def read_child() -> None:
        assert sub.stdout is not None
        for line in sub.stdout:
            if line.startswith("count "):
                counts[0] = int(line.split()[1])
            elif line.startswith("warm "):
                warm.set()

    warm = threading.Event()
    threading.Thread(target=read_child, daemon=True).start()
    stage = alerts_stage(settings, work / f"alerts-{tag}.log")
    stage.env = {
        **(stage.env or {}),
        "SESMON_ALERTS_ROUTING_FILE": str(routing),
        "SESMON_ALERTS_MAX_INFLIGHT": str(inflight),
        SECRET_ENV: "bench-secret",
    }
    stage.start()
    producer = make_producer(settings)
    topic = settings.topic("alerts")
    acked: dict[str, float] = {}  # change id -> when Kafka had its record (delivery report)

    def produce(key: bytes, value: bytes, change: str) -> None:
        def report(err: Any, _msg: Any) -> None:
            if err is None:
                acked[change] = time.time()

        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=report)
                return
            except BufferError:
                producer.poll(0.01)

    receivers = 3 if level == "P1" else 2
    sent, elapsed, cpu_used = 0, 0.0, 0.0
    try:
        # warm up: the consumer group join (5-8 s on Tansu), then the first page
        now = int(time.time() * 1000)
        warmup = bench_alert(0, level, "firing", now, now, "WARM")
        produce(
            warmup.alert_id.encode(),
            orjson.dumps(warmup.model_dump(mode="json")),
            f"{warmup.alert_id}|opened",
        )
        producer.flush(10)
        if not warm.wait(120):
            raise SystemExit(f"no warm-up page\n{stage.log_tail()}")
        warm_count = counts[0]
        cpu_before = cpu_seconds(stage.proc.pid)
        # alert changes at `rate` per second: each alert fires, and resolves 1 s later (built first:
        # the paced loop only produces)
        records: list[tuple[float, bytes, bytes, str]] = []
        t_start = time.time() + 2.0
        for i in range(int(rate * seconds / 2)):
            at = t_start + i * 2 / rate
            opened = int(at * 1000)
            for state, changed, what, when in (
                ("firing", opened, "opened", at),
                ("resolved", opened + 1000, "resolved", at + 1.0),
            ):
                alert = bench_alert(i + 1, level, state, opened, changed, tag)
                value = orjson.dumps(alert.model_dump(mode="json"))
                records.append((when, alert.alert_id.encode(), value, f"{alert.alert_id}|{what}"))
        records.sort(key=lambda r: r[0])
        for at, key, value, change in records:
            delay = at - time.time()
            if delay > 0:
                producer.poll(delay)
            produce(key, value, change)
            sent += 1
            producer.poll(0)
        elapsed = time.time() - t_start
        producer.flush(30)
        wanted = warm_count + sent * receivers
        deadline = time.monotonic() + 120
        while counts[0] < wanted and time.monotonic() < deadline:
            time.sleep(0.5)
        cpu_used = cpu_seconds(stage.proc.pid) - cpu_before
    finally:
        sub.send_signal(signal.SIGTERM)
        sub.wait(60)
        stats = stage_stats(settings)
        stage.stop()
        mqtt.stop()
    seen = orjson.loads(out.read_bytes())
    timed = [
        (acked[key], (t - acked[key]) * 1000) for t, key, _ in seen if key in acked and "WARM" not in key
    ]
    lat = [ms for _, ms in timed]
    # p50 per 5 s of production: a stage that keeps up is flat, one that falls behind climbs
    start = min(at for at, _ in timed)
    windows: dict[int, list[float]] = {}
    for at, ms in timed:
        windows.setdefault(int((at - start) // 5), []).append(ms)
    return {
        "changes": sent,
        "rate_offered": round(sent / elapsed),
        "pages_expected": sent * receivers,
        "pages_received": len(lat),
        "p50_ms": round(pct(lat, 0.50), 1),
        "p99_ms": round(pct(lat, 0.99), 1),
        "max_ms": round(max(lat), 1),
        "stage_cpu_s": round(cpu_used, 2),
        "cpu_us_per_change": round(cpu_used * 1e6 / max(1, sent)),
        "load_avg": os.getloadavg(),
        "p50_ms_per_5s": [round(pct(windows[w], 0.5)) for w in sorted(windows)],
        "stage": stats,
    }


def stage_stats(settings: Settings) -> dict[str, Any]:
    """The stage's last pipeline record: what it counted (webhook dead letters, pages...)."""
    reader = make_reader(settings, ["pipeline"])
    last: dict[str, Any] = {}
    series: list[tuple[int, int, int]] = []  # (at ms, pages recorded, changes queued) each second
    deadline, quiet = time.monotonic() + 30, 0
    try:
        while time.monotonic() < deadline and quiet < 3:
            batch = reader.consume(5000, 0.5)
            quiet = quiet + 1 if not batch and last else 0
            for record in batch:
                if not record.error():
                    value = orjson.loads(record.value())
                    if value.get("stage") == "alerts":
                        last = value
                        series.append(
                            (value["at"], value.get("pages_recorded", 0), value.get("changes_queued", 0))
                        )
    finally:
        reader.close()
    hooks = last.get("webhooks", {})
    series.sort()
    moving = [i for i, (_, pages, _) in enumerate(series) if pages > (series[0][1] if series else 0)]
    if moving:  # pages/s per 5 s from the first page of the run to the last
        series = series[max(0, moving[0] - 1) : moving[-1] + 1]
    per_5s = [
        round((b[1] - a[1]) * 1000 / max(1, b[0] - a[0]))
        for a, b in zip(series[::5], series[5::5], strict=False)
    ]
    return {
        "pages_per_s_per_5s": per_5s,
        "max_changes_queued": max((q for _, _, q in series), default=0),
        "changes_paged": sum(v for k, v in last.items() if k.startswith("paged_")),
        "pages_recorded": last.get("pages_recorded"),
        "webhook_dead_letters": {k: v for k, v in last.items() if k.startswith("webhook_dead_")},
        "webhook_attempts": hooks.get("attempts"),
        "audit_entries": last.get("audit_entries"),
        "pager_rounds": last.get("pager_rounds"),
        "pager_cpu_s": last.get("pager_cpu_s"),
        "health_ok": (last.get("health") or {}).get("ok"),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--subscriber":
        subscriber_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("latency", "throughput"), default="latency")
    parser.add_argument("--rate", type=int, default=1000, help="latency: alert changes per second")
    parser.add_argument("--seconds", type=float, default=45.0, help="latency: how long")
    parser.add_argument("--level", choices=("P1", "P2"), default="P1", help="P1: 3 receivers, P2: 2")
    parser.add_argument("--changes", type=int, default=5000, help="throughput: changes put on the topic")
    parser.add_argument(
        "--inflight",
        type=int,
        nargs="+",
        default=[10, 100],
        help="throughput: each; latency: the first given (else the stage's default)",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--broker-autosave",
        type=int,
        default=1,
        help="mosquitto saves its store after this many changes (1 = as shipped)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="alerts-bench-"))
    kafka = start_kafka(work / "tansu")
    try:
        if args.mode == "latency":
            for run in range(args.runs):
                # unless asked, the stage as shipped (SESMON_ALERTS_MAX_INFLIGHT's default, 100)
                inflight = args.inflight[0] if args.inflight != [10, 100] else Settings().alerts_max_inflight
                result = latency_run(
                    kafka.port,
                    work,
                    args.rate,
                    args.seconds,
                    args.level,
                    f"r{run}",
                    args.broker_autosave,
                    inflight,
                )
                print(orjson.dumps(result).decode(), flush=True)
            return
        for inflight in args.inflight:
            rates = [
                throughput_run(kafka.port, work, args.changes, inflight, f"{inflight}x{run}")
                for run in range(args.runs)
            ]
            print(
                f"alerts_max_inflight={inflight}: {' / '.join(f'{r:,.0f}' for r in rates)} pages/s "
                f"(median {statistics.median(rates):,.0f}; {args.changes} changes x 3 receivers)",
                flush=True,
            )
    finally:
        kafka.stop()


if __name__ == "__main__":
    main()
