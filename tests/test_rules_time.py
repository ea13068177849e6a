"""Event time: reordering within the lateness bound, late readings, duplicates, flapping, restarts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import RuleEngine
from rules.testing import T0, Run, boiler, elevator, event, status, tele

E, B = "elevator", "boiler"
ENGINE = RuleEngine()
BOUND = ENGINE.lateness_ms


def signature(run: Run) -> list[tuple[str, str, int, int]]:
    return [(a.alert_id, a.state, a.opened_at, a.changed_at) for a in run.alerts]


def arrive(msgs: list[dict[str, Any]], delays: list[int]) -> list[dict[str, Any]]:
    """Messages re-timed by network delay and put in arrival order (stable on ties)."""
    out = []
    for m, d in zip(msgs, delays, strict=True):
        m = dict(m)
        m["received_ms"] = m["ts"] + d
        out.append(m)
    return sorted(out, key=lambda m: m["received_ms"])


elevator_reading = st.fixed_dictionaries(
    {
        "moving": st.booleans(),
        "door": st.sampled_from(["closed", "open", "opening", "closing"]),
        "occupied": st.booleans(),
        "door_zone": st.booleans(),
        "speed_mps": st.sampled_from([0.0, 0.5, 1.0, 1.12, 1.2]),
        "up_limit": st.sampled_from([False, False, False, True]),
        "power": st.sampled_from(["mains", "mains", "mains", "off"]),
        "mode": st.sampled_from(["normal", "normal", "normal", "inspection"]),
    }
)
boiler_reading = st.fixed_dictionaries(
    {
        "pressure_mpa": st.floats(0.7, 1.4).map(lambda x: round(x, 3)),
        "water_level_mm": st.sampled_from([-120.0, -80.0, -55.0, -20.0, 0.0, 30.0, 80.0]),
        "burner": st.sampled_from(["off", "high_fire", "lockout", "low_fire"]),
        "fuel_flow_nm3h": st.sampled_from([0.0, 50.0, 280.0]),
        "flue_gas_temp_c": st.sampled_from([150.0, 260.0]),
        "o2_pct": st.sampled_from([3.5, 9.0]),
    }
)


def stream(kind: str, readings: list[dict[str, Any]], gaps: list[int]) -> list[dict[str, Any]]:
    dev = "E1" if kind == E else "B1"
    t, msgs = 0.0, []
    for i, (r, g) in enumerate(zip(readings, gaps, strict=True)):
        t += g
        msgs.append(tele(kind, dev, t, i + 1, **r))
    return msgs


def run_all(kind: str, msgs: list[dict[str, Any]]) -> Run:
    run = Run(ENGINE, elevator() if kind == E else boiler())
    run.feed(*msgs)
    return run.tick(max(m["received_ms"] for m in msgs) + BOUND)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n=st.integers(5, 40),
    kind=st.sampled_from([E, B]),
)
def test_arrival_order_within_bound_does_not_change_alerts(data: st.DataObject, n: int, kind: str) -> None:
    readings = data.draw(st.lists(elevator_reading if kind == E else boiler_reading, min_size=n, max_size=n))
    gaps = data.draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    delays = data.draw(st.lists(st.integers(0, BOUND - 1), min_size=n, max_size=n))
    msgs = stream(kind, readings, gaps)
    in_order = run_all(kind, arrive(msgs, [0] * n))
    shuffled = run_all(kind, arrive(msgs, delays))
    assert signature(shuffled) == signature(in_order)
    assert sum(o.late_dropped for o in shuffled.outcomes) == 0
    assert sum(o.evaluated for o in shuffled.outcomes) == n


def test_out_of_order_trapped_sequence_is_put_in_order() -> None:
    trapped = dict(moving=False, door="closed", occupied=True, door_zone=False)
    msgs = [tele(E, "E1", t, i + 1, **trapped) for i, t in enumerate((0, 10, 20, 30))]
    msgs.append(tele(E, "E1", 32, 5, moving=False, door="open", occupied=True, door_zone=False))
    order = [msgs[1], msgs[0], msgs[3], msgs[2], msgs[4]]
    for m in order:
        m["received_ms"] = T0 + 33_000
    run = Run(ENGINE, elevator()).feed(*order).tick()
    assert run.transitions() == [("elevator.trapped", "firing"), ("elevator.trapped", "resolved")]
    assert run.alerts[0].opened_at == T0


def test_beyond_bound_is_counted_and_recorded_not_evaluated() -> None:
    run = Run(ENGINE, elevator())
    run.feed(*[tele(E, "E1", t, t + 1, moving=False, door="closed", door_zone=True) for t in range(0, 60, 5)])
    late = tele(
        E, "E1", 2, 99, moving=True, door="open", speed_mps=1.0, door_zone=False
    )  # 开门 while moving, 58 s late
    out = ENGINE.process(run.state, late, run.unit)
    assert out.late_dropped == 1
    assert out.late == [{"device_id": "E1", "ts": T0 + 2000, "seq": 99, "watermark": out.state.watermark_ts}]
    assert out.state.late_count == 1
    assert out.alerts == [] and out.evaluated == 0


def test_duplicate_is_not_evaluated_twice() -> None:
    m = tele(E, "E1", 0, 1, moving=True, speed_mps=1.3, door="closed")
    run = Run(ENGINE, elevator()).feed(m, dict(m)).tick()
    out = ENGINE.process(run.state, dict(m), run.unit)
    assert out.duplicates == 1
    assert sum(o.duplicates for o in run.outcomes) == 1
    assert run.transitions() == [("elevator.overspeed", "firing")]


def test_event_is_immediate_and_older_telemetry_does_not_reopen() -> None:
    trapped = dict(moving=False, door="closed", occupied=True, door_zone=True)
    run = Run(ENGINE, elevator())
    run.feed(tele(E, "E1", 0, 1, **trapped))
    out = ENGINE.process(run.state, event(E, "E1", 5, 2, "trapped"), run.unit)
    assert [(a.rule, a.state) for a in out.alerts] == [("elevator.trapped", "firing")]  # not buffered
    run.state = out.state
    run.alerts.extend(out.alerts)
    run.feed(event(E, "E1", 40, 3, "trapped", "recover"))
    # buffered readings from before the recover still show the car closed and occupied
    run.feed(tele(E, "E1", 30, 4, **trapped), tele(E, "E1", 38, 5, **trapped))
    run.tick()
    assert run.transitions() == [("elevator.trapped", "firing"), ("elevator.trapped", "resolved")]


def test_tick_matures_a_duration_when_the_unit_goes_quiet() -> None:
    trapped = dict(moving=False, door="closed", occupied=True, door_zone=False)
    run = Run(ENGINE, elevator()).feed(tele(E, "E1", 0, 1, **trapped))
    rx = run.last_rx
    assert not ENGINE.due_for_tick(run.state, rx + 1)
    run.tick(rx + 15_000)
    assert run.transitions() == []
    assert ENGINE.due_for_tick(run.state, rx + 20_000 + BOUND)  # between floors: 20 s
    run.tick(rx + 20_000 + BOUND)
    assert run.transitions() == [("elevator.trapped", "firing")]
    assert run.alerts[0].changed_at == T0 + 20_000


def test_flapping_is_damped() -> None:
    run = Run(ENGINE, elevator())
    seq = 0
    for i in range(12):  # overspeed on/off every 10 s
        seq += 1
        run.feed(tele(E, "E1", i * 10, seq, moving=True, door="closed", speed_mps=1.3 if i % 2 == 0 else 0.9))
    run.tick()
    fires = [a for a in run.alerts if a.rule == "elevator.overspeed" and a.state == "firing"]
    assert len(fires) == ENGINE.flap_opens  # then held open instead of paging again
    assert "elevator.overspeed" in run.open_rules()
    # quiet for hold_s: resolves once
    t = 120
    while t < 120 + ENGINE.flap_hold_ms / 1000 + 30:
        seq += 1
        run.feed(tele(E, "E1", t, seq, moving=True, door="closed", speed_mps=0.9))
        t += 10
    run.tick()
    assert "elevator.overspeed" not in run.open_rules()
    assert run.alerts[-1].state == "resolved" and run.alerts[-1].rule == "elevator.overspeed"


@pytest.mark.parametrize("split", [1, 3, 7])
def test_restart_with_stored_state_gives_identical_alerts(split: int) -> None:
    trapped = dict(moving=False, door="closed", occupied=True, door_zone=False, speed_mps=0.0)
    msgs = [tele(E, "E1", t, i + 1, **trapped) for i, t in enumerate(range(0, 60, 6))]
    msgs.append(tele(E, "E1", 61, 20, moving=False, door="open", occupied=True, door_zone=False))
    once = Run(ENGINE, elevator()).feed(*msgs).tick()
    # worker A processes part, stores state as JSON, dies; worker B (a new engine) resumes
    first = Run(ENGINE, elevator()).feed(*msgs[:split])
    stored = json.dumps(ENGINE.dump_state(first.state))
    second = Run(RuleEngine(), elevator())
    second.state = json.loads(stored)
    second.feed(*msgs[split:]).tick()
    assert signature(once) == [*signature(first), *signature(second)]
    assert len(stored) < 4000  # compact enough for a changelog table


def test_lwt_with_server_time_ahead_of_device_clock_still_clears() -> None:
    """The bare-word Last Will carries the receive time; a device clock 2 min behind must not matter."""
    run = Run(ENGINE, elevator()).feed(tele(E, "E1", 0, 1, moving=False, door="closed", door_zone=True))
    lwt = status(E, "E1", 150, "offline")  # server time = device time + 120 s
    run.feed(lwt)
    assert run.transitions() == [("offline", "firing")]
    assert run.state.max_ts == T0  # server time does not move the device-time watermark
    back = tele(E, "E1", 40, 2, moving=False, door="closed", door_zone=True)
    back["received_ms"] = T0 + 160_000
    run.feed(back).tick()
    assert run.transitions() == [("offline", "firing"), ("offline", "resolved")]


def test_offline_unit_does_not_mature_dependent_durations() -> None:
    run = Run(ENGINE, elevator()).feed(tele(E, "E1", 0, 1, moving=False, door="open", door_zone=True))
    run.feed(status(E, "E1", 5, "offline"))
    run.tick(run.last_rx + 600_000)  # the door-open timer must not run on while nothing is known
    assert [t for t in run.transitions() if t[0] != "offline"] == []


OPEN_RUNNING = dict(moving=True, door="open", door_zone=False, speed_mps=1.0, occupied=True)
QUIET = dict(moving=True, door="closed", door_zone=False, speed_mps=1.0, occupied=True)  # running, doors shut


def test_in_sequence_readings_are_evaluated_on_arrival() -> None:
    """Once a gap-free seq is known, a reading that continues it is evaluated at once, and an
    instantaneous alert fires from that very reading, not a lateness bound later."""
    run = Run(ENGINE, elevator()).feed(tele(E, "E1", 0, 1, **QUIET), tele(E, "E1", 1, 2, **QUIET))
    assert sum(o.evaluated for o in run.outcomes) == 0  # a new unit's first readings wait out the bound once
    run.feed(tele(E, "E1", 11, 3, **QUIET))  # the bound releases 1 and 2; the mark is known from here
    assert sum(o.evaluated for o in run.outcomes) == 3  # ... and 3 is in sequence: evaluated on arrival
    run.feed(tele(E, "E1", 12, 4, **OPEN_RUNNING))
    assert run.outcomes[-1].evaluated == 1
    assert run.transitions() == [("elevator.door_open_while_running", "firing")]


def test_a_gap_in_seq_holds_readings_until_it_is_filled() -> None:
    run = Run(ENGINE, elevator()).feed(*(tele(E, "E1", t, t + 1, **QUIET) for t in range(12)))
    before = sum(o.evaluated for o in run.outcomes)
    assert before == 12
    run.feed(tele(E, "E1", 14, 15, **OPEN_RUNNING))  # 13 and 14 missing: wait
    assert run.outcomes[-1].evaluated == 0 and run.alerts == []
    run.feed(event(E, "E1", 12.5, 13, "alarm_button"))  # seq counts events too
    assert run.outcomes[-1].evaluated == 0
    run.feed(tele(E, "E1", 13, 14, **QUIET))  # the gap is filled: 14 and 15 go, in order
    assert run.outcomes[-1].evaluated == 2
    assert ("elevator.door_open_while_running", "firing") in run.transitions()


def test_a_gap_never_filled_waits_only_the_lateness_bound() -> None:
    run = Run(ENGINE, elevator()).feed(*(tele(E, "E1", t, t + 1, **QUIET) for t in range(12)))
    run.feed(tele(E, "E1", 14, 20, **OPEN_RUNNING))  # seq 13..19 lost for good
    run.feed(tele(E, "E1", 15, 21, **QUIET))
    assert run.alerts == [] and len(run.state.reorder) == 2
    run.feed(tele(E, "E1", 14 + BOUND / 1000, 22, **QUIET))  # the bound releases 20, then 21 and 22 follow
    assert run.state.reorder == [] and ("elevator.door_open_while_running", "firing") in run.transitions()
    run.feed(tele(E, "E1", 25, 23, **QUIET))  # and the sequence is known again
    assert run.outcomes[-1].evaluated == 1


def test_a_device_that_restarts_its_count_is_not_held_forever() -> None:
    run = Run(ENGINE, elevator()).feed(*(tele(E, "E1", t, 500 + t, **QUIET) for t in range(12)))
    assert run.state.seq_next == 512
    run.feed(tele(E, "E1", 30, 1, **QUIET))  # rebooted: seq from 1, time newer than anything seen
    assert run.state.seq_next == 0 and run.outcomes[-1].evaluated == 0  # unknown again: waits the bound
    run.feed(tele(E, "E1", 41, 2, **QUIET))  # the bound lets 1 go, and 2 follows in sequence
    assert run.state.seq_next == 3 and run.outcomes[-1].evaluated == 2
    run.feed(tele(E, "E1", 42, 3, **QUIET))
    assert run.outcomes[-1].evaluated == 1
