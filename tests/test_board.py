"""The terminal board's arithmetic, without a screen or a broker."""

from __future__ import annotations

import time

from rich.console import Console

from sesmon.app.board import BoardState, render


def test_rates_use_the_stages_clock_and_alerts_fold() -> None:
    board = BoardState()
    for second in range(10):
        board.on_pipeline({"stage": "ingest", "at": 1_000_000 + second * 1000, "produced": second * 400})
    # a burst of reports consumed at once must not look like a huge rate
    board.on_pipeline({"stage": "ingest", "at": 1_009_010, "produced": 3_604})
    assert 390 <= board.rate("ingest.produced") <= 410
    alert = {"alert_id": "A1", "state": "firing", "level": "P1", "rule": "elevator.trapped", "opened_at": 1}
    board.on_alert(alert)
    board.on_alert({**alert, "alert_id": "A2", "level": "P3"})
    board.on_alert({**alert, "state": "resolved"})
    assert board.levels() == {"P1": 0, "P2": 0, "P3": 1}
    assert board.summary()["resolved"] == 1 and board.summary()["alerts_seen"] == 3
    console = Console(record=True, width=140)
    console.print(render(board))
    text = console.export_text()
    assert "P3 1" in text and "readings/s" in text


def test_a_stage_that_stops_reporting_is_called_out() -> None:
    board = BoardState()
    board.on_pipeline({"stage": "streams", "at": 1_000_000, "processed": 10})
    board.on_pipeline({"stage": "ingest", "at": 1_030_000, "produced": 9000})
    assert board.silent_stages() == ["streams"]
    assert board.summary()["backlog"] == 8990
    console = Console(record=True, width=140)
    console.print(render(board))
    assert "NO REPORT from: streams" in console.export_text()


def health(pid: int, at: int, dead: list[str] | None = None) -> dict[str, object]:
    return {"ok": not dead, "dead": dead or [], "pid": pid, "started_ms": 0, "last_progress_ms": at}


def test_stage_health_dead_parts_restarts_and_silence_are_called_out() -> None:
    board = BoardState()
    now = 2_000_000
    board.on_pipeline({"stage": "ingest", "at": now, "produced": 10, "health": health(11, now)})
    board.on_pipeline(
        {"stage": "streams", "at": now, "processed": 10, "health": health(12, now - 40_000, ["kafka_probe"])}
    )
    board.on_pipeline({"stage": "alerts", "at": now - 30_000, "delivered": 1, "health": health(13, now)})
    children = {
        "alerts": {"reports_as": "alerts", "pid": 13, "alive": True, "restarts": 0, "started_ms": 0},
        "worker": {"reports_as": "streams", "pid": 12, "alive": True, "restarts": 2, "started_ms": 0},
        "ingest": {
            "reports_as": "ingest",
            "pid": None,
            "alive": False,
            "restarts": 1,
            "last_exit_status": 70,
            "restart_in_s": 3.0,
            "started_ms": 0,
        },
        "simulator": {"reports_as": "", "pid": 14, "alive": True, "restarts": 0, "started_ms": 0},
    }
    board.on_pipeline({"stage": "supervisor", "at": now, "children": children, "health": health(1, now)})
    board.on_pipeline({"stage": "ingest", "at": now - 5_000, "produced": 5})  # older, read late: ignored
    assert board.stages["ingest"]["produced"] == 10
    assert board.silent_stages() == ["alerts"]
    assert board.dead_parts() == {"streams": ["kafka_probe"]}
    assert board.restarts() == {"alerts": 0, "streams": 2, "ingest": 1, "simulator": 0}
    rows = {row["stage"]: row for row in board.stage_rows()}
    assert [r["stage"] for r in board.stage_rows()] == ["ingest", "streams", "alerts", "simulator"]
    assert rows["ingest"]["status"] == "RESTARTING" and rows["ingest"]["last_exit_status"] == 70
    assert rows["streams"]["status"] == "DEAD PART" and rows["streams"]["progress_age_s"] == 40.0
    assert rows["alerts"]["status"] == "SILENT" and rows["alerts"]["report_age_s"] == 30.0
    assert rows["simulator"]["status"] == "ok" and rows["simulator"]["pid"] == 14
    console = Console(record=True, width=160)
    console.print(render(board))
    text = console.export_text()
    assert "PIPELINE NOT WELL" in text
    assert "ingest RESTARTING (exit status 70, restart in 3 s)" in text
    assert "NO REPORT from: alerts" in text and "DEAD PART in streams: kafka_probe" in text
    assert "40 s ago" in text  # the worker's last progress


def test_a_stalled_worker_and_a_supervised_stage_that_never_reported() -> None:
    board = BoardState()
    now = 3_000_000
    board.on_pipeline(
        {
            "stage": "streams",
            "at": now,
            "stalled": True,
            "input_pending": 1234,
            "health": health(5, now - 60_000),
        }
    )
    children = {
        "ingest": {"reports_as": "ingest", "pid": 9, "alive": True, "restarts": 0, "started_ms": now - 60_000}
    }
    board.on_pipeline({"stage": "supervisor", "at": now, "children": children})
    assert board.stalled() == {"streams": 1234}
    assert board.silent_stages() == ["ingest"]  # up for a minute and not a word from it
    rows = {row["stage"]: row for row in board.stage_rows()}
    assert rows["streams"]["status"] == "STALLED" and rows["ingest"]["status"] == "SILENT"
    board.notes["mqtt"] = "secure: files in /x/mqtt"
    assert board.summary()["mqtt"] == "secure: files in /x/mqtt"
    console = Console(record=True, width=160)
    console.print(render(board))
    text = console.export_text()
    assert "STALLED: streams (1,234 records waiting, no progress)" in text
    assert "secure: files in /x/mqtt" in text


def test_a_live_board_judges_silence_by_the_wall_clock() -> None:
    """With every stage gone quiet (Kafka away, say), the newest record is old too."""
    board = BoardState(live=True)
    board.on_pipeline({"stage": "ingest", "at": int(time.time() * 1000) - 60_000, "produced": 1})
    assert board.silent_stages() == ["ingest"]
    assert BoardState(live=False, stages={"ingest": {"at": 1}}).silent_stages() == []
