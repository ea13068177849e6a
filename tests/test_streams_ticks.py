"""The worker's deadman ticks on the real brokers: grouped per partition, they reach each unit's state.

A reading that follows a gap in ``seq`` waits in the unit's reorder buffer; nothing but the
worker's processing-time tick releases it once the unit has been quiet for the lateness bound.
The ticks leave the deadman sweep as one grouped record per partition (the partition ingest
gives the unit), so a tick that landed on the wrong partition, or a group the agent could not
read, would leave the held event unevaluated and its P1 unpaged.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sesmon.contract.registry import Registry
from sesmon.runtime.settings import Settings
from tests.conftest import drain, mqtt_client, publish_all, reading
from tests.pipeline_support import AlertInbox

RULE = "elevator.door_open_while_running"
UNITS = 12


def held_behind_a_gap(device_id: str, t0: int) -> list[tuple[str, bytes]]:
    """seq 0 running normally, then seq 2 running with the door open outside the door zone
    (the P1 fires on that one reading); seq 1 never comes. Telemetry waits in the reorder
    buffer (terminal events do not)."""
    running = {"mode": "normal", "moving": True, "direction": "up", "speed_mps": 1.0, "door_zone": False}
    return [
        reading(device_id, 0, t0, door="closed", **running),
        reading(device_id, 2, t0 + 1000, door="open", **running),
    ]


def worker_stats(settings: Settings) -> dict[str, Any]:
    records = drain(settings, ["pipeline"], lambda r: False, timeout=3)
    stats = [orjson.loads(r.value()) for r in records]
    return next((s for s in reversed(stats) if s.get("stage") == "streams"), {})


def test_held_events_are_released_by_grouped_ticks(pipeline: Settings, fleet_registry: Registry) -> None:
    settings = pipeline
    lifts = [u for u in fleet_registry if u.kind == "elevator" and u.in_use and u.type_code.startswith("31")]
    units = lifts[:UNITS]
    assert len(units) == UNITS
    inbox = AlertInbox(settings)
    client = mqtt_client(settings)
    try:
        t0 = int(time.time() * 1000)  # live clock: the tick measures quiet time on it
        publish_all(client, [m for u in units for m in held_behind_a_gap(u.device_id, t0)])
        wanted = {u.device_id for u in units}

        def paged(box: AlertInbox) -> bool:
            fired = {a["device_id"] for _, a in box.firing() if a["rule"] == RULE}
            return wanted <= fired

        assert inbox.wait(paged, 90), (
            f"held events never released: {sorted(wanted - {a['device_id'] for _, a in inbox.firing()})}"
        )
        stats = worker_stats(settings)
        assert stats.get("ticks", 0) >= UNITS  # released by ticks, not by later input
        assert stats.get("ticks_processed", 0) >= UNITS
    finally:
        client.disconnect()
        client.loop_stop()
        inbox.client.disconnect()
