"""End-to-end benchmark of issue 9: MQTT -> ingest -> Kafka -> Faust rules -> alerts on MQTT.

One run prints (and ends with a summary block of the numbers):

- **yardstick**: raw mosquitto QoS 1, one paho publisher -> one paho subscriber in its own
  process, on the SAME mosquitto the pipeline then uses, under the same persistence setting
  (printed beside it: ``--autosave-changes``; by default a time-based save every 30 s, as a
  production broker tuned for throughput would run; ``--autosave-changes 1`` is what
  ``sesmon demo`` ships, ~700 acked msgs/s, README);
- **end to end**: readings/s published for ``--duration`` s flat out, or paced at ``--rate R``
  or ``--rate-fraction F`` of the yardstick, counted until the worker(s) evaluated them all,
  with a timeline every 5 s and the **loss check** published = evaluated + dead-lettered from
  the stages' ``pipeline`` records (the worker's ``processed``, ingest's ``dead_lettered``,
  read at run time: a missing counter fails the run), plus a census of what lies on Kafka;
- **publish -> P1 page latency** p50/p99 (the 96333 centre's MQTT topic), measured from the
  publish of the reading that completes the condition, separately for a terminal event and
  for an instantaneous telemetry condition (``elevator.door_open_while_running``: moving, door
  open outside the door zone; one reading fires it), on units whose ``seq`` is already known
  to the worker (every unit sends two readings first, so nothing new waits out the lateness bound);
- **RSS** (and CPU) of every sesmon stage process (ingest, worker(s), alerts; not Tansu, not
  mosquitto) sampled every 5 s: first / last / max and the change in %
  (``--duration 600 --rate-fraction 0.4`` is the 10-minute flat-memory check);
- ``--worker-only``: the device topics prefilled with ``--readings`` readings as grouped records
  (``sesmon.contract.groups``, as ingest writes them), then ``sesmon worker`` process(es) started,
  readings/s until all are evaluated (from their ``pipeline`` counters); ``--workers 1,2`` runs one
  then two workers (same consumer group, one per core) and prints the ratio.

``--workers N`` runs N workers in the pipeline too; ``--ingests N`` runs N ingest processes with
``SESMON_INGEST_SHARED_GROUP=sesmon`` (MQTT shared subscription) and distinct client ids.
``--publishers N`` splits the fleet over N publisher processes (each a paho client as the
yardstick's). Flat out the default is 2: one client on the 2-core machine sets the pace, not the
pipeline (2026-11-24: one publisher got 17,400 acks/s beside the pipeline, 0.72 x raw, with a
backlog that stayed near 10,000, so the pipeline was waiting; two gave 0.84 and 0.91 x).

Usage:
  python bench/e2e.py [--duration 60] [--rate R | --rate-fraction 0.4] [--units 10000]
                      [--autosave-changes 0] [--workers 1] [--ingests 1] [--publishers 2|1]
                      [--triggers-per-s 5]
  python bench/e2e.py --worker-only [--readings 400000] [--group 100] [--workers 1,2]

Stages' logs and state stay in the directory printed at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import paho.mqtt.client as mqtt

from sesmon.app.demo import Stage
from sesmon.contract.gbt24476 import is_escalator
from sesmon.contract.groups import GROUP_COUNT_HEADER, encode_group, envelopes_of, partition_of
from sesmon.contract.registry import Unit, write_registry
from sesmon.contract.schemas import parse_mqtt
from sesmon.runtime.kafka import ensure_topics, make_producer, make_reader
from sesmon.runtime.services import ManagedProcess, free_port, mosquitto_conf, mosquitto_path, start_kafka
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet

#: publishes owed a PUBACK, at most: paho keeps 20 in flight and queues the rest in the client, so
#: this bounds how long a reading waits in the publisher before it leaves (a device has no such
#: queue) while keeping the pipe full; also far below paho's 65,535 ids (stack.md)
MAX_UNACKED = 1_000
STATS_EVERY_S = 0.5  # the stages' pipeline records, for finer timing than the default 1 s
SAMPLE_EVERY_S = 5.0  # RSS / CPU samples and timeline lines
TRIGGER_RULE = "elevator.door_open_while_running"
TRIGGER_CODE = "door_open_while_running"
ALERT_TOPIC = "sesmon/v1/alerts/centre/#"  # the 96333 centre: paged for every elevator P1
#: the stages' counters the loss check reads (names are checked at run time)
EVALUATED = ("streams", "processed")
DEAD_LETTERED = ("ingest", "dead_lettered")
INGEST_RECEIVED = ("ingest", "received")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(rank) - 1]


# --------------------------------------------------------------------------- servers


def start_mosquitto(workdir: Path, autosave_changes: int, autosave_interval_s: int) -> ManagedProcess:
    """The embedded broker's configuration (services.mosquitto_conf), persistence as asked.

    ``autosave_changes`` > 0: save after that many changes (the shipped mode); 0: save every
    ``autosave_interval_s`` seconds instead (mosquitto's own mode, what a broker tuned for
    throughput runs; a SIGKILL then loses what was acked since the last save, README).
    """
    binary = mosquitto_path()
    if binary is None:
        raise SystemExit("mosquitto is not installed: the yardstick and the pipeline need it")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    text = mosquitto_conf(port, workdir, autosave_changes=max(autosave_changes, 1))
    if autosave_changes <= 0:
        shipped = "autosave_on_changes true\nautosave_interval 1\n"
        if shipped not in text:
            raise SystemExit(
                "sesmon.runtime.services.mosquitto_conf changed its autosave lines: update this bench"
            )
        text = text.replace(shipped, f"autosave_on_changes false\nautosave_interval {autosave_interval_s}\n")
    conf = workdir / "mosquitto.conf"
    conf.write_text(text)
    return ManagedProcess(
        "mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log", port=port
    ).start()


def persistence_label(autosave_changes: int, autosave_interval_s: int) -> str:
    if autosave_changes > 0:
        n = autosave_changes
        return f"--autosave-changes {n}: mosquitto saves its store after {n} change(s) (autosave_on_changes)"
    return (
        f"--autosave-changes 0: mosquitto saves its store every {autosave_interval_s} s "
        f"(autosave_on_changes false, autosave_interval {autosave_interval_s})"
    )


# --------------------------------------------------------------------------- MQTT


class Publisher:
    """One paho QoS 1 publisher (the yardstick's and the fleet's), at most MAX_UNACKED owed."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.outstanding: deque[mqtt.MQTTMessageInfo] = deque()
        self.count = 0

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish refused rc={info.rc}")
        self.count += 1
        self.outstanding.append(info)
        if len(self.outstanding) >= MAX_UNACKED:
            self.outstanding[len(self.outstanding) // 2].wait_for_publish(60)
            while self.outstanding and self.outstanding[0].is_published():
                self.outstanding.popleft()

    def flush(self, timeout: float = 120.0) -> None:
        """Wait for every PUBACK: the broker then holds everything published."""
        deadline = time.monotonic() + timeout
        while self.outstanding:
            self.outstanding[0].wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not self.outstanding[0].is_published():
                raise RuntimeError(f"{len(self.outstanding)} publishes never acknowledged")
            self.outstanding.popleft()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
    done.wait(600)
    result.put((received, time.time()))
    sub.disconnect()


def measure_yardstick(port: int, count: int) -> float:
    """Raw mosquitto QoS 1 msg/s: one paho publisher -> one subscriber process, ~300-byte JSON.

    Rate = messages received / (last receive - first publish), as stack.md §1 measured it.
    """
    ctx = multiprocessing.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_raw_subscriber, args=(port, count, ready, result), daemon=True)
    proc.start()
    if not ready.wait(20):
        raise RuntimeError("raw subscriber never subscribed")
    pub = Publisher(port, "bench-raw-pub")
    payload = orjson.dumps({"device_id": "GZE0000001", "ts": 1795299000000, "seq": 1, "pad": "x" * 230})
    t0 = time.time()
    for _ in range(count):
        pub.publish("bench/raw", payload)
    pub.flush()
    received, t_last = result.get(timeout=600)
    proc.join(10)
    pub.close()
    if received != count:
        raise RuntimeError(f"raw MQTT lost messages: {received}/{count}")
    return count / (t_last - t0)


