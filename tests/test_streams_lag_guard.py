"""Deadman ticks wait while the worker is behind on a partition, never while a unit is silent."""

from __future__ import annotations

from streams.lag_guard import TickLagGuard

NOW = 1_795_300_000_000


def test_a_partition_behind_with_records_waiting_defers_its_ticks() -> None:
    guard = TickLagGuard(max_lag_ms=10_000)
    guard.saw(0, NOW - 60_000)  # the newest reading evaluated on 0 came a minute ago...
    guard.saw(1, NOW - 60_000)
    guard.saw(2, NOW - 500)
    # ...and records wait on 0 (the worker lags) but not on 1 (its units went silent)
    assert guard.behind(NOW, {0: 5_000, 1: 0, 2: 40}) == {0}


def test_only_newer_receive_times_count_and_zero_switches_it_off() -> None:
    guard = TickLagGuard(max_lag_ms=10_000)
    guard.saw(0, NOW - 1_000)
    guard.saw(0, NOW - 90_000)  # an older reading evaluated later (another topic) moves nothing
    assert guard.behind(NOW, {0: 10}) == set()
    assert guard.behind(NOW + 20_000, {0: 10}) == {0}
    assert TickLagGuard(max_lag_ms=0).behind(NOW, {0: 10}) == set()


def test_a_partition_never_evaluated_with_records_waiting_is_behind() -> None:
    assert TickLagGuard(max_lag_ms=10_000).behind(NOW, {3: 1}) == {3}
