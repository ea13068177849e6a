"""``sesmon demo`` as a new user runs it: alerts within a minute, and nothing left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sesmon.registry import write_registry
from sesmon.services import free_port
from simulators.fleet import generate_fleet
from tests.pipeline_support import AlertInbox


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


def run_demo(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SESMON_DATA_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "sesmon.cli", "demo", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_fires_alerts_within_a_minute_and_cleans_up(tmp_path: Path) -> None:
    done = run_demo(tmp_path, "--duration", "45", "--elevators", "400", "--boilers", "40")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = done.stdout[done.stdout.rindex("final") :]
    alerts = int(re.search(r"'alerts_seen': (\d+)", final).group(1))  # type: ignore[union-attr]
    p1 = int(re.search(r"'P1': (\d+)", final).group(1))  # type: ignore[union-attr]
    received = int(re.search(r"'received': (\d+)", final).group(1))  # type: ignore[union-attr]
    assert received > 1000 and alerts > 0 and p1 > 0, final
    assert "stopped: every stage and server has exited" in done.stdout
    assert processes_of(str(tmp_path / "state")) == []


def test_demo_without_simulator_takes_devices_on_the_given_port(tmp_path: Path) -> None:
    units = generate_fleet(20, 2, seed=3)
    registry = tmp_path / "fleet.csv"
    write_registry(units, registry)
    port = free_port()
    env = {**os.environ, "SESMON_DATA_DIR": str(tmp_path / "state")}
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sesmon.cli",
            "demo",
            "--no-simulator",
            "--mqtt-port",
            str(port),
            "--registry",
            str(registry),
            "--duration",
            "60",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        banner = ""
        while "no simulator" not in banner and time.monotonic() < deadline:
            line = demo.stdout.readline() if demo.stdout else ""
            banner += line
        assert f"127.0.0.1:{port}" in banner, banner

        from sesmon.settings import Settings

        settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{port}")
        inbox = AlertInbox(settings)
        unit = next(u for u in units if u.kind == "elevator" and u.in_use)
        event = {
            "device_id": unit.device_id,
            "ts": int(time.time() * 1000),
            "seq": 1,
            "code": "trapped",
            "state": "occur",
            "detail": {},
        }
        inbox.client.publish(f"sesmon/v1/elevator/{unit.device_id}/event", json.dumps(event), qos=1)
        assert inbox.wait(lambda box: any(a["device_id"] == unit.device_id for _, a in box.firing()), 45)
        topics = {t for t, a in inbox.firing() if a["device_id"] == unit.device_id}
        assert "sesmon/v1/alerts/centre/96333" in topics
    finally:
        demo.send_signal(2)  # Ctrl-C
        out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, out[-2000:]
    assert processes_of(str(tmp_path / "state")) == []
