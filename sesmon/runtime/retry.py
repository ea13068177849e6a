"""The one retry policy of sesmon: exponential backoff with jitter that stops when the stage stops.

Why one: four hand-written ``while True: try/sleep`` loops had four different ideas of when
to give up, and none of them listened to shutdown. Built on tenacity.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

T = TypeVar("T")
log = logging.getLogger("sesmon.runtime.retry")


class Stopping(Exception):
    """Raised instead of retrying again because the stage is shutting down."""


def retrying(
    stop_event: threading.Event | None = None,
    *,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    initial_s: float = 0.05,
    max_wait_s: float = 5.0,
    give_up_after_s: float | None = None,
    max_attempts: int | None = None,
    what: str = "operation",
) -> Retrying:
    """A tenacity ``Retrying`` whose waits end early (with :class:`Stopping`) once ``stop_event`` is set.

    Use it as ``for attempt in retrying(stop, on=BufferError): with attempt: do()`` or
    ``retrying(...)(fn, *args)``.
    """
    event = stop_event or threading.Event()

    def sleep(seconds: float) -> None:
        if event.wait(seconds):
            raise Stopping(f"{what}: stage is stopping")

    def stop(state: RetryCallState) -> bool:
        if event.is_set():
            return True
        if max_attempts is not None and state.attempt_number >= max_attempts:
            return True  # the caller's budget (e.g. webhook tries): the last error is raised
        return give_up_after_s is not None and stop_after_delay(give_up_after_s)(state)

    def before_sleep(state: RetryCallState) -> None:
        if state.attempt_number in (1, 10, 100) or state.attempt_number % 1000 == 0:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s failed (attempt %d): %r; retrying", what, state.attempt_number, exc)

    return Retrying(
        retry=retry_if_exception_type(on),
        wait=wait_random_exponential(multiplier=initial_s, max=max_wait_s),
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retry(fn: Callable[[], T], stop_event: threading.Event | None = None, **kwargs: object) -> T:
    """``fn()`` under :func:`retrying`; raises the last error (or :class:`Stopping`)."""
    return retrying(stop_event, **kwargs)(fn)  # type: ignore[arg-type]
