"""Stop signals raise a flag and never take a lock (Event.set() in a handler can deadlock)."""

from __future__ import annotations

import os
import signal

from sesmon.runtime.signals import StopSignals


def test_sigterm_raises_the_flag_and_wakes_wait() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signalled:
        assert signalled.wait(0.01) is False and signalled.raised is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert signalled.wait(30) is True
        assert signalled.raised is signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back


def test_handler_takes_no_lock() -> None:
    """The handler body is one attribute store: calling it with the GIL's only thread busy is safe."""
    signalled = StopSignals()
    signalled._handle(signal.SIGINT, None)
    assert signalled.raised is signal.SIGINT and signalled.wait(0) is True