def _alert_watcher(port: int, ready: Any, arrivals: Any) -> None:
    """Own process: the time each P1 page of the trigger rule reaches the 96333 centre's topic.

    Keyed by (device_id, opened_at): ``opened_at`` is the device time of the reading that
    opened the condition, which the publisher recorded with its publish time.
    """

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        at = time.time()
        alert = orjson.loads(msg.payload)
        if (
            alert.get("rule") == TRIGGER_RULE
            and alert.get("state") == "firing"
            and alert.get("change", "opened") == "opened"  # the first page, not an escalation
        ):
            arrivals.put((alert["device_id"], int(alert["opened_at"]), at))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-alert-watcher")
    client.on_message = on_message
    client.on_subscribe = lambda *_: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe(ALERT_TOPIC, qos=1)
    client.loop_forever()


class AlertWatcher:
    """The watcher process and a thread here that collects its arrivals."""

    def __init__(self, port: int) -> None:
        ctx = multiprocessing.get_context("fork")
        ready, self._queue = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_alert_watcher, args=(port, ready, self._queue), daemon=True)
        self.proc.start()
        if not ready.wait(20):
            raise RuntimeError("alert watcher never subscribed")
        self.arrived: dict[tuple[str, int], float] = {}
        threading.Thread(target=self._collect, name="alert-arrivals", daemon=True).start()

    def _collect(self) -> None:
        while True:
            device_id, opened_at, at = self._queue.get()
            self.arrived.setdefault((device_id, opened_at), at)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# --------------------------------------------------------------------------- the fleet's messages


@dataclass
class Trigger:
    """A reading that completes a P1 condition: its unit, device time, path and publish time."""

    device_id: str
    ts: int
    path: str  # "event" or "telemetry"
    sent: float = 0.0


class Fleet:
    """Round-robin readings of in-use lifts, each unit numbering its messages (``seq``).

    A unit alternates stopped at a landing (door closed, empty car) and moving (door closed),
    which fires no rule; half the units are moving at any time. A trigger takes the slot of a
    unit whose previous reading was moving (so it is not ``unintended_movement`` instead):
    door open outside the door zone while moving (telemetry), or the terminal's
    ``door_open_while_running`` event; the unit's next message clears it again (door closed; a
    ``recover`` event after an event). Each unit takes at most one trigger, so flap damping
    (3 openings in 10 min hold an alert open) never swallows a page.
    """

    def __init__(self, units: list[Unit]) -> None:
        lifts = [
            u
            for u in units
            if u.kind == "elevator" and u.status == "in_use" and not is_escalator(u.type_code)
        ]
        if not lifts:
            raise SystemExit("the fleet has no lift in use")
        self.ids = [u.device_id for u in lifts]
        self.speed = [float(u.rated_speed_mps or 1.0) for u in lifts]
        self.sent = [0] * len(lifts)  # messages sent per unit; the next seq is sent + 1
        self.recover: set[int] = set()  # units whose last message was a trigger event
        self.triggered: set[int] = set()
        self.order = list(range(len(self.ids)))  # the units this process publishes, in turn
        self.at = 0

    def __len__(self) -> int:
        return len(self.ids)

    def share(self, index: int, of: int) -> None:
        """From now on, only the units ``index``, ``index + of``, ...: publisher processes forked
        with a copy of this fleet each take their own units, so no unit's ``seq`` is sent twice."""
        self.order = list(range(index, len(self.ids), of))
        self.at = 0

    def message(self, ts: int, trigger: str | None = None) -> tuple[str, bytes, Trigger | None]:
        """The next unit's next message at device time ``ts``; a trigger of path ``trigger``
        when this unit can take one (else a plain reading: the caller asks again)."""
        n = self.order[self.at]
        self.at = (self.at + 1) % len(self.order)
        device, k = self.ids[n], self.sent[n]
        self.sent[n] = k + 1
        head: dict[str, Any] = {"device_id": device, "ts": ts, "seq": k + 1}
        if n in self.recover:
            self.recover.discard(n)
            body = head | {"code": TRIGGER_CODE, "state": "recover", "detail": {}}
            return f"sesmon/v1/elevator/{device}/event", orjson.dumps(body), None
        moving = (k + n) % 2 == 1
        if trigger is not None and k >= 2 and not moving and n not in self.triggered:  # k - 1 was moving
            self.triggered.add(n)
            if trigger == "event":
                self.recover.add(n)
                body = head | {"code": TRIGGER_CODE, "state": "occur", "detail": {}}
                return f"sesmon/v1/elevator/{device}/event", orjson.dumps(body), Trigger(device, ts, "event")
            body = head | {
                "moving": True,
                "direction": "up",
                "door": "open",
                "door_zone": False,
                "speed_mps": round(self.speed[n] * 0.5, 2),
                "load_pct": 40.0,
                "occupied": True,
                "floor": k % 20,
            }
            return (
                f"sesmon/v1/elevator/{device}/telemetry",
                orjson.dumps(body),
                Trigger(device, ts, "telemetry"),
            )
        body = head | {
            "moving": moving,
            "direction": "up" if moving else "none",
            "door": "closed",
            "door_zone": not moving,
            "speed_mps": round(self.speed[n] * 0.9, 2) if moving else 0.0,
            "load_pct": 40.0 if moving else 0.0,
            "occupied": moving,
            "floor": k % 20,
        }
        return f"sesmon/v1/elevator/{device}/telemetry", orjson.dumps(body), None


