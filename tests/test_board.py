"""The terminal board's arithmetic, without a screen or a broker."""

from __future__ import annotations

from rich.console import Console

from sesmon.board import BoardState, render


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
