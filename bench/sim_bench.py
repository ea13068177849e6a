"""Simulator throughput: one process generating a fleet and publishing it to mosquitto.

Usage: python bench/sim_bench.py [--elevators N] [--boilers M] [--messages K] [--runs R]
                                [--modes raw0 paho0 paho1 secure1] [--subscriber]

``secure1`` is the secure broker's way: one connection per device (and per firm, inspector,
operator) with its own password (``sesmon mqtt credentials``), driven by
``simulators.pool.AccountPool``; the broker then checks passwords and the ACL. Compare it
with ``paho1`` (one connection, QoS 1) on the demo fleet: ``--elevators 2000 --boilers 200``.
Both report the rate up to the last PUBACK, the simulator's CPU seconds per 1,000 messages,
and for ``secure1`` the time to open every connection and the process RSS.

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
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path, creds: Any = None) -> tuple[subprocess.Popen[bytes], int]:
    """A plain mosquitto (no persistence); with ``creds`` (BrokerCredentials) passwords and the ACL."""
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    auth = "allow_anonymous true\n"
    if creds is not None:
        auth = (
            ("user root\n" if os.geteuid() == 0 else "")
            + f"allow_anonymous false\npassword_file {creds.passwd}\nacl_file {creds.acl}\n"
            "use_username_as_clientid true\n"
        )
    conf.write_text(
        f"listener {port} 127.0.0.1\n{auth}persistence false\nmax_queued_messages 1000000\nsys_interval 1\n"
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


def subscriber(
    port: int,
    qos: int,
    ready: mp.Event,  # type: ignore[valid-type]
    result: mp.Queue,  # type: ignore[type-arg]
    idle_s: float,
    account: tuple[str, str] | None = None,
) -> None:
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
    if account is not None:
        client.username_pw_set(*account)
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


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    """Resident memory of this process now (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_run(
    port: int,
    units: list,
    mode: str,
    messages: int,
    seed: int,
    with_subscriber: bool,
    broker_pid: int | None = None,
    creds: Any = None,
) -> dict[str, float]:
    qos = 1 if mode in ("paho1", "secure1") else 0
    from simulators.engine import FleetSim, SimOptions
    from simulators.pool import AccountPool
    from simulators.publisher import FleetPublisher, RawQos0Publisher

    sub = None
    account = ("sesmon-ingest", creds.password("sesmon-ingest")) if creds is not None else None
    if with_subscriber:
        ctx = mp.get_context("spawn")
        ready, result = ctx.Event(), ctx.Queue()
        sub = ctx.Process(target=subscriber, args=(port, qos, ready, result, 10.0, account), daemon=True)
        sub.start()
        ready.wait(20)
    sim = FleetSim(units, seed=seed, options=SimOptions(human=False, announce=False))
    sim.run_for(60, step_s=60)  # warm up: past the start-of-run burst
    time.sleep(1.5)
    before = broker_received(port) if creds is None else 0
    dumps = orjson.dumps
    sent = 0
    failed = 0
    retained = 0  # mosquitto's $SYS publish counter leaves out retained publishes
    extra: dict[str, float] = {}
    broker_cpu0 = cpu_s(broker_pid) if broker_pid else 0.0
    if mode == "raw0":  # batched QoS 0 PUBLISH packets, one write per slice
        raw = RawQos0Publisher("127.0.0.1", port).connect()
        t0, cpu0 = time.monotonic(), time.process_time()
        while sent < messages:
            batch = sim.advance(sim.now + 5_000)
            retained += sum(1 for m in batch if m.retain)
            sent += raw.publish_msgs(batch)
        t_pub = t_acked = time.monotonic() - t0
        raw.close()
    elif mode == "secure1":  # one connection per account, as on a secure broker
        from sesmon.runtime.settings import MqttEndpoint

        topics = {d: dev.topic("status") for d, dev in sim.devices.items()}
        firms = {u.firm_id for u in sim.units.values()}
        c0, rss0 = time.monotonic(), rss_mb()
        endpoint = MqttEndpoint("127.0.0.1", port)
        pool = AccountPool.for_fleet(creds.csv, topics, firms, endpoint, responders=False)
        pool.connect(300)
        extra["connect_s"] = time.monotonic() - c0
        extra["connections"] = len(pool.conns)
        extra["pool_rss_mb"] = rss_mb() - rss0
        t0, cpu0 = time.monotonic(), time.process_time()
        while sent < messages:
            batch = sim.advance(sim.now + 5_000)
            sent += pool.publish_msgs(batch)
        t_pub = time.monotonic() - t0
        pool.flush(120)
        t_acked = time.monotonic() - t0
        failed = pool.counts["failed"] + pool.counts["no_account"]
        before_close = pool.counts["acked"]
        pool.close()
    else:
        pub = FleetPublisher("127.0.0.1", port, qos=qos, max_unacked=20_000, subscribe_alerts=False).connect()
        publish = pub.publish
        t0, cpu0 = time.monotonic(), time.process_time()
        while sent < messages:
            batch = sim.advance(sim.now + 5_000)
            retained += sum(1 for m in batch if m.retain)
            for m in batch:
                body = m.body
                publish(m.topic, body if isinstance(body, bytes) else dumps(body), m.retain)
            sent += len(batch)
        t_pub = time.monotonic() - t0
        pub.flush(60)
        t_acked = time.monotonic() - t0
        pub.close()
        failed = pub.counts["failed"]
    cpu = time.process_time() - cpu0
    broker_cpu = (cpu_s(broker_pid) - broker_cpu0) if broker_pid else 0.0
    time.sleep(2.5)
    if creds is None:
        at_broker = broker_received(port) - before
        lost = sent - retained - at_broker
    else:  # no $SYS for device accounts: a PUBACK is the broker's receipt
        at_broker, lost = before_close, sent - before_close
    out = {"sent": sent, "failed": failed, "publisher_msg_s": sent / t_pub, "acked_msg_s": sent / t_acked,
           "at_broker": at_broker, "lost": lost, "cpu_ms_per_1k": 1e6 * cpu / sent,
           "broker_cpu_ms_per_1k": 1e6 * broker_cpu / sent, **extra}  # fmt: skip
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
        help="raw0 = batched QoS 0 socket writer; paho0 / paho1 = paho client at QoS 0 / 1; "
        "secure1 = a connection per device with its own password, QoS 1",
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
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        brokers: dict[str, tuple[int, int | None, Any]] = {}  # plain/secure -> (port, pid, creds)
        if args.port is not None:
            brokers["plain"] = (args.port, None, None)
        elif any(m != "secure1" for m in args.modes):
            proc, port = start_mosquitto(Path(tmp))
            procs.append(proc)
            brokers["plain"] = (port, proc.pid, None)
        if "secure1" in args.modes:
            from sesmon.contract.registry import Registry, write_registry
            from sesmon.runtime.broker_auth import write_credentials

            write_registry(units, Path(tmp) / "fleet.csv")
            creds = write_credentials(Registry.load(Path(tmp) / "fleet.csv"), Path(tmp) / "mqtt")
            (Path(tmp) / "secure").mkdir()
            proc, port = start_mosquitto(Path(tmp) / "secure", creds)
            procs.append(proc)
            brokers["secure"] = (port, proc.pid, creds)
        try:
            print(
                f"fleet {args.elevators} elevators + {args.boilers} boilers, {args.messages} messages per run"
            )
            for mode in args.modes:
                port, pid, creds = brokers["secure" if mode == "secure1" else "plain"]
                runs = [
                    one_run(port, units, mode, args.messages, 1 + r, args.subscriber, pid, creds)
                    for r in range(args.runs)
                ]
                pub_rates = [r["publisher_msg_s"] for r in runs]
                acked = [r["acked_msg_s"] for r in runs]
                line = (
                    f"{mode}: publisher {' / '.join(f'{x:,.0f}' for x in pub_rates)} msg/s "
                    f"(median {statistics.median(pub_rates):,.0f}); to the last PUBACK "
                    f"{' / '.join(f'{x:,.0f}' for x in acked)} (median {statistics.median(acked):,.0f}); "
                    f"simulator CPU {statistics.median(r['cpu_ms_per_1k'] for r in runs):.0f} ms, "
                    f"mosquitto CPU {statistics.median(r['broker_cpu_ms_per_1k'] for r in runs):.0f} ms "
                    f"per 1,000 msgs; sent {[r['sent'] for r in runs]}, "
                    f"{'non-retained lost at mosquitto' if mode != 'secure1' else 'un-acked'} "
                    f"{[r['lost'] for r in runs]}, failed {[r['failed'] for r in runs]}"
                )
                if mode == "secure1":
                    opened = " / ".join(f"{r['connect_s']:.1f}" for r in runs)
                    line += (
                        f"; {runs[0]['connections']:.0f} connections opened in {opened} s, taking "
                        f"{max(r['pool_rss_mb'] for r in runs):.0f} MiB"
                    )
                if args.subscriber:
                    e2e = [r["e2e_msg_s"] for r in runs]
                    line += (
                        f"; subscriber got {[r['received'] for r in runs]} at {[round(x) for x in e2e]} msg/s"
                    )
                print(line, flush=True)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
