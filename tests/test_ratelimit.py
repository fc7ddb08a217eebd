from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.ratelimit import RateLimiter


def test_allows_the_whole_allowance_at_once_then_refuses_with_the_wait() -> None:
    limiter = RateLimiter(limit=20, period=60.0)
    assert all(limiter.acquire("u1", now=0.0) == 0.0 for _ in range(20))
    assert limiter.acquire("u1", now=0.0) == pytest.approx(60.0)
    assert limiter.acquire("u2", now=0.0) == 0.0


def test_the_allowance_comes_back_as_old_events_leave_the_window() -> None:
    limiter = RateLimiter(limit=2, period=10.0)
    assert limiter.acquire("k", 0.0) == 0.0
    assert limiter.acquire("k", 0.0) == 0.0
    assert limiter.acquire("k", 4.0) == pytest.approx(6.0)
    assert limiter.acquire("k", 10.0) == 0.0
    assert limiter.acquire("k", 10.0) == 0.0
    assert limiter.acquire("k", 10.0) == pytest.approx(10.0)


def test_a_refused_attempt_does_not_push_the_allowance_away() -> None:
    limiter = RateLimiter(limit=1, period=10.0)
    assert limiter.acquire("k", 0.0) == 0.0
    for now in (1.0, 2.0, 3.0):
        assert limiter.acquire("k", now) > 0
    assert limiter.acquire("k", 10.0) == 0.0


def test_idle_keys_are_pruned() -> None:
    limiter = RateLimiter(limit=1, period=1.0)
    for index in range(5000):
        limiter.acquire(f"client-{index}", now=float(index))
    assert len(limiter) < 2100


@pytest.mark.parametrize(("limit", "period"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_a_meaningless_limit(limit: int, period: float) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(limit=limit, period=period)


@given(
    limit=st.integers(1, 50),
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0, 9.99, 10.0]), max_size=200),
)
def test_never_more_than_limit_in_any_window(limit: int, gaps: list[float]) -> None:
    period = 10.0
    limiter = RateLimiter(limit=limit, period=period)
    now, allowed = 0.0, []
    for gap in gaps:
        now += gap
        if limiter.acquire("k", now) == 0.0:
            allowed.append(now)
    for index, start in enumerate(allowed):
        in_window = [t for t in allowed[index:] if t < start + period - 1e-9]
        assert len(in_window) <= limit
