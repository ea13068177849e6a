"""Stage health: which threads are alive, when the stage last made progress, and a clean death.

Why: a paho or librdkafka thread can die while the process stays up, and a live process
with dead threads looks healthy to everything around it. Each stage registers its
threads here, marks progress, puts :meth:`Health.snapshot` into its ``pipeline`` record
(the board shows it), and calls :func:`fatal` on an error it cannot recover from, so its
supervisor sees an exit and restarts it instead of a zombie.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger("sesmon.runtime.health")

#: exit status of a stage that ended itself on a fatal error (EX_SOFTWARE)
FATAL_EXIT = 70


class Health:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.started_ms = int(time.time() * 1000)
        self.last_progress_ms = self.started_ms
        self._threads: dict[str, threading.Thread] = {}
        self._checks: dict[str, Any] = {}

    def watch_thread(self, name: str, thread: threading.Thread) -> None:
        self._threads[name] = thread

    def watch(self, name: str, alive: Any) -> None:
        """Another liveness check: ``alive()`` returns True while the part works."""
        self._checks[name] = alive

    def progress(self) -> None:
        self.last_progress_ms = int(time.time() * 1000)

    def dead_parts(self) -> list[str]:
        dead = [n for n, t in self._threads.items() if not t.is_alive()]
        for name, check in self._checks.items():
            try:
                ok = bool(check())
            except Exception:
                ok = False
            if not ok:
                dead.append(name)
        return dead

    def snapshot(self) -> dict[str, Any]:
        dead = self.dead_parts()
        return {
            "health": {
                "ok": not dead,
                "dead": dead,
                "pid": os.getpid(),
                "started_ms": self.started_ms,
                "last_progress_ms": self.last_progress_ms,
            }
        }


def fatal(stage: str, message: str, exit_code: int = FATAL_EXIT) -> None:
    """End this process now with a clear message: better a restart than a zombie stage.

    ``os._exit`` because the caller may be a library thread (paho, librdkafka) where
    ``sys.exit`` would only end that thread.
    """
    line = f"sesmon {stage}: FATAL: {message}; exiting with status {exit_code} so the supervisor restarts it"
    log.critical(line)
    print(line, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(exit_code)
