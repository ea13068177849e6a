"""Simulator throughput: one process generating a fleet and publishing it to mosquitto.

Usage: python bench/sim_bench.py [--elevators N] [--boilers M] [--messages K] [--runs R]
                                [--modes raw0 paho0 paho1] [--subscriber]

Starts its own mosquitto on a free loopback port (or uses --port), and a separate
subscriber *process* that counts what arrives. The simulator runs flat out: simulated
time advances in 5-second slices as fast as the models and the client allow, so the
figure includes generation, JSON serialisation and paho publishing in one process.
Reported per run: publisher-side msg/s and mosquitto's own received count ($SYS); with
--subscriber also what a subscriber process got (it competes for the same cores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import orjson


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nsys_interval 1\n"
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def subscriber(port: int, qos: int, ready: mp.Event, result: mp.Queue, idle_s: float) -> None:  # type: ignore[type-arg]
    """Count messages on sesmon/v1/# in its own process until idle for idle_s."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if state["n"] == 0:
            state["first"] = now
        state["n"] += 1
        state["last"] = now

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{port}-{qos}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("sesmon/v1/#", qos)
    client.loop_start()
    time.sleep(0.5)
    ready.set()
    while True:
        time.sleep(0.5)
        if state["n"] and time.monotonic() - state["last"] > idle_s:
            break
    client.loop_stop()
    result.put((state["n"], state["first"], state["last"]))


def broker_received(port: int, timeout: float = 5.0) -> int:
    """mosquitto's own count of PUBLISH packets received ($SYS, refreshed every second)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sys-{time.monotonic_ns()}")
    client.on_message = lambda c, u, m: got.append(int(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("$SYS/broker/publish/messages/received", 0)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return got[-1] if got else 0


def one_run(
    port: int, units: list, mode: str, messages: int, seed: int, with_subscriber: bool
) -> dict[str, float]:
    qos = 1 if mode == "paho1" else 0
    from simulators.engine import FleetSim, SimOptions
    from simulators.publisher import FleetPublisher, RawQos0Publisher

    sub = None
    if with_subscriber:
        ctx = mp.get_context("spawn")
        ready, result = ctx.Event(), ctx.Queue()
        sub = ctx.Process(target=subscriber, args=(port, qos, ready, result, 10.0), daemon=True)
        sub.start()
        ready.wait(20)
    sim = FleetSim(units, seed=seed, options=SimOptions(human=False, announce=False))
    sim.run_for(60, step_s=60)  # warm up: past the start-of-run burst
    time.sleep(1.5)
    before = broker_received(port)
    dumps = orjson.dumps
    sent = 0
    failed = 0
    retained = 0  # mosquitto's $SYS publish counter leaves out retained publishes
    if mode == "raw0":  # batched QoS 0 PUBLISH packets, one write per slice
        raw = RawQos0Publisher("127.0.0.1", port).connect()
        t0 = time.monotonic()
        while sent < messages:
            batch = sim.advance(sim.now + 5_000)
            retained += sum(1 for m in batch if m.retain)
            sent += raw.publish_msgs(batch)
        t_pub = time.monotonic() - t0
        raw.close()
    else:
        pub = FleetPublisher("127.0.0.1", port, qos=qos, max_unacked=20_000, subscribe_alerts=False).connect()
        publish = pub.publish
        t0 = time.monotonic()
        while sent < messages:
            batch = sim.advance(sim.now + 5_000)
            retained += sum(1 for m in batch if m.retain)
            for m in batch:
                body = m.body
                publish(m.topic, body if isinstance(body, bytes) else dumps(body), m.retain)
            sent += len(batch)
        t_pub = time.monotonic() - t0
        pub.flush(60)
        pub.close()
        failed = pub.counts["failed"]
    time.sleep(2.5)
    at_broker = broker_received(port) - before
    out = {"sent": sent, "failed": failed, "publisher_msg_s": sent / t_pub, "at_broker": at_broker,
           "lost": sent - retained - at_broker}  # fmt: skip
    if sub is not None:
        received, _first, last = result.get(timeout=300)
        sub.join(10)
        out["received"] = received
        out["e2e_msg_s"] = received / max(1e-9, last - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--elevators", type=int, default=20_000)
    parser.add_argument("--boilers", type=int, default=2_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["raw0", "paho0", "paho1"],
        help="raw0 = batched QoS 0 socket writer; paho0 / paho1 = paho client at QoS 0 / 1",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=None, help="use a running broker instead of starting one")
    parser.add_argument(
        "--subscriber",
        action="store_true",
        help="also count at a subscriber process (it competes for the same 2 cores)",
    )
    args = parser.parse_args()

    from simulators.fleet import generate_fleet

    units = generate_fleet(args.elevators, args.boilers, seed=1)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.port is None:
            proc, port = start_mosquitto(Path(tmp))
        else:
            port = args.port
        try:
            print(
                f"fleet {args.elevators} elevators + {args.boilers} boilers, {args.messages} messages per run"
            )
            for mode in args.modes:
                runs = [
                    one_run(port, units, mode, args.messages, 1 + r, args.subscriber)
                    for r in range(args.runs)
                ]
                pub_rates = [r["publisher_msg_s"] for r in runs]
                line = (
                    f"{mode}: publisher {' / '.join(f'{x:,.0f}' for x in pub_rates)} msg/s "
                    f"(median {statistics.median(pub_rates):,.0f}); sent {[r['sent'] for r in runs]}, "
                    f"non-retained lost at mosquitto {[r['lost'] for r in runs]}, "
                    f"failed {[r['failed'] for r in runs]}"
                )
                if args.subscriber:
                    e2e = [r["e2e_msg_s"] for r in runs]
                    line += (
                        f"; subscriber got {[r['received'] for r in runs]} at {[round(x) for x in e2e]} msg/s"
                    )
                print(line, flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
