"""HTTP webhooks: each page POSTed as JSON to the receivers' endpoints, signed, retried, dead-lettered.

Why one worker and one bounded queue PER TARGET (endpoint URL): a receiver that hangs or is
down costs only its own queue; every other receiver, and MQTT, carry on. A target's pages go
out in the order they were sent.

Each request carries
- ``X-Sesmon-Signature: sha256=<hex HMAC-SHA256 of the raw body with the receiver's secret>``
  (:func:`verify_signature` is what a receiver runs),
- ``X-Sesmon-Timestamp`` (unix seconds of the attempt), ``X-Sesmon-Attempt`` (1, 2, ...),
  ``X-Sesmon-Receiver`` (``kind/id``, URL-encoded), and
- ``Idempotency-Key``: the page's key; a retried or repeated page carries the same key.

Outcomes: 2xx = delivered. 408, 429, 5xx, timeouts and connection errors are retried with
exponential backoff and full jitter (the shared tenacity policy, ``sesmon.runtime.retry``) up to
``tries`` attempts. Any other status is permanent (no retry). A delivery that does not succeed
ends in ONE ``on_dead(target, key, body, reason)``; every delivery ends in one
``on_result(target, key, outcome, attempts, status)``. A full queue is a dead letter with reason
``queue_full``, never a silent drop; pages not delivered when :meth:`WebhookSender.stop` returns
are dead letters with reason ``stopped``.

A circuit breaker per target: after ``BREAKER_FAILURES`` consecutive transport failures (refused,
unreachable, timed out: no HTTP answer) the target is taken as down, and its attempts stop
touching the network: each fails at once with the last real failure's reason (reported to
``on_attempt`` as ``circuit_open: <reason>``), except one real probe per backoff period
(exponential with jitter, up to ``backoff_max_s``). Any HTTP answer closes the breaker. Each
delivery still makes its ``tries`` attempts with backoff and ends in the same dead letter
(``gave_up: <reason> after N tries``); only the cost of a dead receiver drops: a connection
attempt (address lookup, socket, refusal, urllib3's bookkeeping) per try of every page was
~10 % of a core of the alerts stage with 50 dead firm endpoints (bench/alerts_bench.py).

Callbacks run on the sender's threads (a queue-full one on the caller's): keep them quick and
thread-safe; an exception in one is logged and counted, never kills a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import urllib3

from sesmon.runtime.retry import Stopping, retrying
from sesmon.runtime.settings import Settings

log = logging.getLogger("sesmon.alerts.webhooks")

SIGNATURE_HEADER = "X-Sesmon-Signature"
TIMESTAMP_HEADER = "X-Sesmon-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: longest a idle worker waits before looking at the stop flag again
WAIT_SLICE_S = 0.25
_HEADER_SAFE = "!#$%&'*+-.^_`|~:/@=,;"
#: consecutive transport failures of a target after which its breaker opens
BREAKER_FAILURES = 3


class Target(Protocol):
    """What a delivery needs of its target (``alerts.routing_file.WebhookTarget`` is one)."""

    @property
    def key(self) -> str: ...  # names the queue: the endpoint URL

    receiver: str
    url: str
    secret: bytes
    timeout_s: float | None


ResultCallback = Callable[[Any, str, str, int, int | None], None]  # target, key, outcome, attempts, status
DeadCallback = Callable[[Any, str, bytes, str], None]  # target, key, body, reason
AttemptCallback = Callable[[Any, str, int, int | None, str], None]  # target, key, attempt, status, error


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver runs on the raw body it got (constant-time comparison)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class _Retryable(Exception):
    """A failure worth another attempt (5xx, 408, 429, timeout, connection error)."""

    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.status = status


class _Permanent(Exception):
    """A status retrying cannot fix (4xx but 408/429, 3xx, 1xx)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(eq=False)
class _Delivery:
    target: Any
    key: str
    body: bytes
    settled: bool = False


