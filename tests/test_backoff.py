from __future__ import annotations

import pytest

from router.core.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, random=lambda: 1.0)
    assert [round(backoff.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_scales_each_delay_between_half_and_all_of_it() -> None:
    low = Backoff(initial=1.0, maximum=8.0, random=lambda: 0.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, random=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(initial=0.1, maximum=30.0, random=lambda: 1.0)
    for _ in range(10_000):
        delay = backoff.next_delay()
    assert delay == 30.0


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_rejects_meaningless_settings(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial=initial, maximum=maximum, factor=factor)
