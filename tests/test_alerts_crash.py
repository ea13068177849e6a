"""One page per alert change even across crashes: ``kill -9`` the alerts stage during a burst.

Real mosquitto, real Tansu, the stage as a child process exactly as production runs it. A
crash may repeat only the pages that were awaiting a PUBACK (``alerts_max_inflight``); every
(receiver, change) pair must still arrive.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from sesmon.app.demo import Stage
from sesmon.contract.schemas import Alert, Level
from sesmon.runtime.kafka import ensure_topics, make_producer
from sesmon.runtime.settings import Settings
from tests.pipeline_support import wait_notified

KILLS = 5
PAGES_BETWEEN_KILLS = 400  # each run delivers this many more pages before it is killed
#: after a kill, the inbox quiet this long has every page of the killed run (the next run is started
#: only then: it pages its stored outbox at once, before its consumer group join)
QUIET_AFTER_KILL_S = 0.5


class PageInbox:
    """A QoS 1 receiver that is subscribed (SUBACK seen) when constructed, and keeps every page.

    ``on_page`` runs in paho's thread after each page is stored (the crash test kills there,
    so a kill lands on progress, not on a timer).
    """

    def __init__(
        self,
        settings: Settings,
        pattern: str = "sesmon/v1/alerts/#",
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self.pages: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []  # time.monotonic() of each page's arrival
        self.changed = threading.Condition()
        self.on_page: Callable[[int], None] | None = None
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-pages-{os.getpid()}-{id(self)}",
            clean_session=clean_session,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(pattern, qos=1)  # again after a reconnect
        self.client.connect(*settings.mqtt_host_port)
        self.client.loop_start()
        assert subscribed.wait(30), "no SUBACK from the broker"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.pages.append((msg.topic, orjson.loads(msg.payload)))
            self.times.append(time.monotonic())
            count = len(self.pages)
            self.changed.notify_all()
        if self.on_page is not None:
            self.on_page(count)

    def pairs(self) -> list[tuple[str, str]]:
        """(receiver topic, idempotency key) of every page received, repeats included."""
        with self.changed:
            return [(topic, page["idempotency_key"]) for topic, page in self.pages]

    def wait(self, predicate: Callable[[PageInbox], bool], timeout: float) -> bool:
        return wait_notified(self.changed, lambda: predicate(self), timeout)

    def wait_quiet(self, quiet_s: float, timeout: float) -> bool:
        """Until no page has arrived for ``quiet_s`` (the pages a dead publisher left have landed)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while time.monotonic() < deadline:
                last = self.times[-1] if self.times else 0.0
                if time.monotonic() - last >= quiet_s:
                    return True
                self.changed.wait(quiet_s)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def p1_alert(index: int, state: str) -> Alert:
    """A P1 (trapped) alert: firm, user unit and the 96333 centre receive it."""
    return Alert(
        alert_id=f"E{index:04d}.elevator.trapped.1795300000000",
        rule="elevator.trapped",
        level=Level.P1,
        device_id=f"E{index:04d}",
        kind="elevator",
        district="天河",
        firm_id=f"F{index % 10:03d}",
        user_unit_id=f"U{index % 20:03d}",
        opened_at=1_795_300_000_000,
        changed_at=1_795_300_000_000 + (60_000 if state == "resolved" else 0),
        state=state,  # type: ignore[arg-type]
    )


def expected_pages(alerts: list[Alert]) -> set[tuple[str, str]]:
    out = set()
    for a in alerts:
        for topic in (
            f"sesmon/v1/alerts/firm/{a.firm_id}",
            f"sesmon/v1/alerts/user_unit/{a.user_unit_id}",
            "sesmon/v1/alerts/centre/96333",
        ):
            out.add((topic, f"{a.alert_id}|{'opened' if a.state == 'firing' else 'resolved'}"))  # change ids
    return out


def produce_alerts(settings: Settings, alerts: list[Alert]) -> None:
    producer = make_producer(settings)
    for a in alerts:
        producer.produce(
            settings.topic("alerts"), key=a.alert_id.encode(), value=orjson.dumps(a.model_dump(mode="json"))
        )
    assert producer.flush(30) == 0


def alerts_stage(settings: Settings, log_path: Path) -> Stage:
    """``python -m sesmon.app.cli alerts`` pointed at the test's servers and topics."""
    env = {
        "SESMON_MQTT_URL": settings.mqtt_url or "",
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_DATA_DIR": str(settings.data_dir),
        "SESMON_TOPIC_PREFIX": settings.topic_prefix,
        "SESMON_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "SESMON_ALERTS_MQTT_CLIENT_ID": f"alerts-{settings.topic_prefix}",
    }
    return Stage("alerts", ["alerts"], env, log_path)


