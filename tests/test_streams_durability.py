"""Durable state on the real brokers: a worker killed mid-condition neither loses nor repeats an alert.

``elevator.stopped_outside_door_zone`` must hold for 60 s of device time. The worker is
SIGKILLed 30 s into the condition and started again; the alert must still open at the
condition's true start (the half-minute before the kill survived in the RocksDB table) and
reach each receiver once. Without durable state the second half alone (43 s) could not fire it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from sesmon.app.demo import Stage
from sesmon.contract.registry import Registry
from sesmon.runtime.settings import Settings
from tests.conftest import drain, mqtt_client, publish_all, reading
from tests.pipeline_support import (
    AlertInbox,
    settle_alerts,
    stage_env,
    start_stages,
    stop_stages,
    wait_caught_up,
)

RULE = "elevator.stopped_outside_door_zone"


def stopped_outside_zone(device_id: str, seq: int, ts: int) -> tuple[str, bytes]:
    return reading(
        device_id,
        seq,
        ts,
        mode="normal",
        moving=False,
        door="closed",
        door_zone=False,
        occupied=False,
        floor=3,
    )


def evaluated(settings: Settings, at_least: int, timeout: float = 60) -> bool:
    def done(records: list[Any]) -> bool:
        stats = [orjson.loads(r.value()) for r in records]
        return any(s.get("stage") == "streams" and s.get("processed", 0) >= at_least for s in stats)

    return done(drain(settings, ["pipeline"], done, timeout=timeout))


def test_worker_killed_mid_duration_keeps_state_and_pages_once(
    settings: Settings, fleet_registry: Registry, tmp_path: Path
) -> None:
    unit, marker = [u for u in fleet_registry if u.kind == "elevator" and u.in_use][:2]
    stages = start_stages(settings, fleet_registry, tmp_path / "logs")
    inbox = AlertInbox(settings)
    client = mqtt_client(settings)
    try:
        t0 = int(time.time() * 1000) - 120_000  # device time, two minutes ago
        first_half = [stopped_outside_zone(unit.device_id, i, t0 + i * 2000) for i in range(16)]  # 0..30 s
        publish_all(client, first_half)
        # the worker evaluates and commits (commit interval 1 s) before it is killed
        assert evaluated(settings, len(first_half))
        wait_caught_up(settings, settings.faust_app_id, ["telemetry"])
        worker = stages["worker"]
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        assert not inbox.firing(), "nothing may fire before 60 s of device time"

        stages["worker"] = Stage(
            "worker", ["worker"], stage_env(settings, fleet_registry), tmp_path / "logs" / "worker2.log"
        ).start()
        # 32..74 s, then normal service resumes at 90 s (past the 10 s reorder bound)
        second_half = [
            stopped_outside_zone(unit.device_id, 16 + i, t0 + 32_000 + i * 2000) for i in range(22)
        ]
        resume = [
            reading(
                unit.device_id,
                100 + i,
                t0 + 90_000 + i * 2000,
                mode="normal",
                moving=False,
                door="open",
                door_zone=True,
                occupied=False,
                floor=3,
            )
            for i in range(8)
        ]
        publish_all(client, second_half + resume)

        def fired_and_cleared(box: AlertInbox) -> bool:
            mine = [a for _, a in box.items if a["device_id"] == unit.device_id and a["rule"] == RULE]
            return any(a["state"] == "firing" for a in mine) and any(a["state"] == "resolved" for a in mine)

        assert inbox.wait(fired_and_cleared, 90), [a["rule"] for _, a in inbox.items]
        # a marker alert through the same path: any repeated page would have arrived before it
        published = len(first_half) + len(second_half) + len(resume)
        settle_alerts(settings, inbox, client, published, marker)
        mine = [(t, a) for t, a in inbox.items if a["device_id"] == unit.device_id and a["rule"] == RULE]
        firing = [(t, a) for t, a in mine if a["state"] == "firing"]
        assert {a["alert_id"] for _, a in mine} == {firing[0][1]["alert_id"]}  # one alert, same id on clear
        assert firing[0][1]["opened_at"] == t0  # the condition's start survived the kill
        topics = [t for t, _ in firing]
        assert len(topics) == len(set(topics)), f"paged twice: {topics}"
        assert f"sesmon/v1/alerts/firm/{unit.firm_id}" in topics
    finally:
        client.disconnect()
        stop_stages(stages)
