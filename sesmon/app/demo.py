"""``sesmon demo``: embedded brokers, every stage as its own process, a simulated fleet, a board.

Each stage runs as a child process exactly as in production (``sesmon ingest`` …), so the
demo exercises the real wiring. A supervisor (``sesmon.runtime.supervisor``) restarts any stage that
exits, with backoff, and the board shows each stage's health and restarts: a stage that dies
is news on the board, not the end of the demo. Children run in their own sessions and are
stopped in order (fleet first, brokers last) on Ctrl-C, SIGTERM, or the end of
``--duration``; a child that ignores SIGTERM is killed, so nothing is left behind.

``--secure`` runs the embedded MQTT broker with a password per device and per stage and an
ACL (``sesmon.runtime.broker_auth``); the credentials are written under ``<state dir>/mqtt/`` and
never printed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape

from sesmon.app.board import BoardFeed
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.kafka import ensure_topics, loads, make_reader
from sesmon.runtime.services import ChildProcess, EmbeddedServices, influxd_path
from sesmon.runtime.settings import Settings
from sesmon.runtime.supervisor import StageEvent, Supervisor

#: terminal escape sequences and control characters in a stage's log: never replayed to the console
ANSI_OR_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")
#: MQTT usernames of the stages on a secure broker (sesmon.contract.identity)
INGEST_USER, ALERTS_USER = "sesmon-ingest", "sesmon-alerts"


class Stage(ChildProcess):
    """A ``sesmon <stage>`` child process, exactly as production runs it (tests use it alone)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        super().__init__(name, [sys.executable, "-m", "sesmon.app.cli", *argv], log_path, env)

    def start(self) -> Stage:
        self.spawn()
        return self

    def stop(self, grace: float = 15.0) -> None:
        super().stop(grace)


def wait_for_ingest(
    settings: Settings, timeout: float = 60.0, stop: Callable[[], bool] | None = None
) -> bool:
    """True once the ingest bridge reports it is subscribed: devices published before that are lost."""
    reader = make_reader(settings, ["pipeline"])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not (stop and stop()):
            for record in reader.consume(100, 0.5):
                if record.error():
                    continue
                stats = loads(record.value())
                if stats.get("stage") == "ingest" and stats.get("mqtt_connected"):
                    return True
        return False
    finally:
        reader.close()


def prepare_registry(data_dir: Path, registry: Path | None, elevators: int, boilers: int, seed: int) -> Path:
    if registry is not None:
        Registry.load(registry)  # raises RegistryError with every bad line
        return registry.resolve()
    from simulators.fleet import generate_fleet

    path = data_dir / "registry.csv"
    write_registry(generate_fleet(elevators, boilers, seed=seed), path)
    return path


def event_line(event: StageEvent, logs: Path, tail_lines: int = 5) -> str:
    """A few console lines per supervisor event (the full story is in logs/supervisor.log)."""
    if event.kind == "exited":
        lines = [ANSI_OR_CONTROL.sub("", line).strip() for line in event.log_tail]  # Faust hides the cursor
        tail = "".join(
            f"\n  [dim]{escape(line[:300])}[/]" for line in [ln for ln in lines if ln][-tail_lines:]
        )
        return f"[bold red]{escape(event.message)}[/] (see {logs / event.stage}.log){tail}"
    return f"[yellow]{escape(event.message)}[/]"


