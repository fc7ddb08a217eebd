"""The circuit breaker's rules (router/core/breaker.py), with time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.breaker import BreakerSettings, BreakerState, CircuitBreaker, Ticket

SETTINGS = BreakerSettings(failure_threshold=3, open_seconds=1.0, max_open_seconds=4.0)


def opened_breaker(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(3):
        breaker.failed(breaker.ask(now), now)  # type: ignore[arg-type]
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_a_closed_breaker_lets_calls_through_and_forgets_failures_on_a_success() -> None:
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(2):
        breaker.failed(Ticket.CALL, 0.0)
    breaker.succeeded(Ticket.CALL)
    breaker.failed(Ticket.CALL, 0.0)
    breaker.failed(Ticket.CALL, 0.0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.ask(0.0) is Ticket.CALL
    assert breaker.wait(0.0) == 0.0


def test_failures_in_a_row_open_it_and_calls_are_refused_with_the_time_left() -> None:
    breaker = opened_breaker(now=10.0)
    assert breaker.opened == 1
    assert breaker.ask(10.25) == pytest.approx(0.75)
    assert breaker.wait(10.5) == pytest.approx(0.5)


def test_once_the_wait_is_over_exactly_one_probe_goes_and_others_wait() -> None:
    breaker = opened_breaker()
    assert breaker.ask(1.0) is Ticket.PROBE
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.ask(1.0) == SETTINGS.probe_wait_seconds
    assert breaker.wait(1.0) == SETTINGS.probe_wait_seconds


def test_a_probe_that_succeeds_closes_it() -> None:
    breaker = opened_breaker()
    probe = breaker.ask(1.0)
    breaker.succeeded(probe)  # type: ignore[arg-type]
    assert breaker.state is BreakerState.CLOSED
    assert breaker.ask(1.0) is Ticket.CALL


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_maximum() -> None:
    breaker = opened_breaker()
    now = 0.0
    waits = []
    for _ in range(4):
        now += breaker.wait(now)
        probe = breaker.ask(now)
        assert probe is Ticket.PROBE
        breaker.failed(probe, now)
        waits.append(breaker.wait(now))
    assert waits == [2.0, 4.0, 4.0, 4.0]
    now += 4.0
    breaker.succeeded(breaker.ask(now))  # type: ignore[arg-type]
    for _ in range(3):
        breaker.failed(breaker.ask(now), now)  # type: ignore[arg-type]
    assert breaker.wait(now) == SETTINGS.open_seconds  # closed again: back to the first wait


def test_an_abandoned_probe_lets_the_next_call_probe() -> None:
    breaker = opened_breaker()
    breaker.abandoned(breaker.ask(1.0))  # type: ignore[arg-type]
    assert breaker.ask(1.0) is Ticket.PROBE


def test_calls_from_before_it_opened_change_nothing_when_they_fail_late() -> None:
    breaker = opened_breaker()
    breaker.failed(Ticket.CALL, 0.5)
    breaker.succeeded(Ticket.CALL)
    assert breaker.state is BreakerState.OPEN
    assert breaker.wait(0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": 0},
        {"open_seconds": 0},
        {"open_seconds": 5, "max_open_seconds": 1},
        {"probe_wait_seconds": 0},
    ],
)
def test_settings_that_cannot_work_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="a breaker"):
        BreakerSettings(**settings)  # type: ignore[arg-type]


outcomes = st.lists(
    st.tuples(st.sampled_from(["ask", "ok", "fail", "abandon"]), st.floats(0, 5)), max_size=60
)


@given(outcomes)
def test_whatever_happens_at_most_one_probe_is_out_and_a_refusal_has_a_positive_wait(
    steps: list[tuple[str, float]],
) -> None:
    breaker = CircuitBreaker(SETTINGS)
    now = 0.0
    out: list[Ticket] = []
    for action, elapsed in steps:
        now += elapsed
        if action == "ask":
            answer = breaker.ask(now)
            if isinstance(answer, Ticket):
                out.append(answer)
            else:
                assert 0 < answer <= SETTINGS.max_open_seconds
                assert breaker.state is not BreakerState.CLOSED
        elif out:
            ticket = out.pop(0)
            if action == "ok":
                breaker.succeeded(ticket)
            elif action == "fail":
                breaker.failed(ticket, now)
            else:
                breaker.abandoned(ticket)
        assert out.count(Ticket.PROBE) <= 1
        if breaker.state is BreakerState.CLOSED:
            assert breaker.ask(now) is Ticket.CALL
            out.append(Ticket.CALL)
