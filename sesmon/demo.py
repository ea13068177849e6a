"""``sesmon demo``: embedded brokers, every stage as its own process, a simulated fleet, a board.

Each stage runs as a child process exactly as in production (``sesmon ingest`` …), so the
demo exercises the real wiring. Children run in their own sessions and are stopped here in
order (fleet first, brokers last) on Ctrl-C, SIGTERM, or the end of ``--duration``; a child
that ignores SIGTERM is killed, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from sesmon.board import BoardFeed
from sesmon.kafka import ensure_topics, loads, make_reader
from sesmon.registry import Registry, write_registry
from sesmon.services import ChildProcess, EmbeddedServices
from sesmon.settings import Settings


class Stage(ChildProcess):
    """A ``sesmon <stage>`` child process, exactly as production runs it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        super().__init__(name, [sys.executable, "-m", "sesmon.cli", *argv], log_path, env)

    def start(self) -> Stage:
        self.spawn()
        return self

    def stop(self, grace: float = 15.0) -> None:
        super().stop(grace)


def wait_for_ingest(settings: Settings, timeout: float = 60.0) -> bool:
    """True once the ingest bridge reports it is subscribed: devices published before that are lost."""
    reader = make_reader(settings, ["pipeline"])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
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
    console: Console | None = None,
) -> dict[str, object]:
    console = console or Console()
    base = Settings()
    data_dir = (base.data_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    registry_path = prepare_registry(data_dir, registry, elevators, boilers, seed)
    console.print(f"[bold]sesmon demo[/] · state and logs in {data_dir}")
    services = EmbeddedServices(data_dir / "servers", mqtt_port=mqtt_port)
    stages: list[Stage] = []
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
        console.print(
            f"MQTT {services.mqtt_url} ({services.mqtt.name if services.mqtt else '?'}) · "
            f"Kafka {services.kafka_url}"
        )
        logs = data_dir / "logs"
        for name in ("alerts", "worker", "ingest"):
            stages.append(Stage(name, [name], env, logs / f"{name}.log").start())
        if not wait_for_ingest(settings):
            raise RuntimeError(f"the ingest bridge did not come up; see {logs / 'ingest.log'}")
        if simulator:
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
            stages.append(Stage("simulator", sim_args, env, logs / "simulator.log").start())
        else:
            host_port = services.mqtt_url.split("//", 1)[1]
            console.print(
                f"[bold green]no simulator:[/] publish devices to [bold]{host_port}[/] "
                "(topics sesmon/v1/{kind}/{device_id}/telemetry|event|status)"
            )
        feed = BoardFeed(settings)
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
                dead = [s.name for s in stages if not s.alive]
                if dead:
                    console.print(
                        f"[bold red]stage(s) stopped unexpectedly: {', '.join(dead)}[/] (see {logs})"
                    )
                    break
                if live is not None:
                    live.update(feed.render())
                elif time.monotonic() >= next_print:
                    next_print = time.monotonic() + 10
                    console.print(feed.state.summary())
        summary = feed.state.summary()
        return summary
    finally:
        for stage in reversed(stages):  # simulator and ingest first, alerts last
            stage.stop()
        if feed is not None:
            feed.poll(0.5)
            summary = feed.state.summary()
            feed.close()
            console.print("[bold]final[/]", summary)
        services.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        console.print("stopped: every stage and server has exited")
