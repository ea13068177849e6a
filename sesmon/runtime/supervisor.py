"""Keep the demo's child stages running: restart a stage that exits, with backoff, and say so.

Why: a stage that ends itself on a fatal client error (``sesmon.runtime.health.fatal``, status 70:
librdkafka's ``UNKNOWN_PRODUCER_ID`` after a Kafka restart, say) is only safe if something
starts it again. Before this, the demo stopped at the first dead stage, and a stage whose
threads had died but whose process lived on looked healthy to everyone.

The supervisor polls its children from one thread. A child that exits, with any status, is
logged with its exit status and the last lines of its log, then started again after an
exponential backoff with jitter (tenacity's ``wait_exponential_jitter``: 1, 2, 4 … s plus up
to 1 s, at most ``max_delay_s``); the backoff starts over once a child has run for
``healthy_after_s``. Its view (pid, alive, restarts, last exit) goes to the ``pipeline``
topic once a second as the record of stage ``supervisor``, which the board shows.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from sesmon.runtime.health import FATAL_EXIT, Health
from sesmon.runtime.kafka import make_producer, stats_record
from sesmon.runtime.services import ChildProcess
from sesmon.runtime.settings import Settings

log = logging.getLogger("sesmon.runtime.supervisor")

#: the ``pipeline`` record's stage name of each child ("" = it publishes none: the simulator)
REPORTS_AS = {"worker": "streams", "simulator": ""}


@dataclass
class RestartPolicy:
    """How soon a stage that exited is started again."""

    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0
    jitter_s: float = 1.0
    #: a run this long counts as fine: the next exit starts the backoff from the beginning
    healthy_after_s: float = 60.0

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before the ``consecutive_failures``-th restart in a row (1-based)."""
        wait = wait_exponential_jitter(
            multiplier=self.initial_delay_s, max=self.max_delay_s, jitter=self.jitter_s
        )
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, consecutive_failures)
        return min(self.max_delay_s, float(wait(state)))


@dataclass
class StageEvent:
    """Something the supervisor did or saw, for whoever shows it (the demo prints these)."""

    stage: str
    kind: str  # "exited" | "restarted"
    message: str
    exit_status: int | None = None
    log_tail: list[str] = field(default_factory=list)  # the stage's last log lines, on exit


@dataclass
class SupervisedStage:
    """One ``sesmon <stage>`` child and its restart bookkeeping."""

    name: str
    process: ChildProcess
    reports_as: str
    restarts: int = 0
    consecutive_failures: int = 0
    started_at: float = 0.0  # monotonic time of the current (or last) start
    started_ms: int = 0
    last_exit_status: int | None = None
    last_exit_ms: int | None = None
    next_start_at: float | None = None  # monotonic; set while it waits out its backoff

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def pid(self) -> int | None:
        proc = self.process.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def view(self, now: float) -> dict[str, Any]:
        """What the board shows of this child (no secrets: never the environment)."""
        return {
            "reports_as": self.reports_as,
            "pid": self.pid,
            "alive": self.alive,
            "restarts": self.restarts,
            "consecutive_failures": self.consecutive_failures,
            "uptime_s": round(now - self.started_at, 1) if self.alive else 0.0,
            "started_ms": self.started_ms,
            "last_exit_status": self.last_exit_status,
            "last_exit_ms": self.last_exit_ms,
            "restart_in_s": round(max(0.0, self.next_start_at - now), 1) if self.next_start_at else None,
        }


def describe_exit(status: int) -> str:
    if status == FATAL_EXIT:
        return f"status {status} (ended itself on a fatal error)"
    if status < 0:
        return f"signal {-status}"
    return f"status {status}"


