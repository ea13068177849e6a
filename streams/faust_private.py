"""The one place sesmon touches Faust's private API.

Faust's RocksDB tables pick the partition of a read or write from the *current event* (a
context variable the stream sets while an agent handles one event). Batches taken with
``noack_take`` have no current event, so the worker sets it by hand to an event of the unit's
own partition. ``faust.streams._current_event`` is private; tests/test_streams_faust_private.py
fails loudly if a Faust upgrade renames it or stops honouring it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event, current_event


@contextmanager
def as_current_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for the duration (a table read or write)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def faust_current_event() -> Any:
    """What Faust itself believes the current event is (for the upgrade test)."""
    return current_event()