# --------------------------------------------------------------------------- the stages' counters


class StatsReader:
    """Reads the ``pipeline`` topic in a thread: each stage process's latest record and history.

    Records are told apart by stage and pid (``health.pid``), so N ingests or workers add up.
    """

    def __init__(self, settings: Settings, track: tuple[str, ...] = ("processed",)) -> None:
        self.reader = make_reader(settings, ["pipeline"])
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}
        self.track = track
        self.history: dict[tuple[str, int], list[tuple[float, dict[str, Any]]]] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stats-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for record in self.reader.consume(500, 0.2):
                if record.error():
                    continue
                stats = orjson.loads(record.value())
                key = (str(stats.get("stage")), int(stats.get("health", {}).get("pid", 0)))
                self.latest[key] = stats
                self.history.setdefault(key, []).append(
                    (stats["at"] / 1000, {k: stats[k] for k in self.track if k in stats})
                )
        self.reader.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)

    def records(self, stage: str, pids: set[int] | None = None) -> list[dict[str, Any]]:
        return [
            s for (st, pid), s in list(self.latest.items()) if st == stage and (pids is None or pid in pids)
        ]

    def total(self, counter: tuple[str, str], pids: set[int] | None = None) -> int:
        """The counter summed over the stage's processes (0 for one that has not counted yet)."""
        stage, key = counter
        return sum(int(s.get(key, 0)) for s in self.records(stage, pids))

    def require(self, counter: tuple[str, str], pids: set[int] | None = None, timeout: float = 15.0) -> None:
        """Fail loudly when no record of the stage carries the counter (renamed? not published?)."""
        stage, key = counter
        deadline = time.monotonic() + timeout
        while not any(key in s for s in self.records(stage, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        found = self.records(stage, pids)
        if not any(key in s for s in found):
            keys = sorted({k for s in found for k in s if not isinstance(s[k], dict)})
            raise SystemExit(
                f"the {stage!r} stage's pipeline records carry no {key!r} counter "
                f"({len(found)} process(es) reporting; counters seen: {keys}). The loss check needs it."
            )

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)


# --------------------------------------------------------------------------- processes: RSS and CPU


def proc_rss_cpu(pid: int) -> tuple[int, float] | None:
    """(RSS in kB, CPU seconds used) of a live process, from /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


@dataclass
class Sample:
    at: float
    rss_kb: int
    cpu_s: float


@dataclass
class ProcessSamples:
    label: str
    pid: int
    samples: list[Sample] = field(default_factory=list)

    def take(self) -> None:
        got = proc_rss_cpu(self.pid)
        if got is not None:
            self.samples.append(Sample(time.time(), *got))

    def summary(self) -> str:
        s = self.samples
        if len(s) < 2:
            return f"{self.label:<10} pid {self.pid}: not enough samples"
        first, last = s[0].rss_kb / 1024, s[-1].rss_kb / 1024
        peak = max(x.rss_kb for x in s) / 1024
        cpu = (s[-1].cpu_s - s[0].cpu_s) / (s[-1].at - s[0].at) * 100
        middle = min(s, key=lambda x: abs(x.at - (s[0].at + s[-1].at) / 2)).rss_kb / 1024
        # a cold stage fills its bounded buffers in the first minute (archive, memtables, unit cache):
        # growth after it is what a leak would show (docs/scaling.md, memory)
        settled = [x.rss_kb / 1024 for x in s if x.at >= s[0].at + 60]
        after = ""
        if s[-1].at - s[0].at >= 120:  # at least a minute after the first one
            after = f", after the first minute {(last - settled[0]) / settled[0] * 100:+5.1f} %"
        return (
            f"{self.label:<10} pid {self.pid:<7} RSS first {first:7.1f} MB  last {last:7.1f} MB  "
            f"max {peak:7.1f} MB  change {(last - first) / first * 100:+6.1f} % "
            f"(second half {(last - middle) / middle * 100:+5.1f} %{after})   "
            f"CPU {cpu:5.1f} % of a core ({len(s)} samples over {s[-1].at - s[0].at:.0f} s)\n"
            f"{'':<10} RSS each minute (MB): {self.per_minute()}"
        )

    def per_minute(self) -> str:
        """RSS at the start and then at each whole minute of the window: whether it levels off."""
        start, marks, next_at = self.samples[0].at, [], self.samples[0].at
        for sample in self.samples:
            if sample.at >= next_at:
                marks.append(f"{sample.rss_kb / 1024:.0f}")
                next_at = start + 60 * len(marks)
        if self.samples[-1].at > start + 60 * (len(marks) - 1) + SAMPLE_EVERY_S:
            marks.append(f"{self.samples[-1].rss_kb / 1024:.0f} (end)")
        return " ".join(marks)


class Sampler:
    """Samples every stage process's RSS and CPU every SAMPLE_EVERY_S from a thread."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = [ProcessSamples(label, pid) for label, pid in procs.items()]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> Sampler:
        for p in self.procs:
            p.take()
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for p in self.procs:
                p.take()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(SAMPLE_EVERY_S + 1)
        for p in self.procs:
            p.take()


# --------------------------------------------------------------------------- the pipeline's processes


class Pipeline:
    """``sesmon alerts``, ``sesmon worker`` x W and ``sesmon ingest`` x I, as production runs them."""

    def __init__(self, env: dict[str, str], work: Path, workers: int, ingests: int) -> None:
        self.stages: list[Stage] = []
        self.labels: dict[str, Stage] = {}
        common = {**env, "SESMON_STATS_EVERY_S": str(STATS_EVERY_S)}
        plan: list[tuple[str, str, dict[str, str]]] = [("alerts", "alerts", {})]
        plan += [(f"worker-{n + 1}", "worker", {}) for n in range(workers)]
        for n in range(ingests):  # several: one MQTT shared subscription, a client id (session) each
            shared = {
                "SESMON_INGEST_SHARED_GROUP": "sesmon",
                "SESMON_MQTT_CLIENT_ID": f"sesmon-ingest-{n + 1}",
            }
            plan.append((f"ingest-{n + 1}", "ingest", shared if ingests > 1 else {}))
        for label, command, extra in plan:
            stage_env = {**common, "SESMON_DATA_DIR": str(work / f"state-{label}"), **extra}
            stage = Stage(label, [command], stage_env, work / "logs" / f"{label}.log").start()
            self.stages.append(stage)
            self.labels[label] = stage

    def pids(self, prefix: str = "") -> dict[str, int]:
        return {label: s.proc.pid for label, s in self.labels.items() if label.startswith(prefix) and s.proc}

    def check_alive(self) -> None:
        for label, stage in self.labels.items():
            if not stage.alive:
                raise SystemExit(
                    f"stage {label} exited ({stage.proc and stage.proc.returncode})\n{stage.log_tail()}"
                )

    def stop(self) -> None:
        for stage in reversed(self.stages):
            stage.stop()


# --------------------------------------------------------------------------- Kafka census


def kafka_census(
    settings: Settings,
    streams: list[str],
    expected: int,
    idle_s: float = 3.0,
    stamps: dict[tuple[str, int], float] | None = None,
) -> dict[str, int]:
    """What lies on the device topics: records, envelopes in them, distinct (device, seq).
    ``stamps``: (device, ts) -> 0 for the readings wanted; filled with the time (s) ingest
    produced the record carrying each."""
    reader = make_reader(settings, streams)
    records = envelopes = 0
    seen: set[tuple[str, int]] = set()
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s or (envelopes < expected and time.monotonic() - last < 30):
            batch = reader.consume(2000, 0.5)
            for record in batch:
                if record.error():
                    continue
                last = time.monotonic()
                records += 1
                for env in envelopes_of(record.value()):
                    envelopes += 1
                    seen.add((env.get("device_id"), env.get("seq")))
                    if stamps and (env.get("device_id"), env.get("ts")) in stamps:
                        stamps[(env["device_id"], env["ts"])] = record.timestamp()[1] / 1000
    finally:
        reader.close()
    return {"records": records, "envelopes": envelopes, "distinct": len(seen)}


def alert_records(settings: Settings) -> Iterator[tuple[dict[str, Any], float]]:
    """Every alert change on the alerts topic with the time (s) the worker produced it, until
    the topic has been quiet for 2 s."""
    reader = make_reader(settings, ["alerts"])
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 2.0:
            for record in reader.consume(1000, 0.5):
                if record.error():
                    continue
                idle_since = time.monotonic()
                yield orjson.loads(record.value()), record.timestamp()[1] / 1000
    finally:
        reader.close()


def alert_stamps(settings: Settings, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], float]:
    """(device, opened_at) -> when the worker produced the alert (its first record), in seconds."""
    found: dict[tuple[str, int], float] = {}
    for alert, produced in alert_records(settings):
        key = (alert.get("device_id"), alert.get("opened_at"))
        if key in wanted and key not in found:
            found[key] = produced
    return found


