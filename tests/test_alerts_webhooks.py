"""Webhooks (alerts/webhooks.py) against a REAL local HTTP receiver (http.server on a free loopback port).

No mocks: each receiver path behaves as a test sets it (status sequence, hang until released),
and every assertion waits on events (a request arriving, a callback) with a generous deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from alerts.routing_file import WebhookTarget
from alerts.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    verify_signature,
)
from tests.pipeline_support import wait_until

DEADLINE_S = 60.0
SECRET = b"per-receiver-secret"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """The test's HTTP receiver: per path, a list of statuses to answer in turn (the last repeats),
    or "hang" (wait until ``release`` is set, at most 10 s, then answer 200)."""

    port: int = 0
    plans: dict[str, list[Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    counts: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    entered: defaultdict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    finished: defaultdict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str) -> Any:
        with self.lock:
            n = self.counts[path]
            self.counts[path] += 1
        plan = self.plans.get(path, [200])
        return plan[min(n, len(plan) - 1)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.seen.append(Seen(self.path, dict(self.headers.items()), body))
            state.entered[self.path].set()
            status = state.answer(self.path)
            if status == "hang":
                state.release.wait(10)
                status = 200
            reply = b"ok"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            state.finished[self.path].set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


class Outcomes:
    """The sender's callbacks, recorded, with an event per finished key."""

    def __init__(self) -> None:
        self.results: list[tuple[str, str, str, int, int | None]] = []
        self.dead: list[tuple[str, str, bytes, str]] = []
        self.attempts: list[tuple[str, int, int | None, str]] = []
        self.done: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.lock = threading.Lock()

    def on_result(
        self, target: WebhookTarget, key: str, outcome: str, attempts: int, status: int | None
    ) -> None:
        with self.lock:
            self.results.append((target.url, key, outcome, attempts, status))
        self.done[key].set()

    def on_dead(self, target: WebhookTarget, key: str, body: bytes, reason: str) -> None:
        with self.lock:
            self.dead.append((target.url, key, body, reason))

    def on_attempt(
        self, target: WebhookTarget, key: str, attempt: int, status: int | None, error: str
    ) -> None:
        with self.lock:
            self.attempts.append((key, attempt, status, error))

    def wait(self, key: str) -> None:
        assert self.done[key].wait(DEADLINE_S), f"no outcome for {key}"


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def make_sender(outcomes: Outcomes) -> Iterator[Callable[..., WebhookSender]]:
    made: list[WebhookSender] = []

    def make(**kwargs: Any) -> WebhookSender:
        options: dict[str, Any] = {"timeout_s": 30.0, "tries": 4, "backoff_s": 0.01, "backoff_max_s": 0.05}
        sender = WebhookSender(
            **(options | kwargs),
            on_result=outcomes.on_result,
            on_dead=outcomes.on_dead,
            on_attempt=outcomes.on_attempt,
        )
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.stop(timeout=1.0)


def target(url: str, receiver: str = "firm/F001") -> WebhookTarget:
    return WebhookTarget(receiver=receiver, url=url, secret=SECRET)


def page(alert_id: str = "D1.elevator.trapped.1") -> tuple[str, bytes]:
    key = f"{alert_id}|firing|0|1"
    return key, orjson.dumps({"alert_id": alert_id, "idempotency_key": key, "title": "困人"})


