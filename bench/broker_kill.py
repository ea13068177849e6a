"""What a hard kill (SIGKILL) of the embedded mosquitto loses, measured.

A QoS 1 publisher sends N readings (bounded in flight) to the embedded mosquitto
(``sesmon.runtime.services``: persistence with ``autosave_on_changes``); a persistent-session
subscriber (clean_session False, QoS 1, its own process, like the ingest bridge) counts the
distinct ``seq`` numbers. Once half the readings are acknowledged, the broker is SIGKILLed and
started again on the same port and store; the subscriber reconnects (and resubscribes), paho
re-sends the publisher's unacknowledged QoS 1 messages. A marker published last ends the
run: the broker hands one subscriber's messages over in order, so nothing is still on its way.

Printed per run: acknowledged by the broker, received by the subscriber (distinct), lost
(acknowledged, never received), duplicates, and how long the broker was down.

Usage: python bench/broker_kill.py [--messages 20000] [--runs 3] [--autosave changes:1 ...]

``--autosave changes:K`` saves the store after K changes (the shipped setting is
``changes:1``); ``seconds:S`` saves every S seconds (mosquitto's default mode, 1800 s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from sesmon.runtime.services import ManagedProcess, free_port, mosquitto_conf, mosquitto_path, start_mqtt

TOPIC = "sesmon/v1/elevator/BENCH-KILL/telemetry"
MARKER_SEQ = -1
SHIPPED = "changes:1"


def start_broker(workdir: Path, port: int, autosave: str) -> ManagedProcess:
    """The embedded broker; for another autosave setting, the same config with those two lines changed."""
    if autosave == SHIPPED:
        return start_mqtt(workdir, port=port)
    mode, value = autosave.split(":")
    conf_text = mosquitto_conf(port, workdir)
    shipped = "autosave_on_changes true\nautosave_interval 1\n"
    assert shipped in conf_text, "services.mosquitto_conf changed: update this bench"
    wanted = f"autosave_on_changes {'true' if mode == 'changes' else 'false'}\nautosave_interval {value}\n"
    conf = workdir / "mosquitto.conf"
    conf.write_text(conf_text.replace(shipped, wanted))
    binary = mosquitto_path()
    assert binary, "mosquitto is not installed"
    return ManagedProcess(
        "mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log", port=port
    ).start()


def subscriber(port: int, ready: Any, result: Any) -> None:
    """Persistent session, QoS 1; PUBACK after counting (paho acks once on_message returns)."""
    seen: Counter[int] = Counter()
    done = threading.Event()
    subscribed = threading.Event()
    reconnects = 0

    def on_connect(client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        nonlocal reconnects
        reconnects += 1
        client.subscribe(TOPIC, qos=1)  # harmless when the session survived; needed when it did not

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        seq = orjson.loads(msg.payload)["seq"]
        if seq == MARKER_SEQ:
            done.set()
        else:
            seen[seq] += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-kill-sub", clean_session=False)
    client.reconnect_delay_set(0.05, 0.5)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if subscribed.wait(30):
        ready.set()
    done.wait(300)
    client.loop_stop()
    result.put((dict(seen), done.is_set(), reconnects - 1))
    client.disconnect()


def one_run(messages: int, window: int, kill_at: float, autosave: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sesmon-broker-kill-"))
    port = free_port()
    broker = start_broker(workdir, port, autosave)
    ctx = multiprocessing.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=subscriber, args=(port, ready, result), daemon=True)
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("the subscriber did not subscribe")

    lock = threading.Condition()
    by_mid: dict[int, int] = {}
    acked: set[int] = set()
    early: set[int] = set()  # PUBACKs that beat publish() returning the mid

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with lock:
            seq = by_mid.pop(mid, None)
            if seq is None:
                early.add(mid)
            else:
                acked.add(seq)
            lock.notify_all()

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-kill-pub", clean_session=False)
    pub.max_inflight_messages_set(window)
    pub.reconnect_delay_set(0.05, 0.5)
    pub.on_publish = on_publish

    def on_connect(*_: Any) -> None:
        with lock:  # wakes the publisher waiting for the (re)connection
            lock.notify_all()

    pub.on_connect = on_connect
    pub.connect("127.0.0.1", port)
    pub.loop_start()

    refused = 0
    began = time.monotonic()
    killed_at = down_s = 0.0
    payload_pad = "x" * 200
    for seq in range(messages):
        with lock:  # bounded in flight: paho keeps the rest in memory and re-sends after a reconnect
            if not lock.wait_for(lambda: len(by_mid) < window and pub.is_connected(), 120):
                raise RuntimeError("publisher stuck")
        if not killed_at and len(acked) >= messages * kill_at:
            assert broker.proc is not None
            killed_at = time.monotonic()
            os.killpg(broker.proc.pid, signal.SIGKILL)
            broker.proc.wait(10)
            broker = start_broker(workdir, port, autosave)  # waits until the port answers
            down_s = time.monotonic() - killed_at
            with lock:
                lock.wait_for(pub.is_connected, 60)
        body = orjson.dumps(
            {"device_id": "BENCH-KILL", "seq": seq, "ts": 1_795_300_000_000, "pad": payload_pad}
        )
        info = pub.publish(TOPIC, body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            refused += 1  # paho still holds a QoS 1 message and sends it after the reconnect
        with lock:
            if info.mid in early:
                early.discard(info.mid)
                acked.add(seq)
            else:
                by_mid[info.mid] = seq
    with lock:
        all_acked = lock.wait_for(lambda: not by_mid, 120)
    elapsed_s = time.monotonic() - began
    info = pub.publish(TOPIC, orjson.dumps({"seq": MARKER_SEQ}), qos=1)
    info.wait_for_publish(60)
    seen, finished, reconnects = result.get(timeout=300)
    sub.join(10)
    pub.loop_stop()
    pub.disconnect()
    broker.stop()
    received = set(seen)
    return {
        "autosave": autosave,
        "sent": messages,
        "acked": len(acked),
        "all_acked": all_acked,
        "received": len(received),
        "lost": len(acked - received),
        "duplicates": sum(n - 1 for n in seen.values()),
        "down_s": round(down_s, 3),
        "acked_per_s": round(len(acked) / elapsed_s),
        "refused_rc": refused,
        "sub_reconnects": reconnects,
        "marker_seen": finished,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=100, help="QoS 1 publishes awaiting a PUBACK at most")
    parser.add_argument("--kill-at", type=float, default=0.5, help="kill once this share is acknowledged")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--autosave", nargs="+", default=[SHIPPED, "changes:1000", "seconds:30"])
    args = parser.parse_args()
    for autosave in args.autosave:
        rows = [one_run(args.messages, args.window, args.kill_at, autosave) for _ in range(args.runs)]
        for row in rows:
            print(orjson.dumps(row).decode(), flush=True)
        lost = [r["lost"] for r in rows]
        print(
            f"{autosave}: lost {lost} (median {statistics.median(lost)}),"
            f" duplicates {[r['duplicates'] for r in rows]}, down {[r['down_s'] for r in rows]} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