def slowest_lines(result: E2EResult, n: int = 5) -> list[str]:
    """Where the slowest pages spent their time: publish -> on Kafka (ingest) -> alert on Kafka
    (worker) -> page (alerts stage and MQTT), from the records' Kafka timestamps."""
    rows = sorted(result.hops, key=lambda h: h[-1] - h[1], reverse=True)[:n]
    lines = [f"  the {len(rows)} slowest pages: publish -> ingest produced -> worker produced -> paged (ms)"]

    def ms(a: float, b: float) -> str:
        return f"{(b - a) * 1000:7,.0f}" if a and b else "      ?"

    for path, sent, ingested, raised, paged in rows:
        lines.append(
            f"    {path:<9} at t={sent - result.t0:5.1f} s: ingest {ms(sent, ingested)}  worker "
            f"{ms(ingested, raised)}  alerts {ms(raised, paged)}  total {ms(sent, paged)}"
        )
    return lines


def explain_missing(settings: Settings, missing: list[Trigger]) -> str:
    """Where the pages that never came were lost: raised by the worker (on the alerts topic) or not."""
    wanted = {(t.device_id, t.ts) for t in missing}
    devices = {t.device_id for t in missing}
    raised: set[tuple[str, int]] = set()
    other: set[str] = set()
    for alert, _ in alert_records(settings):
        key = (alert.get("device_id"), alert.get("opened_at"))
        if alert.get("rule") != TRIGGER_RULE or key[0] not in devices:
            continue
        if key in wanted:
            raised.add(key)
        else:
            other.add(key[0])
    examples = ", ".join(f"{t.path} {t.device_id}@{t.ts}" for t in missing[:4])
    return (
        f"{len(missing)} without a page (e.g. {examples}): {len(raised)} raised by the worker "
        f"(on the alerts topic) but not paged, {len(missing) - len(raised)} never raised "
        f"({len(other & {t.device_id for t in missing if (t.device_id, t.ts) not in raised})} of "
        f"those units have an alert of the rule opened at another time)"
    )


# --------------------------------------------------------------------------- end to end


@dataclass
class E2EResult:
    published: int = 0  # every device message the bench published (warm-up, probe, bad one included)
    measured: int = 0  # published in the measured window
    window_s: float = 0.0  # publishing time of the measured window
    rate: float = 0.0  # measured readings / (all evaluated - first publish)
    evaluated: int = 0
    dead_lettered: int = 0
    ingest_received: int = 0
    drained: bool = False
    latencies: dict[str, list[float]] = field(default_factory=dict)
    wanted: dict[str, int] = field(default_factory=dict)
    census: dict[str, int] = field(default_factory=dict)
    missing: str = ""  # why pages did not come, if some did not
    processes: list[ProcessSamples] = field(default_factory=list)
    t0: float = 0.0  # when the measured window began (time.time())
    hops: list[tuple[str, float, float, float, float]] = field(default_factory=list)  # see slowest_lines


