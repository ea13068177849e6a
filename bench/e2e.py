"""End-to-end benchmark: readings published over MQTT -> ingest -> Kafka -> Faust rules -> alerts on MQTT.

Prints, from one run on this machine:
- the yardstick: raw mosquitto QoS 1 throughput with the same paho client (publisher -> subscriber);
- end-to-end readings/s: N readings from the first publish until the worker evaluated all of them;
- publish -> alert latency (p50/p99) for readings that fire a P1 alert (overspeed), received by
  an MQTT subscriber on the 96333 centre's topic.

Usage: python bench/e2e.py [--readings 30000] [--units 1000] [--raw 50000] [--rate R]

Flat out (no --rate) measures throughput, and its latencies include the queue that builds
up; with --rate below the pipeline's capacity the latencies are the pipeline's own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from sesmon.contract.registry import write_registry
from sesmon.runtime.kafka import ensure_topics, make_consumer
from sesmon.runtime.services import EmbeddedServices
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet

MAX_UNACKED = 10_000  # paho drops QoS 1 publishes past 65,535 outstanding ids (stack.md)


def connect(port: int, client_id: str = "") -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_bounded(  # type: ignore[no-untyped-def]
    client: mqtt.Client, messages: list[tuple[str, bytes]], on_sent=None, rate: float = 0.0
) -> float:
    """QoS 1 publish as fast as the broker acks (or paced at ``rate``/s), at most MAX_UNACKED owed."""
    outstanding: list[mqtt.MQTTMessageInfo] = []
    t0 = time.perf_counter()
    for index, (topic, payload) in enumerate(messages):
        if rate and index % 50 == 0:
            ahead = t0 + index / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish refused rc={info.rc}")
        if on_sent is not None:
            on_sent(index)
        outstanding.append(info)
        if len(outstanding) >= MAX_UNACKED:
            outstanding[len(outstanding) // 2].wait_for_publish(30)
            outstanding = [i for i in outstanding if not i.is_published()]
    for info in outstanding:
        info.wait_for_publish(30)
    return time.perf_counter() - t0


def _raw_subscriber(port: int, count: int, ready: Any, result: Any) -> None:
    """Runs in its own process, as in stack.md, so publisher and subscriber do not share a GIL."""
    received = 0
    done = threading.Event()

    def on_message(*_: object) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: ready.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/raw", qos=1)
    sub.loop_start()
    done.wait(180)
    result.put((received, time.time()))
    sub.disconnect()


def raw_mqtt(port: int, count: int) -> float:
    """Yardstick: one paho publisher -> one paho subscriber process through mosquitto, QoS 1, 300 bytes."""
    ctx = multiprocessing.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_raw_subscriber, args=(port, count, ready, result), daemon=True)
    proc.start()
    ready.wait(20)
    pub = connect(port, "bench-raw-pub")
    payload = json.dumps(
        {"device_id": "GZE0000001", "ts": 1795299000000, "seq": 1, "pad": "x" * 230}
    ).encode()
    t0 = time.time()
    publish_bounded(pub, [("bench/raw", payload)] * count)
    received, t_last = result.get(timeout=180)
    proc.join(10)
    pub.disconnect()
    if received != count:
        raise RuntimeError(f"raw MQTT lost messages: {received}/{count}")
    return count / (t_last - t0)


def stage(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "sesmon.app.cli", name],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=30_000)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--raw", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=0.0, help="pace readings at this many/s (0: flat out)")
    parser.add_argument("--trigger-every", type=int, default=50, help="one overspeed reading per this many")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sesmon-bench-"))
    units = generate_fleet(args.units, 0, seed=5)
    registry = work / "registry.csv"
    write_registry(units, registry)
    with EmbeddedServices(work / "servers") as services:
        port = services.mqtt.port if services.mqtt else 0
        raw_rate = raw_mqtt(port, args.raw)
        print(
            f"raw mosquitto QoS 1, one paho publisher -> one subscriber: "
            f"{raw_rate:,.0f} msg/s ({args.raw:,} msgs)"
        )

        settings = Settings(mqtt_url=services.mqtt_url, kafka_url=services.kafka_url, data_dir=work / "state")
        ensure_topics(settings)
        env = {**services.env(), "SESMON_DATA_DIR": str(work / "state"), "SESMON_REGISTRY": str(registry)}
        logs = work / "logs"
        logs.mkdir()
        procs = [stage(name, env, logs) for name in ("alerts", "worker", "ingest")]
        try:
            alert_at: dict[str, float] = {}

            def on_alert(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
                alert = orjson.loads(msg.payload)
                if alert.get("rule", "").endswith("overspeed") and alert.get("state") == "firing":
                    alert_at.setdefault(alert["device_id"], time.perf_counter())

            watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-alerts")
            watcher.on_message = on_alert
            watcher.connect("127.0.0.1", port)
            watcher.subscribe("sesmon/v1/alerts/centre/#", qos=1)
            watcher.loop_start()

            pub = connect(port, "bench-devices")
            base_ts = int(time.time() * 1000)
            speeds = {u.device_id: u.rated_speed_mps or 1.0 for u in units}
            ids = list(speeds)

            # warm-up: wait until the whole chain answers (Faust joins its group in ~5-10 s)
            probe = ids[-1]
            warm_t0 = time.perf_counter()
            while probe not in alert_at and time.perf_counter() - warm_t0 < 120:
                body = {
                    "device_id": probe,
                    "ts": int(time.time() * 1000),
                    "seq": 1,
                    "moving": True,
                    "door": "closed",
                    "speed_mps": speeds[probe] * 1.5,
                }
                pub.publish(f"sesmon/v1/elevator/{probe}/telemetry", orjson.dumps(body), qos=1)
                time.sleep(1)
            if probe not in alert_at:
                raise RuntimeError(f"pipeline never answered; see logs in {logs}")
            print(f"pipeline ready after {time.perf_counter() - warm_t0:.1f} s")

            # One reading every 10 ms of device time, so a unit's next reading is ~10 s later;
            # every Nth reading is a P1 trigger on a fresh unit, alternately from telemetry
            # (overspeed, put in order by the 10 s lateness bound first) and as a terminal
            # event (evaluated at once).
            messages: list[tuple[str, bytes]] = []
            triggers: dict[int, str] = {}
            path_of: dict[str, str] = {}
            trigger_devices = iter(ids[:-1])
            for i in range(args.readings):
                device = ids[i % (len(ids) - 1)]
                ts = base_ts + i * 10
                body: dict[str, Any] = {
                    "device_id": device,
                    "ts": ts,
                    "seq": 100 + i,
                    "moving": True,
                    "door": "closed",
                    "speed_mps": round(speeds[device] * 0.9, 2),
                    "load_pct": 40.0,
                    "occupied": True,
                }
                leaf = "telemetry"
                if i % args.trigger_every == args.trigger_every - 1 or i == args.readings - 1:
                    hot = next(trigger_devices, None)
                    if hot is not None:
                        device = hot
                        triggers[i] = hot
                        if len(triggers) % 2:
                            path_of[hot] = "telemetry"
                            body = {**body, "device_id": hot, "speed_mps": round(speeds[hot] * 1.5, 2)}
                        else:
                            path_of[hot] = "event"
                            leaf = "event"
                            body = {
                                "device_id": hot,
                                "ts": ts,
                                "seq": 100 + i,
                                "code": "overspeed",
                                "state": "occur",
                                "detail": {},
                            }
                messages.append((f"sesmon/v1/elevator/{device}/{leaf}", orjson.dumps(body)))
            sent_at: dict[str, float] = {}

            def on_sent(index: int) -> None:
                if index in triggers:
                    sent_at[triggers[index]] = time.perf_counter()

            t0 = time.perf_counter()
            publish_elapsed = publish_bounded(pub, messages, on_sent, rate=args.rate)
            # end to end: until the worker has evaluated every reading (its pipeline counter)
            consumer = make_consumer(settings, "bench-stats", ["pipeline"])
            processed = 0
            deadline = time.perf_counter() + 600
            target = args.readings + 1
            t_done = None
            while time.perf_counter() < deadline:
                for rec in consumer.consume(100, 0.5):
                    if rec.error():
                        continue
                    stats = orjson.loads(rec.value())
                    if stats.get("stage") == "streams":
                        processed = max(processed, int(stats.get("processed", 0)))
                if processed >= target:
                    t_done = time.perf_counter()
                    break
            consumer.close()
            deadline = time.perf_counter() + 30
            while len(alert_at) < len(sent_at) + 1 and time.perf_counter() < deadline:
                time.sleep(0.1)
            if t_done is None:
                raise RuntimeError(f"worker evaluated only {processed}/{target}; see {logs}")
            e2e = args.readings / (t_done - t0)
            print(
                f"published {args.readings:,} readings in {publish_elapsed:.2f} s "
                f"({args.readings / publish_elapsed:,.0f} msg/s accepted by mosquitto)"
            )
            print(f"end to end (publish -> evaluated by the rules; 1 s stats): {e2e:,.0f} readings/s")
            for path in ("event", "telemetry"):
                latencies = sorted(
                    (alert_at[d] - sent_at[d]) * 1000 for d in sent_at if d in alert_at and path_of[d] == path
                )
                wanted = sum(1 for d in sent_at if path_of[d] == path)
                if latencies:
                    p50 = statistics.median(latencies)
                    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                    print(
                        f"publish -> P1 alert on MQTT via {path}: {len(latencies)}/{wanted} alerts, "
                        f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {latencies[-1]:,.0f} ms"
                    )
                else:
                    print(f"publish -> P1 alert via {path}: none of {wanted} arrived")
                missing = sorted(i for i, d in triggers.items() if path_of[d] == path and d not in alert_at)
                if missing:
                    print(
                        f"  no alert (yet) for the triggers at readings {missing[:12]}"
                        + (" …" if len(missing) > 12 else "")
                    )
            print(f"end-to-end / raw MQTT = {e2e / raw_rate:.2f}")
            pub.disconnect()
            watcher.disconnect()
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"logs and state: {work}")


if __name__ == "__main__":
    main()
