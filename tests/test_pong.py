"""The rule behind close code 4008 (router/core/pong.py), tested directly: time is a number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.pong import Liveness, PongDeadline

ANSWERING, SILENT = Liveness.ANSWERING, Liveness.SILENT


def test_a_peer_that_answers_every_ping_is_never_silent() -> None:
    deadline = PongDeadline(timeout=30)
    for n in range(100):
        assert deadline.ping_sent(n * 15.0) is ANSWERING
        deadline.pong_received()


def test_a_ping_unanswered_for_the_timeout_makes_the_peer_silent_at_the_next_ping() -> None:
    deadline = PongDeadline(timeout=30)
    assert deadline.ping_sent(0) is ANSWERING
    assert deadline.ping_sent(15) is ANSWERING
    assert deadline.ping_sent(30) is SILENT


def test_the_wait_runs_from_the_first_unanswered_ping_not_the_last() -> None:
    deadline = PongDeadline(timeout=30)
    deadline.ping_sent(0)
    deadline.pong_received()
    deadline.ping_sent(15)  # unanswered from here
    assert deadline.ping_sent(30) is ANSWERING
    assert deadline.ping_sent(44.9) is ANSWERING
    assert deadline.liveness(45) is SILENT


def test_one_late_pong_answers_every_ping_before_it() -> None:
    """RFC 6455 lets a peer answer only the latest of several pings."""
    deadline = PongDeadline(timeout=30)
    deadline.ping_sent(0), deadline.ping_sent(15)
    deadline.pong_received()
    assert deadline.unanswered_since is None
    assert deadline.ping_sent(30) is ANSWERING


def test_a_peer_never_pinged_is_never_silent() -> None:
    assert PongDeadline(timeout=1).liveness(1e9) is ANSWERING


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_a_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        PongDeadline(timeout)


@given(
    timeout=st.floats(0.01, 100),
    steps=st.lists(st.tuples(st.floats(0, 50), st.booleans()), max_size=40),
)
def test_silent_exactly_when_some_ping_since_the_last_pong_waited_the_timeout(
    timeout: float, steps: list[tuple[float, bool]]
) -> None:
    """Any sequence of pings, each answered or not before the next: the verdict at each ping is
    what a plain reading of the rule says, from the pings themselves."""
    deadline, now, unanswered = PongDeadline(timeout), 0.0, list[float]()
    for gap, answered in steps:
        now += gap
        expected = SILENT if unanswered and now - unanswered[0] >= timeout else ANSWERING
        assert deadline.ping_sent(now) is expected
        unanswered.append(now)
        if answered:
            deadline.pong_received()
            unanswered.clear()
