"""The stages' garbage-collection pauses are counted (a full collection can hold every reading)."""

from __future__ import annotations

import gc

from sesmon.runtime.gc_pauses import GcPauses


def test_a_full_collection_is_counted_and_timed() -> None:
    pauses = GcPauses().install()
    try:
        pauses.install()  # twice: still one callback
        assert gc.callbacks.count(pauses._callback) == 1
        gc.collect(2)
        gc.collect(2)
        snap = pauses.snapshot()
        assert snap["gc_full_collections"] == 2
        assert snap["gc_pause_ms_total"] >= snap["gc_pause_ms_max"] >= 0
    finally:
        pauses.uninstall()
    gc.collect(2)
    assert pauses.snapshot()["gc_full_collections"] == 2 and pauses._callback not in gc.callbacks