def warm_up(pub: Publisher, fleet: Fleet, stats: StatsReader, watcher: AlertWatcher, logs: Path) -> None:
    """Every unit's first two readings (15 s apart in device time, so the worker knows each
    unit's ``seq`` from then on), one not-JSON message (dead-lettered: ingest's counter must
    exist), then one trigger, until its page arrives: the whole chain answers."""
    now = int(time.time() * 1000)
    for ts in (now - 16_000, now - 1_000):
        for _ in range(len(fleet)):
            topic, payload, _ = fleet.message(ts)
            pub.publish(topic, payload)
    pub.publish(f"sesmon/v1/elevator/{fleet.ids[0]}/telemetry", b"{not json")
    pub.flush()
    log(f"warm-up: {pub.count:,} messages published (2 per unit, 1 bad); waiting for a page")
    started = time.monotonic()
    while time.monotonic() - started < 180:
        trigger = None
        while trigger is None:
            topic, payload, trigger = fleet.message(int(time.time() * 1000), "telemetry")
            pub.publish(topic, payload)
        pub.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (trigger.device_id, trigger.ts) not in watcher.arrived:
            time.sleep(0.1)
        if (trigger.device_id, trigger.ts) in watcher.arrived:
            log(f"pipeline answers: first page after {time.monotonic() - started:.1f} s")
            return
    raise SystemExit(f"no page after 180 s; see the logs in {logs}")


def settle_ticks(stats: StatsReader, warmed_at: float, lateness_s: float = 10.0) -> None:
    """Let the worker's deadman ticks of the warm-up pass before measuring (steady state).

    A new unit's first reading waits out the lateness bound once, so ~lateness_s after the
    warm-up the worker sends deadman ticks for the units with readings held (its ``ticks``
    counter) and evaluates them (``ticks_processed``): start-up, not the steady state measured.
    """
    ticks, done = ("streams", "ticks"), ("streams", "ticks_processed")
    deadline = time.monotonic() + 180
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        sent, evaluated = stats.total(ticks), stats.total(done)
        if sent != last:
            last, stable_since = sent, time.monotonic()
        quiet = time.monotonic() - stable_since > 3.0 and evaluated >= sent
        if quiet and time.monotonic() - warmed_at > lateness_s + 2.0:
            log(f"warm-up ticks settled: {sent:,} deadman ticks sent, {evaluated:,} evaluated")
            return
        time.sleep(0.2)
    log(f"warning: the worker's ticks never settled ({last:,} sent); measuring anyway")


def wait_drained(stats: StatsReader, published: int, pipeline: Pipeline, stall_s: float = 120.0) -> bool:
    """Until evaluated + dead-lettered reaches ``published``; False if nothing moves for ``stall_s``."""
    last_value, last_move, next_line = -1, time.monotonic(), time.monotonic() + SAMPLE_EVERY_S
    while True:
        done = stats.total(EVALUATED) + stats.total(DEAD_LETTERED)
        if done >= published:
            return True
        if done != last_value:
            last_value, last_move = done, time.monotonic()
        elif time.monotonic() - last_move > stall_s:
            return False
        if time.monotonic() >= next_line:
            next_line += SAMPLE_EVERY_S
            log(f"  draining: {done:,} of {published:,} evaluated or dead-lettered")
            pipeline.check_alive()
        time.sleep(0.1)


def _extra_publisher(
    port: int, fleet: Fleet, index: int, of: int, until: float, counter: Any, done: Any
) -> None:
    """A forked publisher process: its share of the units, flat out until ``until`` (wall time)."""
    fleet.share(index, of)
    pub = Publisher(port, f"bench-devices-{index}")
    while (now := time.time()) < until:
        topic, payload, _ = fleet.message(int(now * 1000))
        pub.publish(topic, payload)
        if pub.count % 100 == 0:
            with counter.get_lock():
                counter.value += 100
    pub.flush()
    done.put(pub.count)
    pub.close()


