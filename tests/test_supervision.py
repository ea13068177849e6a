"""Stages survive each other and never fail silently.

The supervisor restarts a child that exits (any status) with exponential backoff and jitter,
logs its exit status and last log lines, starts the backoff over after a good run, and stops
everything in reverse order without restarting anything. The worker reports its health,
keeps its registry through a bad reload, and a stage that stops reporting shows on the board.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sesmon.app.board import BoardFeed
from sesmon.app.demo import Stage
from sesmon.contract.registry import COLUMNS, Registry, write_registry
from sesmon.runtime.kafka import ensure_topics, loads, make_reader
from sesmon.runtime.settings import Settings
from sesmon.runtime.supervisor import RestartPolicy, StageEvent, Supervisor
from simulators.fleet import generate_fleet
from tests.pipeline_support import stage_env, wait_until

FAST = RestartPolicy(initial_delay_s=0.05, max_delay_s=0.4, jitter_s=0.05, healthy_after_s=60)


def script(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RestartPolicy(initial_delay_s=1.0, max_delay_s=30.0, jitter_s=1.0)
    for failures, low in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        delays = {policy.delay(failures) for _ in range(20)}
        assert all(low <= d <= low + 1.0 for d in delays), (failures, delays)
        assert len(delays) > 1  # jitter: restarts of many stages do not fall in step
    assert {policy.delay(n) for n in (6, 10, 50)} == {30.0}


def test_a_stage_that_exits_is_restarted_and_its_status_and_last_lines_are_logged(tmp_path: Path) -> None:
    events: list[StageEvent] = []
    restarted_thrice = threading.Event()

    def on_event(event: StageEvent) -> None:
        events.append(event)
        if sum(e.kind == "restarted" for e in events) >= 3:
            restarted_thrice.set()

    supervisor = Supervisor(policy=FAST, log_path=tmp_path / "supervisor.log", on_event=on_event)
    command = script("""
        import sys
        print("starting up", flush=True)
        print("Kafka said UNKNOWN_PRODUCER_ID", flush=True)
        sys.exit(70)
    """)
    stage = supervisor.add_command("flaky", command, {}, tmp_path / "flaky.log")
    try:
        supervisor.start()
        assert restarted_thrice.wait(30), events
    finally:
        supervisor.stop()
    exits = [e for e in events if e.kind == "exited"]
    assert exits and all(e.exit_status == 70 for e in exits)
    assert "status 70 (ended itself on a fatal error)" in exits[0].message
    journal = (tmp_path / "supervisor.log").read_text()
    assert "Kafka said UNKNOWN_PRODUCER_ID" in journal and "restart #1" in journal
    assert stage.restarts >= 3 and stage.consecutive_failures >= 3  # it never ran fine: backoff grows
    view = supervisor.record()
    assert view["stage"] == "supervisor" and view["children"]["flaky"]["restarts"] == stage.restarts
    assert view["children"]["flaky"]["last_exit_status"] == 70
    assert "--- sesmon supervisor: restart #1" in (tmp_path / "flaky.log").read_text()
    # stopped: nothing runs and nothing is started again
    count = stage.restarts
    supervisor.check()
    assert not stage.alive and stage.restarts == count


def test_backoff_starts_over_after_a_run_that_went_fine(tmp_path: Path) -> None:
    policy = RestartPolicy(initial_delay_s=0.05, max_delay_s=5, jitter_s=0.05, healthy_after_s=0.3)
    supervisor = Supervisor(policy=policy)
    stage = supervisor.add_command("steady", script("import time; time.sleep(0.5)"), {}, tmp_path / "s.log")
    try:
        supervisor.start()
        assert wait_until(lambda: stage.restarts >= 2, 30)
    finally:
        supervisor.stop()
    assert stage.consecutive_failures == 1  # each run lasted longer than healthy_after_s
    assert stage.last_exit_status == 0


def test_stop_ends_stages_in_reverse_order_and_kills_one_that_ignores_sigterm(tmp_path: Path) -> None:
    order = tmp_path / "order.txt"

    def polite(name: str) -> list[str]:
        return script(f"""
            import signal, sys
            def bye(*_):
                open({str(order)!r}, "a").write({name!r} + "\\n")
                sys.exit(0)
            signal.signal(signal.SIGTERM, bye)
            print("ready", flush=True)
            while True:
                signal.pause()  # until SIGTERM
        """)

    stubborn = script("""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            signal.pause()  # SIGTERM is ignored: only SIGKILL ends it
    """)
    supervisor = Supervisor(policy=FAST)
    stages = [
        supervisor.add_command("first", polite("first"), {}, tmp_path / "first.log"),
        supervisor.add_command("second", polite("second"), {}, tmp_path / "second.log"),
        supervisor.add_command("stubborn", stubborn, {}, tmp_path / "stubborn.log"),
    ]
    supervisor.start()
    ready = lambda: all("ready" in s.process.log_path.read_text() for s in stages)  # noqa: E731
    assert wait_until(ready, 30)
    pids = [s.pid for s in stages]
    supervisor.stop(grace_s=1.0)
    assert order.read_text().split() == ["second", "first"]
    assert all(not s.alive for s in stages) and all(s.restarts == 0 for s in stages)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # type: ignore[arg-type]


def test_restarts_reach_the_board_through_kafka(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    supervisor = Supervisor(settings, policy=FAST)
    supervisor.add_command("flaky", script("import sys; sys.exit(3)"), {}, tmp_path / "flaky.log")
    feed = BoardFeed(settings)
    try:
        supervisor.start()
        assert wait_until(lambda: supervisor.restarts()["flaky"] >= 2, 30)

        def board_sees_restarts() -> bool:
            feed.poll(0.2)
            return feed.state.restarts().get("flaky", 0) >= 2

        assert wait_until(board_sees_restarts, 30)
        row = next(r for r in feed.state.stage_rows() if r["stage"] == "flaky")
        assert row["restarts"] >= 2 and row["last_exit_status"] == 3
    finally:
        supervisor.stop()
        feed.close()


def latest_streams_record(settings: Settings, until: Callable[[dict], bool], timeout: float) -> dict | None:
    """Read the pipeline topic until a ``streams`` record satisfies ``until``."""
    reader = make_reader(settings, ["pipeline"])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for record in reader.consume(500, 0.5):
                if record.error():
                    continue
                stats = loads(record.value())
                if stats.get("stage") == "streams" and until(stats):
                    return stats
        return None
    finally:
        reader.close()


def test_worker_reports_health_survives_a_bad_registry_and_a_wedged_worker_shows_as_silent(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "fleet.csv"
    write_registry(generate_fleet(10, 0, seed=4), path)
    registry = Registry.load(path)
    ensure_topics(settings)
    worker = Stage("worker", ["worker"], stage_env(settings, registry), tmp_path / "worker.log").start()
    feed: BoardFeed | None = None
    try:
        first = latest_streams_record(
            settings, lambda r: "health" in r and r.get("input_pending") is not None, 90
        )
        assert first is not None, worker.log_tail()
        assert first["health"]["ok"] and first["health"]["dead"] == [], first["health"]
        assert first["health"]["pid"] == worker.proc.pid  # type: ignore[union-attr]
        assert first["registry_reload_failures"] == 0 and first["registry_units"] == 10
        assert first["stalled"] is False

        # one oversized field: the reload is refused, counted, and the worker lives on
        huge = {**next(iter(registry)).to_row(), "address": "x" * (csv.field_size_limit() + 1)}
        path.write_text(
            ",".join(COLUMNS) + "\n" + ",".join(huge[c] for c in COLUMNS) + "\n", encoding="utf-8"
        )
        refused = latest_streams_record(settings, lambda r: r.get("registry_reload_failures") == 1, 60)
        assert refused is not None and worker.alive, worker.log_tail()
        assert "field larger than field limit" in worker.log_path.read_text()
        write_registry(generate_fleet(15, 0, seed=4), path)
        reloaded = latest_streams_record(settings, lambda r: r.get("registry_reloads") == 1, 60)
        assert reloaded is not None and reloaded["registry_units"] == 15
        assert reloaded["registry_reload_failures"] == 1

        # a wedged worker (stopped, as a stuck process would be) shows as silent on a live board
        feed = BoardFeed(settings)
        pid = worker.proc.pid  # type: ignore[union-attr]

        def board(silent: bool) -> Callable[[], bool]:
            def check() -> bool:
                feed.poll(0.2)  # type: ignore[union-attr]
                return ("streams" in feed.state.silent_stages()) == silent  # type: ignore[union-attr]

            return check

        assert wait_until(board(False), 30)
        os.kill(pid, signal.SIGSTOP)
        try:
            assert wait_until(board(True), 60)
            row = next(r for r in feed.state.stage_rows() if r["stage"] == "streams")
            assert row["status"] == "SILENT"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert wait_until(board(False), 60)
    finally:
        if feed is not None:
            feed.close()
        worker.stop()
    assert not worker.alive
