"""How long Python's garbage collector stops a stage: a full collection of a large heap (a worker
holding 10,000 units' states) can hold every reading for a second, and nothing else shows it."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("sesmon.gc")


class GcPauses:
    """Times every collection (``gc.callbacks``); the stage adds :meth:`snapshot` to its stats."""

    def __init__(self, log_over_ms: float = 250.0) -> None:
        self.log_over_ms = log_over_ms
        self.pause_ms_max = 0.0
        self.pause_ms_total = 0.0
        self.full_collections = 0
        self._started = 0.0

    def install(self) -> GcPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took_ms = (time.perf_counter() - self._started) * 1000
        self.pause_ms_total += took_ms
        self.pause_ms_max = max(self.pause_ms_max, took_ms)
        if info.get("generation") == 2:
            self.full_collections += 1
        if took_ms >= self.log_over_ms:
            log.warning(
                "a garbage collection (generation %s) stopped the stage for %.0f ms",
                info.get("generation"),
                took_ms,
            )

    def snapshot(self) -> dict[str, Any]:
        return {
            "gc_pause_ms_max": round(self.pause_ms_max, 1),
            "gc_pause_ms_total": round(self.pause_ms_total, 1),
            "gc_full_collections": self.full_collections,
        }
