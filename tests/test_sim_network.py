"""Network realism: each effect switchable and visible in the delivered stream."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from sesmon.contract.schemas import BadInput, parse_mqtt
from simulators.engine import FleetSim, SimOptions
from simulators.fleet import generate_fleet
from simulators.network import NetworkOptions

START = 1_795_000_000_000


def run(net: NetworkOptions, hours: float = 1.0, **extra: object) -> tuple[FleetSim, list]:
    units = generate_fleet(30, 4, seed=41)
    sim = FleetSim(units, seed=41, start_ms=START, options=SimOptions(human=False, network=net, **extra))  # type: ignore[arg-type]
    return sim, sim.run_for(hours * 3600, step_s=300)


def seqs(msgs: list) -> list[tuple[str, int]]:
    return [(m.device_id, m.body["seq"]) for m in msgs if isinstance(m.body, dict) and m.device_id]


def test_perfect_network_is_in_order_without_duplicates() -> None:
    _, msgs = run(NetworkOptions(iso_ts_fraction=0.0))
    pairs = seqs(msgs)
    assert len(pairs) == len(set(pairs))
    last: dict[str, int] = {}
    for dev, seq in pairs:
        assert seq > last.get(dev, 0)
        last[dev] = seq
    assert all(isinstance(m.body["ts"], int) for m in msgs if isinstance(m.body, dict) and m.device_id)


def test_duplicates_and_reordering() -> None:
    _, msgs = run(NetworkOptions(duplicates=0.01, reorder=0.01))
    pairs = seqs(msgs)
    dupes = len(pairs) - len(set(pairs))
    assert 0.004 * len(pairs) < dupes < 0.02 * len(pairs)
    inversions = 0
    last: dict[str, int] = {}
    for dev, seq in pairs:
        if seq < last.get(dev, 0):
            inversions += 1
        last[dev] = max(seq, last.get(dev, 0))
    assert inversions > 0.003 * len(pairs)
    assert [m.t for m in msgs] == sorted(m.t for m in msgs)  # delivered in delivery-time order


def test_buffering_delivers_late_in_bursts() -> None:
    _, msgs = run(NetworkOptions(buffering=0.5, buffer_median_s=120, iso_ts_fraction=0.0))
    late = [m for m in msgs if isinstance(m.body, dict) and m.device_id and m.t - m.body["ts"] > 20_000]
    assert len(late) > 100
    bursts = Counter((m.device_id, m.t) for m in late)
    assert max(bursts.values()) >= 5  # many readings arrive together


def test_clock_skew_and_rfc3339_terminals() -> None:
    sim, msgs = run(NetworkOptions(skew_fraction=0.5, skew_max_s=100, iso_ts_fraction=0.3))
    skewed = [d for d in sim.devices.values() if d.skew_ms]
    assert 5 < len(skewed) < 30
    dev = skewed[0]
    for m in msgs:
        if m.device_id == dev.device_id and isinstance(m.body, dict):
            ts = parse_mqtt(m.topic, m.payload(), m.t).ts
            assert ts - m.t == dev.skew_ms
    assert any(isinstance(m.body, dict) and isinstance(m.body.get("ts"), str) for m in msgs)


def test_dropout_publishes_lwt_then_online_and_flushes_buffer() -> None:
    units = generate_fleet(3, 0, seed=42)
    options = SimOptions(human=False, network=NetworkOptions(dropout_loss=0.0, iso_ts_fraction=0.0))
    sim = FleetSim(units, seed=42, start_ms=START, options=options)
    dev = sim.elevator_ids[0]
    sim.inject(dev, "offline", START + 60_000, duration_s=600)
    msgs = sim.run_for(1800, step_s=60)
    status = [(m.t, m.body) for m in msgs if m.device_id == dev and m.leaf == "status"]
    offline_t = next(t for t, b in status if b == b"offline")
    assert offline_t == START + 60_000 + 45_000  # keepalive expiry, then the Will
    back = [t for t, b in status if isinstance(b, dict) and b["status"] == "online" and t > offline_t]
    assert back and back[0] == START + 660_000
    # nothing arrives while offline; buffered readings come after reconnecting, with old ts
    during = [m for m in msgs if m.device_id == dev and offline_t < m.t < back[0]]
    assert during == []
    flushed = [m for m in msgs if m.device_id == dev and m.t >= back[0] and isinstance(m.body, dict)
               and m.body["ts"] < back[0] - 60_000]  # fmt: skip
    assert len(flushed) > 5


def test_malformed_payloads_are_rejected_by_ingest() -> None:
    sim, msgs = run(NetworkOptions(malformed=0.01, iso_ts_fraction=0.0))
    bad = 0
    for m in msgs:
        try:
            parse_mqtt(m.topic, m.payload(), m.t)
        except BadInput:
            bad += 1
    assert sim.net.counts["malformed"] > 20
    assert bad == sim.net.counts["malformed"]


def test_realistic_preset_still_mostly_valid() -> None:
    _, msgs = run(NetworkOptions.realistic(), hours=2, faults="background", fault_rate_multiplier=500)
    ok = 0
    for m in msgs:
        try:
            parse_mqtt(m.topic, m.payload(), m.t)
            ok += 1
        except BadInput:
            pass
    assert ok / len(msgs) > 0.99
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"\xff\xfe")
