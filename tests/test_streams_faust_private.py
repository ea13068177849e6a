"""Faust's private API, confined to streams/faust_private.py: fail loudly if an upgrade changes it."""

from __future__ import annotations

import contextvars

import faust.streams

from streams.faust_private import as_current_event, faust_current_event


class _Event:
    """Stands for a Faust event: the context variable holds a weak reference to one."""


def test_faust_still_has_the_current_event_variable_we_set() -> None:
    assert isinstance(faust.streams._current_event, contextvars.ContextVar), (
        "faust.streams._current_event is gone or changed: RocksDB tables written from a batch "
        "need another way to name the partition (see streams/faust_private.py)"
    )


def test_faust_reads_back_the_event_we_make_current_and_forgets_it_after() -> None:
    event = _Event()
    before = faust_current_event()
    with as_current_event(event):
        assert faust_current_event() is event, "faust.streams.current_event() no longer reads our event"
    assert faust_current_event() is before


def test_the_private_name_is_used_nowhere_else() -> None:
    import re
    from pathlib import Path

    private = re.compile(r"\b_current_event\b")
    root = Path(__file__).resolve().parent.parent
    users = [
        str(p.relative_to(root))
        for folder in ("ingest", "streams", "rules", "alerts", "store", "simulators", "sesmon", "bench")
        for p in (root / folder).rglob("*.py")
        if private.search(p.read_text(encoding="utf-8"))
    ]
    assert users == ["streams/faust_private.py"]
