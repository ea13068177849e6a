"""Delivery throughput of the alerts stage on loopback: pages/s under the in-flight bound.

Starts mosquitto and Tansu, puts N P1 alert changes (3 receivers each) on the alerts topic,
runs ``sesmon alerts`` as a child process and times the pages an MQTT subscriber receives,
from the first to the last (the consumer group join, ~8 s on Tansu, is left out).

Usage: python bench/alerts_bench.py [--changes 5000] [--inflight 10 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sesmon.runtime.kafka import ensure_topics
from sesmon.runtime.services import start_kafka, start_mqtt
from sesmon.runtime.settings import Settings
from tests.test_alerts_crash import PageInbox, alerts_stage, p1_alert, produce_alerts


def one_run(kafka_port: int, work: Path, changes: int, inflight: int, tag: str) -> float:
    mqtt = start_mqtt(work / f"mqtt-{tag}")
    settings = Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt.port}",
        kafka_url=f"127.0.0.1:{kafka_port}",
        data_dir=work / f"state-{tag}",
        topic_prefix=f"bench{tag}",
        kafka_partitions=2,
        alerts_max_inflight=inflight,
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--inflight", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="alerts-bench-"))
    kafka = start_kafka(work / "tansu")
    try:
        for inflight in args.inflight:
            rates = [
                one_run(kafka.port, work, args.changes, inflight, f"{inflight}x{run}")
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