def repeats_by_kill(
    received: list[tuple[str, str]], times: list[float], run_boundaries: list[float]
) -> list[int]:
    """How many repeated pages each kill caused.

    A repeat is a page that was awaiting its PUBACK when a kill landed; it is charged to the
    kill that ended the run which first delivered it. ``run_boundaries[k]`` is a moment after
    kill ``k`` by which the killed run's last pages had reached the inbox (they may trail the
    kill a little: the inbox can lag behind the broker) and before the next run delivered any
    (the test starts it only then). The repeat itself need not come in the very next run: a run
    may be killed before it gets to the change.
    """
    first_time: dict[tuple[str, str], float] = {}
    per_kill = [0] * len(run_boundaries)
    for pair, at in zip(received, times, strict=True):
        if pair not in first_time:
            first_time[pair] = at
            continue
        kill = next((k for k, end in enumerate(run_boundaries) if first_time[pair] < end), None)
        assert kill is not None, f"page {pair} repeated without a kill after its first delivery"
        per_kill[kill] += 1
    return per_kill


def test_kill_9_during_a_burst_repeats_at_most_the_pages_in_flight(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    inbox = PageInbox(settings)  # subscribed before anything is published
    alerts = [p1_alert(i, state) for i in range(500) for state in ("firing", "resolved")]
    wanted = expected_pages(alerts)
    assert len(alerts) == 1000 and len(wanted) == 3000

    kill_at: list[int | None] = [None]  # kill the running stage when the inbox holds this many pages
    run_boundaries: list[float] = []  # after each kill: the killed run's pages are in, the next's not yet
    stage_pid = [0]
    killed = threading.Event()

    def on_page(count: int) -> None:  # paho's thread of the inbox: kills land on progress
        if kill_at[0] is not None and count >= kill_at[0]:
            kill_at[0] = None
            os.killpg(stage_pid[0], signal.SIGKILL)
            killed.set()

    inbox.on_page = on_page
    log_path = tmp_path / "alerts.log"
    stage = alerts_stage(settings, log_path).start()
    assert stage.proc is not None
    stage_pid[0] = stage.proc.pid
    run_started = time.monotonic()
    try:
        with inbox.changed:
            kill_at[0] = len(inbox.pages) + PAGES_BETWEEN_KILLS
        produce_alerts(settings, alerts)
        for run in range(KILLS):
            assert killed.wait(120), f"run {run} delivered no {PAGES_BETWEEN_KILLS} pages\n{stage.log_tail()}"
            killed.clear()
            assert stage.proc.wait(10) == -signal.SIGKILL
            print(f"run {run}: {time.monotonic() - run_started:.1f} s from start to kill -9")
            assert inbox.wait_quiet(QUIET_AFTER_KILL_S, 30)
            run_boundaries.append(time.monotonic())
            stage = alerts_stage(settings, log_path).start()
            stage_pid[0] = stage.proc.pid
            run_started = time.monotonic()
            with inbox.changed:
                kill_at[0] = len(inbox.pages) + PAGES_BETWEEN_KILLS if run < KILLS - 1 else None
        assert inbox.wait(lambda box: wanted <= set(box.pairs()), 120), stage.log_tail()
        print(f"last run: {time.monotonic() - run_started:.1f} s from start to the last page")
        stopping = time.monotonic()
        stage.stop(grace=15)
        assert stage.proc.returncode == 0, stage.log_tail()
        assert time.monotonic() - stopping < 10
    finally:
        stage.stop()
        inbox.close()

    received = inbox.pairs()
    with inbox.changed:
        times = list(inbox.times)
    assert set(received) == wanted  # every change reached every receiver, and nothing else was paged
    per_kill = repeats_by_kill(received, times, run_boundaries)
    max_inflight = settings.alerts_max_inflight
    print(
        f"changes {len(alerts)}, pages wanted {len(wanted)}, pages received {len(received)}, "
        f"repeats {len(received) - len(wanted)} (per kill {per_kill}; bound {max_inflight} per kill)"
    )
    assert len(run_boundaries) == KILLS
    assert all(repeats <= max_inflight for repeats in per_kill)
    assert len(received) - len(wanted) <= KILLS * max_inflight
