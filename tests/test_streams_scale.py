"""Two workers on the real broker: one joining and one leaving mid-stream change no alert.

The input goes straight to Kafka as grouped records (ingest's fast-path format). Worker A
starts alone; worker B joins after the first wave (a rebalance hands it partitions); A leaves
after the second. The alerts on Kafka must be exactly those the rule engine gives when run
in-process over the same input: same ids, same states, none missing and none extra (a repeat
of an identical record is allowed: the alerts stage drops it by id).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from rules import RuleEngine
from sesmon.app.demo import Stage
from sesmon.contract.groups import encode_group, partition_of
from sesmon.contract.registry import Registry
from sesmon.runtime.kafka import ensure_topics, make_producer
from sesmon.runtime.settings import Settings
from tests.conftest import drain
from tests.pipeline_support import stage_env, wait_caught_up

UNITS = 24
#: what the waves trigger, on reading time alone (ticks on processing time add duration alerts
#: such as the motor runtime limiter, which an in-process run without ticks cannot predict)
RULES = {"elevator.door_open_while_running", "elevator.unintended_movement"}
WAVE_S = 20  # readings per unit per wave, one per second of device time


def envelope(device_id: str, seq: int, ts: int, **fields: Any) -> dict[str, Any]:
    body = {"device_id": device_id, "ts": ts, "seq": seq, **fields}
    return {
        "type": "telemetry",
        "kind": "elevator",
        "device_id": device_id,
        "ts": ts,
        "seq": seq,
        "received_ms": ts,
        "mqtt_topic": f"sesmon/v1/elevator/{device_id}/telemetry",
        "body": body,
    }


def wave(device_ids: list[str], n: int, t0: int) -> list[dict[str, Any]]:
    """Running with doors shut; in each wave a different third of the units open the door."""
    out = []
    for s in range(WAVE_S):
        for i, device_id in enumerate(device_ids):
            seq = n * WAVE_S + s + 1
            ts = t0 + (n * WAVE_S + s) * 1000
            door_open = i % 3 == n and 8 <= s < 11
            door = "open" if door_open else "closed"
            out.append(envelope(device_id, seq, ts, moving=True, door=door, door_zone=False, speed_mps=1.0))
    return out


def produce(settings: Settings, envelopes: list[dict[str, Any]]) -> None:
    producer = make_producer(settings)
    groups: dict[int, list[bytes]] = {}
    for env in envelopes:
        groups.setdefault(partition_of(env["device_id"].encode(), settings.kafka_partitions), []).append(
            orjson.dumps(env)
        )
    for partition, items in groups.items():
        for i in range(0, len(items), 50):
            producer.produce(
                settings.topic("telemetry"), encode_group(items[i : i + 50]), partition=partition
            )
    assert producer.flush(30) == 0


def expected_alerts(envelopes: list[dict[str, Any]], registry: Registry) -> set[tuple[str, str, int]]:
    engine = RuleEngine()
    states: dict[str, Any] = {}
    found: set[tuple[str, str, int]] = set()
    for env in envelopes:
        out = engine.process(states.get(env["device_id"]), env, registry.get(env["device_id"]))
        states[env["device_id"]] = out.state
        found |= {(a.alert_id, a.state, a.escalation) for a in out.alerts if a.rule in RULES}
    return found


def key(alert: dict[str, Any]) -> tuple[str, str, int]:
    return (alert["alert_id"], alert["state"], alert.get("escalation", 0))


def alerts_on_kafka(settings: Settings, until: Any, timeout: float) -> list[dict[str, Any]]:
    def parse(records: list[Any]) -> list[dict[str, Any]]:
        return [orjson.loads(r.value()) for r in records]

    return parse(drain(settings, ["alerts"], lambda rs: until(parse(rs)), timeout=timeout))


def processed_by(settings: Settings, pid: int, at_least: int, timeout: float = 90) -> bool:
    def done(records: list[Any]) -> bool:
        for r in records:
            s = orjson.loads(r.value())
            mine = s.get("stage") == "streams" and s.get("health", {}).get("pid") == pid
            if mine and s.get("processed", 0) >= at_least:
                return True
        return False

    return done(drain(settings, ["pipeline"], done, timeout=timeout))


def test_a_worker_joining_and_one_leaving_change_no_alert(
    settings: Settings, fleet_registry: Registry, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"kafka_partitions": 4})
    ensure_topics(settings)
    lifts = [
        u
        for u in fleet_registry
        if u.kind == "elevator" and u.in_use and not str(u.type_code).startswith("33")
    ]
    device_ids = [u.device_id for u in lifts][:UNITS]
    t0 = int(time.time() * 1000) - 3 * WAVE_S * 1000
    waves = [wave(device_ids, n, t0) for n in range(3)]
    expected = expected_alerts([e for w in waves for e in w], fleet_registry)
    assert len({a for a, s, _ in expected if s == "firing"}) >= UNITS  # every unit pages at least once

    env = stage_env(settings, fleet_registry)
    logs = tmp_path / "logs"

    def worker(name: str) -> Stage:
        return Stage(name, ["worker"], {**env, "SESMON_DATA_DIR": str(tmp_path / name)}, logs / f"{name}.log")

    a = worker("worker-a").start()
    b: Stage | None = None
    try:
        assert a.proc is not None
        produce(settings, waves[0])
        assert processed_by(settings, a.proc.pid, len(waves[0]))
        b = worker("worker-b").start()  # joins: a rebalance moves partitions to it
        assert b.proc is not None
        produce(settings, waves[1])
        a.stop()  # leaves: its partitions go to b, which resumes from a's last commit
        produce(settings, waves[2])

        def complete(alerts: list[dict[str, Any]]) -> bool:
            return expected <= {key(x) for x in alerts}

        alerts = alerts_on_kafka(settings, complete, timeout=120)
        wait_caught_up(settings, settings.faust_app_id, ["telemetry"])
        alerts = alerts_on_kafka(settings, complete, timeout=30)
        ours = [x for x in alerts if x["rule"] in RULES]
        assert {key(x) for x in ours} == expected
        assert processed_by(settings, b.proc.pid, len(waves[2]) // 2)  # b took over from a
        by_key: dict[tuple[str, str, int], set[bytes]] = {}
        for x in ours:  # a repeat is the same record again, never a different one under the same id
            by_key.setdefault(key(x), set()).add(orjson.dumps(x, option=orjson.OPT_SORT_KEYS))
        assert all(len(v) == 1 for v in by_key.values()), [k for k, v in by_key.items() if len(v) > 1]
    finally:
        a.stop()
        if b is not None:
            b.stop()