class ExtraPublishers:
    """``--publishers N``: N - 1 more publisher processes beside the main one, forked with a copy
    of the warmed-up fleet, so the load is not one paho client's (20 messages in flight, and a
    thread that waits its turn on a busy machine) but several, as a fleet's terminals are."""

    def __init__(self, port: int, fleet: Fleet, of: int, duration: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.counter, self.done = ctx.Value("q", 0), ctx.Queue()
        until = time.time() + duration
        self.procs = [
            ctx.Process(
                target=_extra_publisher,
                args=(port, fleet, index, of, until, self.counter, self.done),
                daemon=True,
            )
            for index in range(1, of)
        ]
        for proc in self.procs:
            proc.start()

    @property
    def published(self) -> int:
        """Roughly (in hundreds) what the extra publishers sent so far: the progress lines."""
        return int(self.counter.value)

    def join(self) -> int:
        """Every extra publisher flushed (each PUBACK in): what they published in all."""
        total = sum(self.done.get(timeout=300) for _ in self.procs)
        for proc in self.procs:
            proc.join(30)
        return total


def publish_window(
    pub: Publisher,
    fleet: Fleet,
    stats: StatsReader,
    duration: float,
    rate: float,
    triggers_per_s: float,
    sampler: Sampler,
    extra: ExtraPublishers | None = None,
) -> tuple[list[Trigger], float, float]:
    """Publish for ``duration`` s (paced at ``rate``/s, or flat out), a trigger every
    1/``triggers_per_s`` s alternating event and telemetry; a timeline line every 5 s.
    ``extra``: publisher processes sending their units' readings flat out meanwhile."""
    triggers: list[Trigger] = []
    extra_count = (lambda: extra.published) if extra is not None else (lambda: 0)
    line_extra = 0
    paths = ("event", "telemetry")
    t0 = time.time()
    next_trigger, next_line = t0 + 1.0 / triggers_per_s, t0 + SAMPLE_EVERY_S
    sent = 0
    line_sent, line_received = 0, stats.total(INGEST_RECEIVED)
    line_done = stats.total(EVALUATED) + stats.total(DEAD_LETTERED)
    while True:
        now = time.time()
        if now - t0 >= duration:
            break
        if rate and sent % 20 == 0:
            ahead = t0 + sent / rate - now
            if ahead > 0:
                time.sleep(ahead)
                now = time.time()
        want = paths[len(triggers) % 2] if now >= next_trigger else None
        topic, payload, trigger = fleet.message(int(now * 1000), want)
        if trigger is not None:
            trigger.sent = time.time()
            triggers.append(trigger)
            next_trigger += 1.0 / triggers_per_s
        pub.publish(topic, payload)
        sent += 1
        if now >= next_line:
            received = stats.total(INGEST_RECEIVED)
            done = stats.total(EVALUATED) + stats.total(DEAD_LETTERED)
            rss = sum(p.samples[-1].rss_kb for p in sampler.procs if p.samples) / 1024
            others = extra_count()
            log(
                f"  t={now - t0:4.0f} s  published "
                f"{(sent + others - line_sent - line_extra) / SAMPLE_EVERY_S:7,.0f}/s  "
                f"ingested {(received - line_received) / SAMPLE_EVERY_S:7,.0f}/s  "
                f"evaluated {(done - line_done) / SAMPLE_EVERY_S:7,.0f}/s  "
                f"backlog {pub.count + others - done:8,}  stages' RSS {rss:,.0f} MB"
            )
            line_sent, line_received, line_done, line_extra = sent, received, done, others
            next_line += SAMPLE_EVERY_S
    pub.flush()
    return triggers, t0, time.time()


def measure_e2e(
    args: argparse.Namespace, work: Path, mqtt_port: int, kafka_port: int, rate: float
) -> E2EResult:
    watcher = AlertWatcher(mqtt_port)  # a fork: before this process starts any Kafka client's threads
    units = generate_fleet(args.units, 0, seed=5)
    registry = work / "registry.csv"
    write_registry(units, registry)
    fleet = Fleet(units)
    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}", kafka_url=f"127.0.0.1:{kafka_port}")
    ensure_topics(settings)
    env = {
        "SESMON_MQTT_URL": settings.mqtt_url or "",
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_REGISTRY": str(registry),
    }
    result = E2EResult()
    stats = StatsReader(settings)
    pipeline = Pipeline(env, work, args.workers[0], args.ingests)
    pub = Publisher(mqtt_port, "bench-devices")
    try:
        ingest_pids = set(pipeline.pids("ingest").values())
        stats.wait(
            lambda: sum(bool(s.get("mqtt_connected")) for s in stats.records("ingest")) >= len(ingest_pids),
            120,
            "every ingest to report its MQTT subscription",
        )
        warm_up(pub, fleet, stats, watcher, work / "logs")
        warmed_at = time.monotonic()
        stats.require(EVALUATED)
        stats.require(DEAD_LETTERED)
        if not wait_drained(stats, pub.count, pipeline):
            raise SystemExit("the warm-up never drained: see the logs")
        settle_ticks(stats, warmed_at)
        log(
            f"warm-up drained ({pub.count:,} evaluated or dead-lettered); measuring for {args.duration:.0f} s"
        )

        sampler = Sampler(pipeline.pids()).start()
        before = pub.count
        extra = None
        if args.publishers > 1:  # forked now: a copy of the warmed-up fleet, each its own units
            extra = ExtraPublishers(mqtt_port, fleet, args.publishers, args.duration)
            fleet.share(0, args.publishers)
        triggers, t0, t_end = publish_window(
            pub, fleet, stats, args.duration, rate, args.triggers_per_s, sampler, extra
        )
        extra_published = extra.join() if extra is not None else 0
        t_end = max(t_end, time.time()) if extra is not None else t_end  # their last PUBACK
        published = pub.count + extra_published
        result.measured, result.window_s, result.published = published - before, t_end - t0, published
        log(f"published {result.measured:,} in {result.window_s:.1f} s; waiting until all are evaluated")
        result.drained = wait_drained(stats, published, pipeline)
        t_done = max((s["at"] / 1000 for s in stats.records("streams")), default=time.time())
        sampler.stop()
        result.processes = sampler.procs
        result.rate = result.measured / max(t_done - t0, 1e-3)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            (t.device_id, t.ts) not in watcher.arrived for t in triggers
        ):
            time.sleep(0.2)
        missing = [t for t in triggers if (t.device_id, t.ts) not in watcher.arrived]
        if missing:
            result.missing = explain_missing(settings, missing)
        for path in ("event", "telemetry"):
            mine = [t for t in triggers if t.path == path]
            result.wanted[path] = len(mine)
            result.latencies[path] = sorted(
                (watcher.arrived[(t.device_id, t.ts)] - t.sent) * 1000
                for t in mine
                if (t.device_id, t.ts) in watcher.arrived
            )
        time.sleep(2 * STATS_EVERY_S)  # the last records of every stage
        result.evaluated = stats.total(EVALUATED)
        result.dead_lettered = stats.total(DEAD_LETTERED)
        result.ingest_received = stats.total(INGEST_RECEIVED)
        stamps = {(t.device_id, t.ts): 0.0 for t in triggers}
        result.census = kafka_census(
            settings, ["telemetry", "events"], result.published - result.dead_lettered, stamps=stamps
        )
        raised = alert_stamps(settings, set(stamps))
        result.t0 = t0
        result.hops = [
            (t.path, t.sent, stamps[key], raised.get(key, 0.0), watcher.arrived[key])
            for t in triggers
            if (key := (t.device_id, t.ts)) in watcher.arrived
        ]
    finally:
        pub.close()
        watcher.stop()
        stats.stop()
        pipeline.stop()
    return result


# --------------------------------------------------------------------------- worker alone


