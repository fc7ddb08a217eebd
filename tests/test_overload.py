"""The overload ladder's rules (router/core/overload.py), with time and measurements passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.admission import RETRY, Reason
from router.core.overload import (
    REFUSED_SPREAD_SECONDS,
    REFUSED_WAIT_SECONDS,
    Ladder,
    LadderSettings,
    Level,
    Sample,
    Thresholds,
    is_behind,
    overload_refusal,
    pressure,
    slowest,
)
from router.core.refusal import Limit

SETTINGS = LadderSettings(rise_seconds=1.0, calm_seconds=5.0, recover_below=0.7)


def walk(
    ladder: Ladder, pressures: list[float], start: float = 0.0, step: float = 0.5
) -> list[Level]:
    return [ladder.observe(p, start + i * step) for i, p in enumerate(pressures)]


def test_pressure_is_the_worst_measurement_over_its_threshold() -> None:
    thresholds = Thresholds(
        loop_lag_seconds=0.2,
        streams_behind_fraction=0.1,
        streams_behind_minimum=5,
        replays_in_flight=100,
        max_memory_bytes=1000,
        memory_fraction=0.5,
    )
    calm = Sample(loop_lag=0.02, streams=10, streams_behind=1, replays_in_flight=10)
    assert pressure(calm, thresholds) == pytest.approx(0.2)  # 1 behind of the 5 allowed
    lagging = Sample(loop_lag=0.4, streams=10, streams_behind=0, replays_in_flight=0)
    assert pressure(lagging, thresholds) == pytest.approx(2.0)
    many = Sample(loop_lag=0, streams=1000, streams_behind=150, replays_in_flight=0)
    assert pressure(many, thresholds) == pytest.approx(1.5)  # 10 % of 1,000 is past the minimum
    resumes = Sample(loop_lag=0, streams=0, streams_behind=0, replays_in_flight=300)
    assert pressure(resumes, thresholds) == pytest.approx(3.0)
    big = Sample(loop_lag=0, streams=0, streams_behind=0, replays_in_flight=0, resident_bytes=750)
    assert pressure(big, thresholds) == pytest.approx(1.5)
    unlimited = Thresholds(max_memory_bytes=0)
    assert pressure(big, unlimited) == 0.0  # no --max-memory: memory is no pressure


def test_it_climbs_one_rung_per_rise_period_in_the_fixed_order_and_stops_at_shed() -> None:
    ladder = Ladder(SETTINGS)
    levels = walk(ladder, [1.5] * 10)
    assert levels == [
        Level.NORMAL, Level.NORMAL,  # 0 s, 0.5 s: not yet a whole rise period
        Level.COALESCE, Level.COALESCE,  # 1 s
        Level.REFUSE, Level.REFUSE,  # 2 s
        Level.SHED, Level.SHED, Level.SHED, Level.SHED,  # 3 s, and no rung past it
    ]  # fmt: skip


def test_between_calm_and_the_threshold_it_holds_and_a_blip_does_not_climb() -> None:
    ladder = Ladder(SETTINGS)
    assert walk(ladder, [1.2, 0.9, 1.2, 0.9, 1.2, 0.9]) == [Level.NORMAL] * 6
    ladder = Ladder(SETTINGS)
    walk(ladder, [2.0] * 3)
    assert ladder.level is Level.COALESCE
    assert walk(ladder, [0.8] * 40, start=10) == [Level.COALESCE] * 40  # held, however long


def test_it_recovers_by_itself_one_rung_per_calm_period() -> None:
    ladder = Ladder(SETTINGS)
    walk(ladder, [2.0] * 7)
    assert ladder.level is Level.SHED
    levels = walk(ladder, [0.1] * 31, start=100, step=0.5)
    changes = [(i * 0.5, level) for i, level in enumerate(levels) if i and level != levels[i - 1]]
    assert changes == [(5.0, Level.REFUSE), (10.0, Level.COALESCE), (15.0, Level.NORMAL)]


def test_a_calm_spell_cut_short_starts_its_period_again() -> None:
    ladder = Ladder(SETTINGS)
    walk(ladder, [2.0] * 3)
    walk(ladder, [0.1] * 8, start=10)  # 3.5 s of calm
    ladder.observe(0.9, 14.0)  # held: the calm is broken
    assert walk(ladder, [0.1] * 10, start=15) == [Level.COALESCE] * 10  # 4.5 s: not yet
    assert ladder.observe(0.1, 20.0) is Level.NORMAL


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 3)), max_size=80))
def test_whatever_the_pressure_it_moves_at_most_a_rung_at_a_time_and_only_when_it_should(
    steps: list[tuple[float, float]],
) -> None:
    ladder = Ladder(SETTINGS)
    now = 0.0
    for measured, elapsed in steps:
        now += elapsed
        before = ladder.level
        after = ladder.observe(measured, now)
        assert abs(after - before) <= 1
        if after > before:
            assert measured >= 1.0
        if after < before:
            assert measured < SETTINGS.recover_below


def test_the_refusal_is_retryable_by_the_overload_limit_with_a_spread_wait() -> None:
    soonest, latest = overload_refusal(0.0), overload_refusal(1.0)
    assert soonest.reason is Reason.OVERLOADED
    assert Reason.OVERLOADED in RETRY
    assert soonest.limit is Limit.OVERLOAD
    assert soonest.status == 503
    assert soonest.retry_after == REFUSED_WAIT_SECONDS
    assert latest.retry_after == REFUSED_WAIT_SECONDS + REFUSED_SPREAD_SECONDS
    assert overload_refusal(7.0).retry_after == latest.retry_after  # a share is 0 to 1


def test_the_streams_shed_are_the_slowest_of_those_behind_and_never_one_keeping_up() -> None:
    backlogs = {"a": 200, "b": 10, "c": 256, "d": 130, "e": 128, "f": 0}
    assert slowest(backlogs, behind_at=128, share=0.5) == ["c", "a"]
    assert slowest(backlogs, behind_at=128, share=0.0) == ["c"]  # at least one
    assert slowest(backlogs, behind_at=128, share=1.0) == ["c", "a", "d", "e"]
    assert slowest({"b": 10}, behind_at=128, share=1.0) == []


def test_a_stream_is_behind_by_half_its_events_or_half_its_byte_bound() -> None:
    assert is_behind(128, 256, 0, 1024 * 1024)  # events
    assert is_behind(0, 256, 512 * 1024, 1024 * 1024)  # bytes: inbox, writer's hand, socket
    assert not is_behind(127, 256, 512 * 1024 - 1, 1024 * 1024)


@given(
    backlog=st.integers(0, 1000),
    capacity=st.integers(1, 1000),
    waiting=st.integers(0, 10**7),
    bound=st.integers(1, 10**7),
    more=st.integers(0, 10**6),
)
def test_more_waiting_never_makes_a_stream_less_behind(
    backlog: int, capacity: int, waiting: int, bound: int, more: int
) -> None:
    """Behind is monotonic in what waits, by events and by bytes: a client that falls further
    back never counts as keeping up again until it reads."""
    if is_behind(backlog, capacity, waiting, bound):
        assert is_behind(backlog + more, capacity, waiting, bound)
        assert is_behind(backlog, capacity, waiting + more, bound)


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="a ladder"):
        LadderSettings(recover_below=1.5)
