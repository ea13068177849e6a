"""``sesmon demo`` as a new user runs it: alerts within a minute, stages restarted when they die,
and nothing left behind after Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from sesmon.contract.registry import Unit, write_registry
from sesmon.runtime.services import free_port, influxd_path
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet
from store.wire import query
from tests.pipeline_support import AlertInbox, wait_until


def processes_of(marker: str) -> list[int]:
    """PIDs whose environment mentions ``marker`` (the demo's data dir): its children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stage_pid(marker: str, stage: str) -> int | None:
    """The pid of the demo's ``sesmon <stage>`` child."""
    for pid in processes_of(marker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sesmon.app.cli" in argv and stage.encode() in argv:
            return pid
    return None


class Demo:
    """``sesmon demo`` as a child process whose output lines are collected as they come."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.state_dir = tmp_path / "state"
        env = {**os.environ, "SESMON_DATA_DIR": str(self.state_dir), "COLUMNS": "400"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sesmon.app.cli", "demo", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first match of ``pattern`` in the output, waiting for it to be printed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = regex.search("".join(self.lines))
                left = deadline - time.monotonic()
                if found or left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return found
                self.changed.wait(min(left, 1.0))

    def stop(self, sig: int, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code


def stored_points(url: str, db: str, measurement: str, field: str = "received_ms") -> int:
    """Points of ``measurement`` in the demo's InfluxDB (0 while there are none)."""
    series = query(url, f"SELECT count({field}) FROM {measurement}", db)["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def trapped(inbox: AlertInbox, unit: Unit, seq: int) -> None:
    event = {"device_id": unit.device_id, "ts": int(time.time() * 1000), "seq": seq}
    event |= {"code": "trapped", "state": "occur", "detail": {}}
    inbox.client.publish(f"sesmon/v1/elevator/{unit.device_id}/event", json.dumps(event), qos=1)


def alert_for(unit: Unit) -> Callable[[AlertInbox], bool]:
    return lambda box: any(a["device_id"] == unit.device_id for _, a in box.firing())


def test_demo_fires_alerts_within_a_minute_and_sigterm_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    demo = Demo(
        tmp_path, "--elevators", "400", "--boilers", "40", "--mqtt-port", str(port), "--duration", "300"
    )
    inbox: AlertInbox | None = None
    try:
        first_line = demo.wait_for(r"^.*\n", 60)
        assert first_line and "state and logs in" in first_line.group(0)
        assert str(demo.state_dir) in first_line.group(0)
        assert demo.wait_for(rf"MQTT mqtt://127\.0\.0\.1:{port}", 60), demo.output
        # the embedded InfluxDB (Debian influxd) is announced among the first lines, and stored into
        influx = demo.wait_for(r"InfluxDB (http://127\.0\.0\.1:\d+) \(database (\S+)\)|InfluxDB: .*", 60)
        assert influx and demo.output.index(influx.group(0)) < len("".join(demo.lines[:4])), demo.output
        if influxd_path() is None:
            assert "not installed" in influx.group(0)
        started = time.monotonic()
        inbox = AlertInbox(Settings(mqtt_url=f"mqtt://127.0.0.1:{port}"))
        p1 = lambda box: any(a.get("level") == "P1" for _, a in box.firing())  # noqa: E731
        assert inbox.wait(p1, 120), demo.output[-3000:]
        assert time.monotonic() - started < 120  # "alerts fire within the first minute", with headroom
        if influx.group(1):  # readings and alerts reach InfluxDB through the demo's store stage
            url, db = influx.group(1), influx.group(2)
            measurements = {"elevator": "received_ms", "boiler": "received_ms", "alert": "opened_at"}
            stored = lambda: {m: stored_points(url, db, m, f) > 0 for m, f in measurements.items()}  # noqa: E731
            wait_until(lambda: all(stored().values()), 90, every=0.5)
            assert all(stored().values()), (stored(), demo.output[-3000:])
    finally:
        if inbox is not None:
            inbox.client.loop_stop()
        code = demo.stop(signal.SIGTERM)
    out = demo.output
    assert code == 0, out[-3000:]
    final = out[out.rindex("final") :]
    alerts = int(re.search(r"'alerts_seen': (\d+)", final).group(1))  # type: ignore[union-attr]
    received = int(re.search(r"'received': (\d+)", final).group(1))  # type: ignore[union-attr]
    assert received > 0 and alerts > 0, final
    assert "stopped: every stage and server has exited" in out
    assert processes_of(str(demo.state_dir)) == []


def test_demo_without_simulator_restarts_a_killed_stage_and_ctrl_c_cleans_up(tmp_path: Path) -> None:
    units = [u for u in generate_fleet(20, 2, seed=3) if u.kind == "elevator" and u.in_use]
    registry = tmp_path / "fleet.csv"
    write_registry(generate_fleet(20, 2, seed=3), registry)
    port = free_port()
    demo = Demo(
        tmp_path, "--no-simulator", "--mqtt-port", str(port), "--registry", str(registry), "--duration", "300"
    )
    inbox: AlertInbox | None = None
    try:
        banner = demo.wait_for(r"no simulator:.*", 90)
        assert banner and f"127.0.0.1:{port}" in banner.group(0), demo.output
        inbox = AlertInbox(Settings(mqtt_url=f"mqtt://127.0.0.1:{port}"))
        trapped(inbox, units[0], 1)
        # the unit's pages reach their receivers one by one: wait for the 96333 centre's own
        centre = "sesmon/v1/alerts/centre/96333"

        def centre_paged(box: AlertInbox) -> bool:
            return any(t == centre and a["device_id"] == units[0].device_id for t, a in box.firing())

        assert inbox.wait(centre_paged, 60), demo.output[-3000:]

        # a stage that dies is restarted by the demo's supervisor, and the pipeline carries on
        pid = stage_pid(str(demo.state_dir), "ingest")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert demo.wait_for(rf"stage ingest \(pid {pid}\) exited with signal 9", 30), demo.output[-3000:]
        assert demo.wait_for(r"stage ingest restarted", 60), demo.output[-3000:]
        trapped(inbox, units[1], 2)  # the broker keeps it for ingest's persistent session meanwhile
        assert inbox.wait(alert_for(units[1]), 90), demo.output[-3000:]
        assert stage_pid(str(demo.state_dir), "ingest") not in (None, pid)
    finally:
        if inbox is not None:
            inbox.client.loop_stop()
        code = demo.stop(signal.SIGINT)  # Ctrl-C
    out = demo.output
    assert code == 0, out[-3000:]
    assert re.search(r"'restarts': \{[^}]*'ingest': 1", out[out.rindex("final") :]), out[-2000:]
    assert processes_of(str(demo.state_dir)) == []


def secure_client(port: int, username: str, password: str) -> mqtt.Client:
    """A client logged in with its own account (its client id is its username on this broker)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username)
    client.username_pw_set(username, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_demo_secure_runs_the_pipeline_with_passwords_and_never_prints_them(tmp_path: Path) -> None:
    """``--secure``: a password per device and stage and an ACL; the demo still works end to end."""
    demo = Demo(tmp_path, "--secure", "--elevators", "400", "--boilers", "40", "--duration", "300")
    try:
        banner = demo.wait_for(r"MQTT mqtt://\S+ \(.*secure.*", 90)
        assert banner, demo.output[-3000:]
        run_dir = Path(re.search(r"state and logs in (\S+)", demo.output).group(1))  # type: ignore[union-attr]
        assert str(run_dir / "mqtt") in banner.group(0)
        credentials = run_dir / "mqtt" / "credentials.csv"
        assert credentials.exists()
        # the simulated fleet logs in device by device and its centre answers as `operator`;
        # a person watches the centre's pages from the spare desk, `operator-2`
        port = int(re.search(r"MQTT mqtt://127\.0\.0\.1:(\d+)", banner.group(0)).group(1))  # type: ignore[union-attr]
        with credentials.open(newline="") as fh:
            accounts = {row["username"]: row for row in csv.DictReader(fh)}
        desk = secure_client(port, "operator-2", accounts["operator-2"]["password"])
        pages: queue.Queue[bytes] = queue.Queue()
        desk.on_message = lambda _c, _u, msg: pages.put(msg.payload)
        desk.subscribe("sesmon/v1/alerts/centre/#", qos=1)
        deadline = time.monotonic() + 150
        paged = None
        while paged is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                page = json.loads(pages.get(timeout=1))
                paged = page if page.get("level") == "P1" and page.get("kind") == "elevator" else None
        desk.disconnect()
        desk.loop_stop()
        assert paged is not None, demo.output[-3000:]
    finally:
        code = demo.stop(signal.SIGTERM)
    out = demo.output
    assert code == 0, out[-3000:]
    final = out[out.rindex("final") :]
    assert "secure" in final
    assert int(re.search(r"'received': (\d+)", final).group(1)) > 0, final  # type: ignore[union-attr]
    assert "'dead_lettered': 0," in final  # no refused identity among the simulator's messages
    sim_log = (run_dir / "logs" / "simulator.log").read_text()
    sim = json.loads(sim_log[sim_log.rindex("simulator final ") + len("simulator final ") :].splitlines()[0])
    assert sim["connections"]["refused"] == 0 and sim["connections"]["no_account"] == 0, sim
    assert sim["connections"]["wills"] > 0, sim  # on stop each device's link is cut: the broker's Will
    assert sim["alerts_in"] > 0, sim  # the simulated centre, logged in as `operator`, heard its pages
    with credentials.open(newline="") as fh:
        passwords = {row["password"] for row in csv.DictReader(fh) if row.get("password")}
    assert passwords and not any(p in out for p in passwords)
    logs = "".join(p.read_text(errors="replace") for p in (run_dir / "logs").glob("*.log"))
    assert not any(p in logs for p in passwords)
    assert processes_of(str(demo.state_dir)) == []
