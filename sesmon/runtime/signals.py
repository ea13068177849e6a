"""SIGINT/SIGTERM as a flag that loops read: the one safe thing a signal handler can do.

Why not ``threading.Event.set()`` in the handler: Python runs a handler in the main thread
between two bytecodes, possibly while that same thread is inside ``Event.wait()`` holding the
event's (non-reentrant) lock, and ``set()`` then waits for that lock forever. The simulator hung
exactly so on a SIGTERM in CI (once in ~1,000 runs of the suite). A plain attribute takes no lock.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Installs handlers that only raise a flag; restores the old ones on exit (main thread only)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.raised: signal.Signals | None = None
        self._old: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.raised = signal.Signals(signum)

    def install(self) -> StopSignals:
        for sig in self.signals:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def wait(self, timeout: float, slice_s: float = 0.05) -> bool:
        """Sleep up to ``timeout`` s, waking within ``slice_s`` of a signal; True if one came."""
        deadline = time.monotonic() + timeout
        while self.raised is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(slice_s, left))
        return True