@dataclass
class Supervisor:
    """Starts the stages in order, restarts any that exit, stops them in reverse order.

    ``settings`` (optional) points at Kafka for the ``supervisor`` pipeline record; without
    it the view is only available through :meth:`record`.
    """

    settings: Settings | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    poll_every_s: float = 0.2
    log_path: Path | None = None
    on_event: Callable[[StageEvent], None] | None = None
    stages: dict[str, SupervisedStage] = field(default_factory=dict)
    events: deque[StageEvent] = field(default_factory=lambda: deque(maxlen=200))

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self._next_publish = 0.0
        self.health = Health("supervisor")

    # ------------------------------------------------------------------ building

    def add(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, reports_as: str | None = None
    ) -> SupervisedStage:
        """A stage run as ``python -m sesmon.app.cli <argv>``; started by :meth:`start`."""
        if reports_as is None:
            reports_as = REPORTS_AS.get(name, name)
        command = [sys.executable, "-m", "sesmon.app.cli", *argv]
        return self.add_command(name, command, env, log_path, reports_as)

    def add_command(
        self, name: str, command: list[str], env: dict[str, str], log_path: Path, reports_as: str = ""
    ) -> SupervisedStage:
        """Any command as a supervised child (its output goes to ``log_path``)."""
        stage = SupervisedStage(name, ChildProcess(name, command, log_path, env), reports_as)
        with self._lock:
            self.stages[name] = stage
        return stage

    def start(self, *names: str) -> None:
        """Start the named stages (all not yet started if none are named) and the watch thread."""
        with self._lock:
            for name in names or list(self.stages):
                stage = self.stages[name]
                if stage.process.proc is None:
                    self._spawn(stage)
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self.health.watch_thread("watch_thread", self._thread)
            self._thread.start()

    # ------------------------------------------------------------------ watching

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_every_s):
            try:
                self.check()
                self.health.progress()
                self._maybe_publish()
            except Exception:  # the watcher must outlive anything it watches
                log.exception("supervisor check failed")

    def check(self) -> None:
        """Notice exits and start what is due (the watch thread calls this; tests may too)."""
        now = time.monotonic()
        with self._lock:
            if self._stop.is_set():
                return
            for stage in self.stages.values():
                if stage.next_start_at is not None:
                    if now >= stage.next_start_at:
                        self._spawn(stage, restart=True)
                    continue
                proc = stage.process.proc
                status = proc.poll() if proc is not None else None  # None: not started yet
                if status is not None:
                    self._on_exit(stage, status, now)

    def _on_exit(self, stage: SupervisedStage, status: int, now: float) -> None:
        ran_s = now - stage.started_at
        stage.last_exit_status = status
        stage.last_exit_ms = int(time.time() * 1000)
        if ran_s >= self.policy.healthy_after_s:
            stage.consecutive_failures = 0  # it ran fine for a while: start the backoff over
        stage.consecutive_failures += 1
        delay = self.policy.delay(stage.consecutive_failures)
        stage.next_start_at = now + delay
        message = (
            f"stage {stage.name} (pid {stage.process.proc.pid if stage.process.proc else '?'}) exited with "
            f"{describe_exit(status)} after {ran_s:.1f} s; restart #{stage.restarts + 1} in {delay:.1f} s"
        )
        tail = stage.process.log_tail(20)
        self._note(StageEvent(stage.name, "exited", message, status, tail.splitlines()[1:]), detail=tail)

    def _spawn(self, stage: SupervisedStage, restart: bool = False) -> None:
        if restart:
            stage.restarts += 1
            with contextlib.suppress(OSError), stage.process.log_path.open("a") as fh:
                stamp = time.strftime("%H:%M:%S")
                fh.write(f"\n--- sesmon supervisor: restart #{stage.restarts} at {stamp} ---\n")
        try:
            stage.process.spawn()
        except OSError as exc:  # cannot even start it: back off as if it had died at once
            stage.consecutive_failures += 1
            delay = self.policy.delay(stage.consecutive_failures)
            stage.next_start_at = time.monotonic() + delay
            self._note(
                StageEvent(
                    stage.name, "exited", f"stage {stage.name} did not start: {exc}; retry in {delay:.1f} s"
                )
            )
            return
        stage.started_at = time.monotonic()
        stage.started_ms = int(time.time() * 1000)
        stage.next_start_at = None
        if restart:
            pid = stage.process.proc.pid if stage.process.proc else "?"
            self._note(StageEvent(stage.name, "restarted", f"stage {stage.name} restarted (pid {pid})"))

    def _note(self, event: StageEvent, detail: str = "") -> None:
        self.events.append(event)
        if event.kind == "exited":
            log.warning("%s\n%s", event.message, detail)
        else:
            log.info("%s", event.message)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open("a") as fh:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                    fh.write(f"{stamp} {event.message}\n" + (f"{detail}\n" if detail else ""))
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(event)

    # ------------------------------------------------------------------ reporting

    def record(self) -> dict[str, Any]:
        """The supervisor's view as a ``pipeline`` record (stage ``supervisor``)."""
        now = time.monotonic()
        with self._lock:
            children = {name: stage.view(now) for name, stage in self.stages.items()}
        return {
            "stage": "supervisor",
            "at": int(time.time() * 1000),
            "children": children,
            "restarts": sum(c["restarts"] for c in children.values()),
            **self._health(),
        }

    def _health(self) -> dict[str, Any]:
        snapshot = self.health.snapshot()
        if self._stop.is_set():  # stopped on purpose: its watch thread is done, not dead
            snapshot["health"] |= {"ok": True, "dead": []}
        return snapshot

    def restarts(self) -> dict[str, int]:
        with self._lock:
            return {name: stage.restarts for name, stage in self.stages.items()}

    def _maybe_publish(self) -> None:
        if self.settings is None:
            return
        now = time.monotonic()
        if now < self._next_publish:
            return
        self._next_publish = now + self.settings.stats_every_s
        if self._producer is None:
            # not idempotent: an idempotent producer dies for good when the broker forgets it
            # and quiet: a broker restart is the stages' news, not a screenful of connect errors
            quiet = logging.getLogger("sesmon.runtime.supervisor.kafka")
            quiet.setLevel(logging.CRITICAL)
            self._producer = make_producer(
                self.settings,
                **{"enable.idempotence": False, "acks": "1", "message.timeout.ms": 10_000, "logger": quiet},
            )
        record = self.record()
        value = stats_record("supervisor", {k: v for k, v in record.items() if k not in ("stage", "at")})
        with contextlib.suppress(BufferError):  # Kafka away and the queue full: best effort
            self._producer.produce(self.settings.topic("pipeline"), key=b"supervisor", value=value)
        self._producer.poll(0)

    # ------------------------------------------------------------------ stopping

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop watching (no restart from here on), then stop the stages in reverse start order."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            stages = list(self.stages.values())
        for stage in reversed(stages):
            stage.next_start_at = None
            stage.process.stop(grace_s)
        if self._producer is not None:
            self._producer.flush(2)
            self._producer = None

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
