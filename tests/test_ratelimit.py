from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.ratelimit import RateLimiter, Refused, acquire_all


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


def test_asking_takes_nothing() -> None:
    limiter = RateLimiter(limit=1, period=10.0)
    assert all(limiter.wait("k", 0.0) == 0.0 for _ in range(5))
    limiter.take("k", 0.0)
    assert limiter.wait("k", 4.0) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="no allowance"):
        limiter.take("k", 4.0)


def test_a_refusal_by_one_limit_spends_no_other_allowance() -> None:
    per_user, per_address = RateLimiter(2, 60.0), RateLimiter(2, 60.0)

    def connect(user: str, address: str, now: float = 0.0) -> Refused[str] | None:
        claims = {"user": (per_user, user), "address": (per_address, address)}
        return acquire_all(claims, now)

    assert connect("u1", "a") is None
    assert connect("u1", "a") is None
    # u2 behind the full address a: refused for the address, and u2 keeps its own allowance
    assert connect("u2", "a") == Refused("address", pytest.approx(60.0))
    assert connect("u2", "b") is None
    assert connect("u2", "b") is None
    # u1 retrying, refused for itself, does not fill address c for the others behind it
    assert connect("u1", "c", 1.0) == Refused("user", pytest.approx(59.0))
    assert connect("u3", "c", 1.0) is None
    assert connect("u3", "c", 1.0) is None


def test_the_refusal_names_the_limit_with_the_longest_wait() -> None:
    per_user, per_address = RateLimiter(1, 60.0), RateLimiter(1, 60.0)
    per_user.take("u1", 0.0)
    per_address.take("a", 10.0)
    claims = {"user": (per_user, "u1"), "address": (per_address, "a")}
    assert acquire_all(claims, 20.0) == Refused("address", pytest.approx(50.0))
    assert acquire_all(claims, 20.0, take=False) == Refused("address", pytest.approx(50.0))
    assert acquire_all(claims, 70.0, take=False) is None
    assert acquire_all(claims, 70.0, take=False) is None  # only asked: still allowed
    assert acquire_all(claims, 70.0) is None
    assert acquire_all(claims, 70.0) is not None


class ModelLimit:
    """The same limit, naively: every accepted time kept, the window counted afresh."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit, self.period = limit, period
        self.accepted: dict[str, list[float]] = {}

    def wait(self, key: str, now: float) -> float:
        recent = [t for t in self.accepted.get(key, []) if t > now - self.period]
        if len(recent) < self.limit:
            return 0.0
        return recent[-self.limit] + self.period - now


@given(
    limit=st.integers(1, 4),
    attempts=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3"]),
            st.sampled_from(["a", "b"]),
            st.sampled_from([0.0, 0.5, 3.0, 10.0]),
            st.booleans(),
        ),
        max_size=120,
    ),
)
def test_limits_taken_together_match_a_model_and_refusals_take_nothing(
    limit: int, attempts: list[tuple[str, str, float, bool]]
) -> None:
    period = 10.0
    per_user, per_address = RateLimiter(limit, period), RateLimiter(limit, period)
    users, addresses = ModelLimit(limit, period), ModelLimit(limit, period)
    now = 0.0
    for user, address, gap, take in attempts:
        now += gap
        expected = {"user": users.wait(user, now), "address": addresses.wait(address, now)}
        claims = {"user": (per_user, user), "address": (per_address, address)}
        refused = acquire_all(claims, now, take=take)
        if max(expected.values()) > 0:
            assert refused is not None
            assert refused.wait == pytest.approx(max(expected.values()))
            assert expected[refused.limit] == pytest.approx(refused.wait)
        else:
            assert refused is None
            if take:
                users.accepted.setdefault(user, []).append(now)
                addresses.accepted.setdefault(address, []).append(now)
        for key in ("u1", "u2", "u3"):
            assert per_user.wait(key, now) == pytest.approx(users.wait(key, now))
        for key in ("a", "b"):
            assert per_address.wait(key, now) == pytest.approx(addresses.wait(key, now))