class _Worker:
    """One target's queue and thread."""

    def __init__(self, sender: WebhookSender, target: Any) -> None:
        self.sender = sender
        self.key = target.key
        self.queue: deque[_Delivery] = deque()
        self.cond = threading.Condition()
        self.current: _Delivery | None = None
        self.http = urllib3.PoolManager(num_pools=2, maxsize=1, retries=False)
        # the shared policy (backoff with jitter, ends early on stop); built once per target, reused
        self.policy = retrying(
            sender._stop,
            on=_Retryable,
            initial_s=sender.backoff_s,
            max_wait_s=sender.backoff_max_s,
            max_attempts=sender.tries,
            what=f"webhook {target.receiver}",
        ).copy(before_sleep=None)  # one log line per dead letter instead of one per failed attempt
        self.thread = threading.Thread(target=self._run, name=f"webhook {target.receiver}", daemon=True)
        # the circuit breaker (this worker's thread alone touches it)
        self.failures = 0  # consecutive transport failures
        self.last_failure = ""  # their latest reason: what a short-circuited attempt reports
        self.probe_at: float | None = None  # breaker open: the next real attempt not before this
        self.probes = 0  # failed probes since it opened (the backoff's exponent)

    def short_circuit(self) -> bool:
        """Breaker open and no probe due: this attempt must not touch the network."""
        return self.probe_at is not None and time.monotonic() < self.probe_at

    def transport_failed(self, reason: str) -> None:
        self.failures += 1
        self.last_failure = reason
        if self.failures >= BREAKER_FAILURES:
            sender = self.sender
            if self.probe_at is None:
                self.sender._count("breaker_opened")
            wait = min(sender.backoff_max_s, sender.backoff_s * 2 ** min(self.probes, 30))
            self.probes += 1
            self.probe_at = time.monotonic() + wait * random.uniform(0.5, 1.0)  # jitter: probes spread

    def answered(self) -> None:
        """An HTTP answer (any status): the target is up, the breaker closes."""
        self.failures, self.probe_at, self.probes = 0, None, 0

    def _run(self) -> None:
        stop = self.sender._stop
        while True:
            with self.cond:
                while not self.queue and not stop.is_set():
                    self.cond.wait(WAIT_SLICE_S)
                if stop.is_set():
                    return
                item = self.current = self.queue.popleft()
            try:
                self.sender._deliver(self, item)
            except Exception as exc:  # never let one page end the target's worker
                log.exception(
                    "webhook %s: delivery of %s failed unexpectedly", item.target.receiver, item.key
                )
                self.sender._finish(item, "dead", 0, None, f"internal_error: {exc!r}")
            finally:
                with self.cond:
                    self.current = None

    def take_all(self) -> list[_Delivery]:
        """What is queued or in flight now (for ``stop``)."""
        with self.cond:
            items = list(self.queue)
            self.queue.clear()
            if self.current is not None:
                items.insert(0, self.current)
            return items


