from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.dedup import RecentIds


def test_an_id_seen_within_the_window_is_a_duplicate() -> None:
    recent = RecentIds(capacity=2)
    assert not recent.seen_before("a")
    assert recent.seen_before("a")
    assert not recent.seen_before("b")
    assert not recent.seen_before("c")  # forgets "a"
    assert not recent.seen_before("a")
    assert len(recent) == 2


def test_needs_a_window() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RecentIds(0)


@given(ids=st.lists(st.sampled_from("abcdefgh"), max_size=100), capacity=st.integers(1, 10))
def test_matches_a_sliding_window_of_distinct_ids(ids: list[str], capacity: int) -> None:
    recent = RecentIds(capacity)
    window: list[str] = []
    for event_id in ids:
        assert recent.seen_before(event_id) is (event_id in window)
        if event_id not in window:
            window.append(event_id)
            window = window[-capacity:]