def run_demo(
    *,
    duration: float | None,
    elevators: int,
    boilers: int,
    registry: Path | None,
    simulator: bool,
    mqtt_port: int | None,
    seed: int = 1,
    faults: str = "demo",
    time_scale: float = 1.0,
    secure: bool = False,
    console: Console | None = None,
) -> dict[str, object]:
    console = console or Console()
    base = Settings()
    data_dir = (base.data_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]sesmon demo[/] · state and logs in {data_dir}")  # first line: where things are
    registry_path = prepare_registry(data_dir, registry, elevators, boilers, seed)
    logs = data_dir / "logs"
    credentials: Any = None
    if secure:
        from sesmon.runtime.broker_auth import write_credentials

        # the simulated 96333 centre logs in as `operator`; `operator-2` is a desk left for a person
        credentials = write_credentials(Registry.load(registry_path), data_dir / "mqtt", operators=2)
    # InfluxDB: SESMON_INFLUX_URL if set (the children inherit it), else Debian's influxd when installed
    embedded_influx = base.influx_url is None and influxd_path() is not None
    services = EmbeddedServices(
        data_dir / "servers",
        mqtt_port=mqtt_port,
        with_influx=embedded_influx,
        secure=credentials,
        mqtt_autosave_changes=Settings().mqtt_autosave_changes,
    )
    supervisor: Supervisor | None = None
    events: deque[StageEvent] = deque()
    feed: BoardFeed | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old_handlers = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        services.start()
        env = {
            **services.env(),
            "SESMON_DATA_DIR": str(data_dir),
            "SESMON_REGISTRY": str(registry_path),
            "PYTHONUNBUFFERED": "1",
        }
        settings = Settings(
            mqtt_url=services.mqtt_url,
            kafka_url=services.kafka_url,
            data_dir=data_dir,
            registry=registry_path,
        )
        ensure_topics(settings)
        security = "anonymous"
        if credentials is not None:
            security = (
                f"secure: a password per device and stage, ACL by role; files in {data_dir / 'mqtt'}"
                " (watch alerts as operator-2)"
            )
        console.print(
            f"MQTT {services.mqtt_url} ({services.mqtt.name if services.mqtt else '?'}, {security}) · "
            f"Kafka {services.kafka_url}"
        )
        influx_url = services.influx_url or base.influx_url
        if influx_url:
            console.print(f"InfluxDB {influx_url} (database {base.influx_db})")
        else:
            console.print(
                "InfluxDB: influxd is not installed (apt-get install influxdb), so nothing is stored "
                "and the store stage does not run; everything else does"
            )
        # its news reaches the console as event lines (above the live board, which a log
        # handler writing to the terminal would tear); the details go to logs/supervisor.log
        supervisor_log = logging.getLogger("sesmon.runtime.supervisor")
        supervisor_log.propagate = False
        supervisor_log.addHandler(logging.NullHandler())  # not even logging's last resort
        supervisor = Supervisor(settings, log_path=logs / "supervisor.log", on_event=events.append)
        stage_env = {name: dict(env) for name in ("alerts", "worker", "ingest", "simulator")}
        if credentials is not None:
            stage_env["ingest"] |= credentials.env_for(INGEST_USER) | {"SESMON_MQTT_REQUIRE_IDENTITY": "true"}
            stage_env["alerts"] |= credentials.env_for(ALERTS_USER)
        for name in ("alerts", "worker", "ingest"):
            supervisor.add(name, [name], stage_env[name], logs / f"{name}.log")
        if influx_url:  # Kafka -> InfluxDB: it needs no MQTT account
            supervisor.add("store", ["store"], dict(env), logs / "store.log")
        # live safety KPIs (Kafka only); added after the store, so it stops first and its last rows are stored
        supervisor.add("kpi", ["kpi"], dict(env), logs / "kpi.log")
        supervisor.start()
        if not wait_for_ingest(settings, stop=lambda: stopping) and not stopping:
            raise RuntimeError(f"the ingest bridge did not come up; see {logs / 'ingest.log'}")
        if simulator and not stopping:
            sim_args = [
                "simulate",
                "--registry",
                str(registry_path),
                "--mqtt-url",
                services.mqtt_url,
                "--faults",
                faults,
                "--seed",
                str(seed),
                "--time-scale",
                str(time_scale),
                "--quiet",
            ]
            if credentials is not None:
                sim_args += ["--credentials", str(credentials.csv)]
            supervisor.add(
                "simulator", sim_args, stage_env["simulator"], logs / "simulator.log", reports_as=""
            )
            supervisor.start("simulator")
        elif not simulator:
            host_port = services.mqtt_url.split("//", 1)[1]
            how = "" if credentials is None else f" with the credentials in {credentials.csv}"
            console.print(
                f"[bold green]no simulator:[/] publish devices to [bold]{host_port}[/]{how} "
                "(topics sesmon/v1/{kind}/{device_id}/telemetry|event|status)"
            )
        feed = BoardFeed(settings)
        feed.state.notes["mqtt"] = security
        feed.state.notes["logs"] = str(logs)
        deadline = time.monotonic() + duration if duration else None
        interactive = console.is_terminal
        next_print = time.monotonic() + 10
        with (
            Live(feed.render(), console=console, refresh_per_second=2, transient=False)
            if interactive
            else (contextlib.nullcontext()) as live
        ):
            while not stopping and (deadline is None or time.monotonic() < deadline):
                feed.poll(0.5)
                # the board hears the supervisor directly too: restarts show even while Kafka is away
                feed.state.on_pipeline(supervisor.record())
                while events:
                    console.print(event_line(events.popleft(), logs))
                if live is not None:
                    live.update(feed.render())
                elif time.monotonic() >= next_print:
                    next_print = time.monotonic() + 10
                    console.print(feed.state.summary())
        return feed.state.summary()
    finally:
        if supervisor is not None:
            supervisor.stop()  # no restarts from here on; simulator and ingest first, alerts last
            while events:
                console.print(event_line(events.popleft(), logs))
        if feed is not None:
            feed.poll(0.5)
            if supervisor is not None:
                feed.state.on_pipeline(supervisor.record())
            summary = feed.state.summary()
            feed.close()
            console.print("[bold]final[/]", summary)
        services.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        console.print("stopped: every stage and server has exited")