class WebhookSender:
    """Delivers pages to webhook targets, each on its own worker thread and bounded queue."""

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        tries: int = 6,
        queue_size: int = 1000,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_result: ResultCallback | None = None,
        on_dead: DeadCallback | None = None,
        on_attempt: AttemptCallback | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeout_s = timeout_s
        self.tries = max(1, tries)
        self.queue_size = max(1, queue_size)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.on_result = on_result
        self.on_dead = on_dead
        self.on_attempt = on_attempt
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._dead_logged: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._stop = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WebhookSender:
        return cls(
            timeout_s=settings.alerts_webhook_timeout_s,
            tries=settings.alerts_webhook_tries,
            queue_size=settings.alerts_webhook_queue,
            backoff_s=settings.alerts_webhook_backoff_s,
            backoff_max_s=settings.alerts_webhook_backoff_max_s,
            **kwargs,
        )

    # ---- the caller's side
    def send(self, target: Any, key: str, body: bytes) -> bool:
        """Queue ``body`` for ``target``; never blocks. False (and a dead letter) when its queue is
        full or the sender has stopped."""
        item = _Delivery(target, key, body)
        if self._stop.is_set():
            self._finish(item, "dead", 0, None, "stopped")
            return False
        worker = self._worker_for(target)
        with worker.cond:  # checked again under the queue's lock: stop() takes what is queued after it
            stopped = self._stop.is_set()
            full = len(worker.queue) >= self.queue_size
            if not (stopped or full):
                worker.queue.append(item)
                worker.cond.notify()
        if stopped:
            self._finish(item, "dead", 0, None, "stopped")
            return False
        if full:
            self._count("queue_full")
            self._finish(item, "dead", 0, None, "queue_full")
            return False
        self._count("queued")
        return True

    def pending(self) -> int:
        """Pages queued or in flight, all targets."""
        with self._lock:
            workers = list(self._workers.values())
        return sum(len(w.queue) + (w.current is not None) for w in workers)

    def stats(self) -> dict[str, int]:
        with self._lock:
            counters = dict(self.counters)
        return counters | {"pending": self.pending(), "targets": len(self._workers)}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop within ``timeout`` even while a receiver hangs: whatever is not delivered by then
        (queued, or in a request that has not returned) is dead-lettered with reason ``stopped``."""
        self._stop.set()
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            with worker.cond:
                worker.cond.notify_all()
        for worker in workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            for item in worker.take_all():
                self._finish(item, "dead", 0, None, "stopped")
            if not worker.thread.is_alive():
                worker.http.clear()

    # ---- the workers' side
    def _worker_for(self, target: Any) -> _Worker:
        with self._lock:
            worker = self._workers.get(target.key)
            if worker is None:
                worker = self._workers[target.key] = _Worker(self, target)
                worker.thread.start()
            return worker

    def _deliver(self, worker: _Worker, item: _Delivery) -> None:
        target, attempts = item.target, 0
        timeout = urllib3.Timeout(
            connect=target.timeout_s or self.timeout_s, read=target.timeout_s or self.timeout_s
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "sesmon-webhook/1",
            SIGNATURE_HEADER: sign(target.secret, item.body),
            IDEMPOTENCY_HEADER: quote(item.key, safe=_HEADER_SAFE),
            "X-Sesmon-Receiver": quote(target.receiver, safe=_HEADER_SAFE),
        }

        def attempt() -> int:
            nonlocal attempts
            attempts += 1
            if worker.short_circuit():  # the target is down: fail as its last real attempt did
                self._count("short_circuited")
                reason = worker.last_failure
                self._call(self.on_attempt, target, item.key, attempts, None, f"circuit_open: {reason}")
                raise _Retryable(reason, None)
            self._count("attempts")
            headers[TIMESTAMP_HEADER] = str(int(self.clock()))
            headers["X-Sesmon-Attempt"] = str(attempts)
            try:
                response = worker.http.request(
                    "POST", target.url, body=item.body, headers=headers, timeout=timeout, redirect=False
                )
            except urllib3.exceptions.HTTPError as exc:  # timeouts, refused, reset, protocol errors
                cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
                reason = type(cause).__name__
                worker.transport_failed(reason)
                self._call(self.on_attempt, target, item.key, attempts, None, reason)
                raise _Retryable(reason, None) from exc
            worker.answered()
            status = response.status
            self._call(self.on_attempt, target, item.key, attempts, status, "")
            if 200 <= status < 300:
                return status
            if status in (408, 429) or status >= 500:
                raise _Retryable(f"http_{status}", status)
            raise _Permanent(f"http_{status}", status)

        try:
            status = worker.policy(attempt)
        except _Permanent as exc:
            self._finish(item, "dead", attempts, exc.status, str(exc))
        except _Retryable as exc:
            stopped = self._stop.is_set() and attempts < self.tries
            reason = "stopped" if stopped else f"gave_up: {exc} after {attempts} tries"
            self._finish(item, "dead", attempts, exc.status, reason)
        except Stopping:
            self._finish(item, "dead", attempts, None, "stopped")
        else:
            self._finish(item, "delivered", attempts, status, "")

    def _finish(self, item: _Delivery, outcome: str, attempts: int, status: int | None, reason: str) -> None:
        """Settle a delivery exactly once (a hung request and ``stop`` may both try)."""
        target = item.target
        tag = reason.split(":", 1)[0]
        with self._lock:
            if item.settled:
                return
            item.settled = True
            self.counters[outcome] += 1
            if outcome == "dead":
                self._dead_logged[(target.key, tag)] += 1
                n = self._dead_logged[(target.key, tag)]
        if outcome == "dead":
            if n in (1, 10, 100) or n % 1000 == 0:
                log.warning("webhook %s (%s): dead letter #%d: %s", target.receiver, target.url, n, reason)
            self._call(self.on_dead, target, item.key, item.body, reason)
        self._call(self.on_result, target, item.key, outcome, attempts, status)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _call(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self._count("callback_errors")
            log.exception("webhook callback %s failed", getattr(callback, "__name__", callback))