def prefill(settings: Settings, fleet: Fleet, readings: int, group: int) -> int:
    """``readings`` readings as ingest writes them: validated envelopes (``parse_mqtt``), ``group``
    per record of one partition (``partition_of``); device time 10 readings per ms up to now,
    each received 50 ms after its device time."""
    producer = make_producer(settings)
    streams = {"telemetry": settings.topic("telemetry"), "event": settings.topic("events")}
    base = int(time.time() * 1000) - readings // 10
    open_groups: dict[tuple[str, int], list[bytes]] = {}
    records = 0

    def flush(key: tuple[str, int]) -> None:
        nonlocal records
        items = open_groups.pop(key)
        headers = [(GROUP_COUNT_HEADER, str(len(items)).encode())]
        while True:
            try:
                producer.produce(key[0], encode_group(items), partition=key[1], headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        records += 1

    for i in range(readings):
        ts = base + i // 10
        topic, payload, _ = fleet.message(ts)
        env = parse_mqtt(topic, payload, ts + 50)
        key = (
            streams[topic.rsplit("/", 1)[1]],
            partition_of(env.device_id.encode(), settings.kafka_partitions),
        )
        open_groups.setdefault(key, []).append(orjson.dumps(env.model_dump(mode="json")))
        if len(open_groups[key]) >= group:
            flush(key)
    for key in list(open_groups):
        flush(key)
    if producer.flush(300):
        raise SystemExit("the prefill did not reach Kafka")
    return records


@dataclass
class WorkerResult:
    workers: int
    processed: int
    rate: float
    shares: list[int]
    extra: dict[str, int]
    processes: list[ProcessSamples]
    together_rate: float = 0.0  # readings/s while every worker evaluated (see run_workers)
    together_s: float = 0.0


def _processed_at(points: list[tuple[float, int]], at: float) -> float:
    """A worker's evaluated count at time ``at``, interpolated between its stats records."""
    before = [(t, p) for t, p in points if t <= at]
    after = [(t, p) for t, p in points if t >= at]
    if not before:
        return float(points[0][1])
    if not after:
        return float(points[-1][1])
    (t0, p0), (t1, p1) = before[-1], after[0]
    return p0 + (p1 - p0) * ((at - t0) / (t1 - t0) if t1 > t0 else 0.0)


def run_workers(
    settings: Settings, env: dict[str, str], work: Path, count: int, readings: int
) -> WorkerResult:
    """``count`` workers in a fresh consumer group on the prefilled topics, until all is evaluated.

    Rate = readings evaluated after each worker's first record with any / (last change of any
    worker's counter - the earliest first record): Faust's start-up is not counted.
    """
    app_id = f"bench-worker-{count}-{time.monotonic_ns()}"
    stats = StatsReader(settings)
    stages = []
    for n in range(count):
        label = f"{app_id}-{n + 1}"
        stage_env = {
            **env,
            "SESMON_FAUST_APP_ID": app_id,
            "SESMON_DATA_DIR": str(work / f"state-{label}"),
            "SESMON_STATS_EVERY_S": str(STATS_EVERY_S),
        }
        stages.append(Stage(label, ["worker"], stage_env, work / "logs" / f"{label}.log").start())
    pids = {s.proc.pid for s in stages if s.proc}
    sampler = Sampler({f"worker-{n + 1}": s.proc.pid for n, s in enumerate(stages) if s.proc})
    try:
        stats.require(EVALUATED, pids, timeout=180)  # Faust joins its group within seconds
        sampler.start()  # from the first evaluation on: start-up memory is not growth
        stable_since, last_total = time.monotonic(), -1
        while True:
            total = stats.total(EVALUATED, pids)
            if total != last_total:
                stable_since, last_total = time.monotonic(), total
            idle_s = time.monotonic() - stable_since
            if total >= readings and idle_s > 4 * STATS_EVERY_S:
                break  # all evaluated, and no worker is still counting (re-evaluations after a rebalance)
            if idle_s > 120:
                raise SystemExit(f"the workers stopped at {total:,} of {readings:,} readings evaluated")
            for stage in stages:
                if not stage.alive:
                    raise SystemExit(f"worker exited\n{stage.log_tail()}")
            time.sleep(0.2)
        sampler.stop()
        first_at, last_at, counted, shares = [], [], 0, []
        histories = []
        for pid in pids:
            points = [
                (at, c["processed"])
                for at, c in stats.history.get(("streams", pid), [])
                if c.get("processed")
            ]
            if not points:
                shares.append(0)
                continue
            final = points[-1][1]
            first_at.append(points[0][0])
            last_at.append(next(at for at, p in points if p == final))
            counted += final - points[0][1]
            shares.append(final)
            histories.append(points)
        # all together: from the last worker's first evaluation to the first worker's last one
        # (a worker joining late costs the others a rebalance; this is the rate while all work)
        t_from, t_to = max(first_at), min(last_at)
        together = sum(_processed_at(h, t_to) - _processed_at(h, t_from) for h in histories)
        together_rate = together / (t_to - t_from) if t_to - t_from >= 2 else 0.0
        extra = {
            key: sum(int(s.get(key, 0)) for s in stats.records("streams", pids))
            for key in (
                "records",
                "ticks_processed",
                "rebalances",
                "batches_abandoned",
                "state_writes",
                "state_bucket_writes",
                "checkpoints",
                "alerts_firing",
                "alerts_cleared",
                "hazards",
                "ticks",
            )
        }
        return WorkerResult(
            count,
            last_total,
            counted / max(max(last_at) - min(first_at), 1e-3),
            sorted(shares),
            extra,
            sampler.procs,
            together_rate,
            max(0.0, t_to - t_from),
        )
    finally:
        stats.stop()
        for stage in stages:
            stage.stop()


# --------------------------------------------------------------------------- summary


def latency_lines(result: E2EResult) -> list[str]:
    lines = []
    for path, name in (("event", "terminal event"), ("telemetry", "telemetry (instantaneous rule)")):
        got, wanted = result.latencies.get(path, []), result.wanted.get(path, 0)
        if got:
            lines.append(
                f"  publish -> P1 page, {name:<30}: p50 {statistics.median(got):7,.0f} ms  "
                f"p99 {percentile(got, 99):7,.0f} ms  max {got[-1]:7,.0f} ms  ({len(got)}/{wanted} pages)"
            )
        else:
            lines.append(f"  publish -> P1 page, {name:<30}: none of {wanted} arrived")
    if result.missing:
        lines.append(f"    {result.missing}")
    return lines


def loss_lines(result: E2EResult) -> list[str]:
    accounted = result.evaluated + result.dead_lettered
    if accounted == result.published:
        verdict = "yes, 0 lost"
    elif accounted < result.published:
        verdict = f"NO: {result.published - accounted:,} lost"
    else:
        verdict = f"NO: {accounted - result.published:,} more than published (evaluated twice: duplicates)"
    c = result.census
    return [
        f"  loss check: published {result.published:,} = evaluated {result.evaluated:,} "
        f"+ dead-lettered {result.dead_lettered:,}? {verdict}",
        f"  ingest received {result.ingest_received:,}; on Kafka {c['records']:,} records carrying "
        f"{c['envelopes']:,} envelopes, {c['distinct']:,} distinct (device, seq): "
        f"{result.published - result.dead_lettered - c['distinct']:,} published readings missing there, "
        f"{c['envelopes'] - c['distinct']:,} duplicated",
    ]


def end_to_end(
    args: argparse.Namespace, work: Path, kafka_port: int, servers: list[ManagedProcess]
) -> list[str]:
    """The yardstick, then the pipeline on the same mosquitto: the summary's lines."""
    mosquitto = start_mosquitto(work / "servers", args.autosave_changes, args.autosave_interval_s)
    servers.append(mosquitto)
    persistence = persistence_label(args.autosave_changes, args.autosave_interval_s)
    log(f"yardstick: {args.raw:,} raw QoS 1 messages through mosquitto ({persistence})")
    raw = measure_yardstick(mosquitto.port, args.raw)
    log(f"yardstick: {raw:,.0f} msg/s")
    rate = args.rate or args.rate_fraction * raw
    pacing = f"paced at {rate:,.0f} readings/s" if rate else "flat out"
    if args.rate_fraction:
        pacing += f" ({args.rate_fraction:g} x the yardstick)"
    if (rate or raw) * args.duration > 900_000:
        log(
            "warning: mosquitto queues at most 1,000,000 messages for the ingest session "
            "(max_queued_messages); a backlog beyond that is dropped by the broker and shows as loss"
        )
    if args.publishers > 1:
        pacing += f", {args.publishers} publisher processes"
    log(
        f"end to end, {pacing}, for {args.duration:.0f} s: {args.units:,} units, "
        f"{args.workers[0]} worker(s), {args.ingests} ingest(s)"
    )
    result = measure_e2e(args, work, mosquitto.port, kafka_port, rate)
    return [
        f"  persistence: {persistence}",
        f"  yardstick, raw mosquitto QoS 1 (paho publisher -> subscriber process): {raw:,.0f} msg/s",
        f"  end to end, {pacing}, {args.workers[0]} worker(s), {args.ingests} ingest(s): "
        f"{result.measured:,} readings published in {result.window_s:.1f} s "
        f"({result.measured / result.window_s:,.0f}/s acked by mosquitto); "
        f"end to end (first publish -> last evaluated) {result.rate:,.0f} readings/s = "
        f"{result.rate / raw:.2f} x raw" + ("" if result.drained else "  (NOT all evaluated: stalled)"),
        *loss_lines(result),
        *latency_lines(result),
        *slowest_lines(result),
        "  memory and CPU of the sesmon stages over the measured window (samples every 5 s):",
        *("    " + proc.summary() for proc in result.processes),
    ]


def worker_only(args: argparse.Namespace, work: Path, kafka_port: int) -> list[str]:
    units = generate_fleet(args.units, 0, seed=5)
    registry = work / "registry.csv"
    write_registry(units, registry)
    settings = Settings(kafka_url=f"127.0.0.1:{kafka_port}")
    ensure_topics(settings)
    started = time.perf_counter()
    records = prefill(settings, Fleet(units), args.readings, args.group)
    log(
        f"prefilled {args.readings:,} readings as {records:,} records "
        f"({args.readings / records:.0f} per record) in {time.perf_counter() - started:.1f} s"
    )
    env = {
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_REGISTRY": str(registry),
        # no deadman sweep: the prefilled readings end tens of seconds before the workers start, so
        # every unit's last held reading (e.g. moving) would age on processing time and fire ticks
        # and alerts (10,000+ motor-runtime alerts per run) that no live fleet sends
        "SESMON_DEADMAN_CHECK_EVERY_S": "3600",
    }
    results = []
    for count in args.workers:
        log(f"{count} worker(s) on the prefilled topics")
        results.append(run_workers(settings, env, work, count, args.readings))
        log(f"{count} worker(s): {results[-1].rate:,.0f} readings/s")
    lines = []
    for r in results:
        lines.append(
            f"  worker alone, {r.workers} worker(s): {r.processed:,} readings evaluated, "
            f"{r.rate:,.0f} readings/s; while all {r.workers} evaluated ({r.together_s:.0f} s): "
            f"{r.together_rate:,.0f} readings/s; "
            f"shares {r.shares}; " + ", ".join(f"{k} {v:,}" for k, v in r.extra.items())
        )
        lines += ["    " + p.summary() for p in r.processes]
    if len(results) > 1:
        lines.append(
            f"  {results[-1].workers} workers / {results[0].workers}: "
            f"{results[-1].rate / results[0].rate:.2f} x (while all evaluated: "
            f"{results[-1].together_rate / max(results[0].together_rate, 1e-9):.2f} x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of publishing measured")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=0.0, help="readings/s (default: flat out)")
    pace.add_argument(
        "--rate-fraction", type=float, default=0.0, help="readings/s as this fraction of the yardstick"
    )
    parser.add_argument("--units", type=int, default=10_000, help="elevators in the registry")
    parser.add_argument("--raw", type=int, default=50_000, help="messages of the yardstick")
    parser.add_argument(
        "--autosave-changes",
        type=int,
        default=0,
        help="mosquitto saves its store after this many changes (1: what sesmon demo ships); "
        "0 (default): every --autosave-interval-s seconds instead, as a broker tuned for throughput",
    )
    parser.add_argument("--autosave-interval-s", type=int, default=30)
    parser.add_argument("--workers", default="1", help="worker processes; a list (1,2) with --worker-only")
    parser.add_argument("--ingests", type=int, default=1, help="ingest processes (MQTT shared subscription)")
    parser.add_argument(
        "--publishers",
        type=int,
        default=None,
        help="fleet publisher processes (each a paho client as the yardstick's, its own units); "
        "the extra ones publish flat out, --rate paces the first one only (default: 2 flat out, "
        "1 paced)",
    )
    parser.add_argument(
        "--triggers-per-s", type=float, default=5.0, help="P1 triggers per second, both paths"
    )
    parser.add_argument("--worker-only", action="store_true", help="the worker alone on prefilled topics")
    parser.add_argument("--readings", type=int, default=400_000, help="--worker-only: readings prefilled")
    parser.add_argument("--group", type=int, default=100, help="--worker-only: readings per Kafka record")
    args = parser.parse_args()
    args.workers = [int(n) for n in str(args.workers).split(",")]
    if args.publishers is None:  # flat out, one paho client is slower than the pipeline it feeds
        args.publishers = 1 if args.rate or args.rate_fraction else 2
    if len(args.workers) > 1 and not args.worker_only:
        parser.error("a list of worker counts only with --worker-only")

    work = Path(tempfile.mkdtemp(prefix="sesmon-bench-"))
    (work / "logs").mkdir()
    servers: list[ManagedProcess] = []
    try:
        kafka = start_kafka(work / "servers")
        servers.append(kafka)
        summary = (
            worker_only(args, work, kafka.port)
            if args.worker_only
            else end_to_end(args, work, kafka.port, servers)
        )
    finally:
        for server in reversed(servers):
            server.stop()
    print("\n".join(["", "=" * 34 + " summary " + "=" * 34, *summary, f"  logs and state: {work}"]))


if __name__ == "__main__":
    main()