def test_a_page_is_signed_and_carries_its_idempotency_key(
    receiver: Receiver, outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender()
    key, body = page()
    assert sender.send(target(receiver.url("/hook")), key, body) is True
    outcomes.wait(key)
    assert outcomes.results == [(receiver.url("/hook"), key, "delivered", 1, 200)]
    assert outcomes.dead == []
    (seen,) = receiver.seen
    assert seen.body == body
    assert verify_signature(SECRET, seen.body, seen.headers[SIGNATURE_HEADER])
    assert not verify_signature(b"another secret", seen.body, seen.headers[SIGNATURE_HEADER])
    assert not verify_signature(SECRET, seen.body + b" ", seen.headers[SIGNATURE_HEADER])
    assert seen.headers[IDEMPOTENCY_HEADER] == key
    assert seen.headers["Content-Type"] == "application/json"
    assert abs(int(seen.headers[TIMESTAMP_HEADER]) - time.time()) < 3600
    assert seen.headers["X-Sesmon-Receiver"] == "firm/F001"


@pytest.mark.parametrize(("plan", "attempts"), [([500, 500, 200], 3), ([429, 200], 2), ([408, 503, 200], 3)])
def test_a_failing_receiver_is_retried_until_it_answers(
    receiver: Receiver,
    outcomes: Outcomes,
    make_sender: Callable[..., WebhookSender],
    plan: list[int],
    attempts: int,
) -> None:
    receiver.plans["/flaky"] = plan
    sender = make_sender(tries=5)
    key, body = page()
    sender.send(target(receiver.url("/flaky")), key, body)
    outcomes.wait(key)
    assert outcomes.results == [(receiver.url("/flaky"), key, "delivered", attempts, 200)]
    assert outcomes.dead == []
    assert receiver.counts["/flaky"] == attempts
    assert [a[2] for a in outcomes.attempts] == plan
    assert {s.headers[IDEMPOTENCY_HEADER] for s in receiver.seen} == {key}  # every attempt: the same key
    assert [s.headers["X-Sesmon-Attempt"] for s in receiver.seen] == [str(n + 1) for n in range(attempts)]


def test_a_dead_port_ends_in_one_dead_letter_after_the_last_try(
    outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = make_sender(tries=3)
    key, body = page()
    url = f"http://127.0.0.1:{port}/hook"
    sender.send(target(url), key, body)
    outcomes.wait(key)
    assert len(outcomes.dead) == 1
    dead_url, dead_key, dead_body, reason = outcomes.dead[0]
    assert (dead_url, dead_key, dead_body) == (url, key, body)
    assert reason.startswith("gave_up:") and "after 3 tries" in reason
    assert outcomes.results == [(url, key, "dead", 3, None)]
    assert [a[1] for a in outcomes.attempts] == [1, 2, 3] and all(a[2] is None for a in outcomes.attempts)
    assert sender.stats()["dead"] == 1 and sender.stats()["attempts"] == 3


def test_a_dead_target_is_short_circuited_and_still_dead_lettered_by_the_same_rules(
    outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    """After three transport failures the breaker opens: the next delivery's tries fail without a
    connection (the probe is due only a backoff later: 0.5-1 s here) and end in the same dead letter."""
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = make_sender(tries=3, backoff_s=1.0, backoff_max_s=2.0)
    url = f"http://127.0.0.1:{port}/hook"
    first, second = page("D1.a.1"), page("D1.b.1")
    sender.send(target(url), *first)
    outcomes.wait(first[0])
    sender.send(target(url), *second)
    outcomes.wait(second[0])
    reasons = [d[3] for d in outcomes.dead]
    assert len(reasons) == 2 and reasons[0] == reasons[1]
    assert reasons[0].startswith("gave_up:") and reasons[0].endswith("after 3 tries")
    assert [(r[2], r[3]) for r in outcomes.results] == [("dead", 3), ("dead", 3)]
    second_tries = [a for a in outcomes.attempts if a[0] == second[0]]
    assert [a[1] for a in second_tries] == [1, 2, 3]
    assert second_tries[0][3].startswith("circuit_open: ")  # no connection for it
    stats = sender.stats()
    assert stats["breaker_opened"] == 1
    assert stats["attempts"] + stats["short_circuited"] == 6 and stats["short_circuited"] >= 1


def test_http_error_answers_never_open_the_breaker(
    receiver: Receiver, outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    """A target that answers (even 503) is up: only transport failures count towards the breaker."""
    receiver.plans["/back"] = [503, 503, 503, 200]
    sender = make_sender(tries=6)
    key, body = page()
    sender.send(target(receiver.url("/back")), key, body)
    outcomes.wait(key)
    assert outcomes.results == [(receiver.url("/back"), key, "delivered", 4, 200)]
    assert "breaker_opened" not in sender.stats()


def test_a_permanent_refusal_is_not_retried(
    receiver: Receiver, outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.plans["/gone"] = [404]
    sender = make_sender(tries=5)
    key, body = page()
    sender.send(target(receiver.url("/gone")), key, body)
    outcomes.wait(key)
    assert outcomes.results == [(receiver.url("/gone"), key, "dead", 1, 404)]
    assert [d[3] for d in outcomes.dead] == ["http_404"]
    assert receiver.counts["/gone"] == 1


def test_a_hanging_receiver_does_not_delay_another(
    receiver: Receiver, outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.plans["/slow"] = ["hang"]
    sender = make_sender()
    slow_key, slow_body = page("D1.slow.1")
    fast_key, fast_body = page("D2.fast.1")
    sender.send(target(receiver.url("/slow"), "firm/SLOW"), slow_key, slow_body)
    assert receiver.entered["/slow"].wait(DEADLINE_S)
    sender.send(target(receiver.url("/fast"), "firm/FAST"), fast_key, fast_body)
    outcomes.wait(fast_key)
    # the fast receiver has its page while the slow one is still inside its request
    assert not receiver.finished["/slow"].is_set()
    assert not outcomes.done[slow_key].is_set()
    assert (receiver.url("/fast"), fast_key, "delivered", 1, 200) in outcomes.results
    receiver.release.set()
    outcomes.wait(slow_key)
    assert (receiver.url("/slow"), slow_key, "delivered", 1, 200) in outcomes.results


def test_a_full_queue_is_a_dead_letter_not_a_silent_drop(
    receiver: Receiver, outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.plans["/slow"] = ["hang"]
    sender = make_sender(queue_size=2)
    hook = target(receiver.url("/slow"))
    keys = [page(f"D{n}.x.1") for n in range(4)]
    assert sender.send(hook, *keys[0]) is True
    assert receiver.entered["/slow"].wait(DEADLINE_S)  # the first is in flight, the queue is empty
    assert [sender.send(hook, *k) for k in keys[1:]] == [True, True, False]
    assert [(d[1], d[3]) for d in outcomes.dead] == [(keys[3][0], "queue_full")]
    assert outcomes.results == [(hook.url, keys[3][0], "dead", 0, None)]
    receiver.release.set()
    for key, _ in keys[:3]:
        outcomes.wait(key)
    assert sorted(r[2] for r in outcomes.results) == ["dead", "delivered", "delivered", "delivered"]


def test_stop_returns_within_its_bound_while_a_receiver_hangs(
    receiver: Receiver, outcomes: Outcomes, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.plans["/hang"] = ["hang"]
    sender = make_sender(timeout_s=30.0)
    hook = target(receiver.url("/hang"))
    in_flight, queued = page("D1.a.1"), page("D1.b.1")
    sender.send(hook, *in_flight)
    assert receiver.entered["/hang"].wait(DEADLINE_S)
    sender.send(hook, *queued)
    started = time.monotonic()
    sender.stop(timeout=0.5)
    took = time.monotonic() - started
    assert took < 5.0, f"stop took {took:.1f} s while the request hangs for up to 10 s (read timeout 30 s)"
    assert sorted((d[1], d[3]) for d in outcomes.dead) == sorted(
        [(in_flight[0], "stopped"), (queued[0], "stopped")]
    )
    assert sender.send(hook, *page("D1.c.1")) is False  # stopped: refused, and dead-lettered
    assert outcomes.dead[-1][3] == "stopped"
    receiver.release.set()  # the hung request now completes: it is not reported a second time
    assert receiver.finished["/hang"].wait(DEADLINE_S)
    wait_until(lambda: not sender.pending(), DEADLINE_S, every=0.01)  # the late answer taken in
    assert sender.pending() == 0
    assert [r[1] for r in outcomes.results].count(in_flight[0]) == 1
