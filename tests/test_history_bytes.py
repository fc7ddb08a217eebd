"""The replay window bounded by bytes (``--cache-max-bytes``): the oldest go first, and a resume
across what they took says it is truncated."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.cache.memory import MemoryReplayCache
from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.history import Entry, History, entry_size
from router.core.scope import Scope
from router.core.sse import SSEMessage

EVERYTHING = parse_cursor("kafka@e1:0:100000")


def entry(offset: int, payload_bytes: int = 0) -> Entry:
    identity = EventIdentity("kafka", "0", (offset,), "e1")
    message = SSEMessage(
        event="x.happened",
        data={"n": offset, "pad": "x" * payload_bytes},
        id=str(Cursor.of(identity)),
        scope=Scope(broadcast=True),
    )
    return Entry(identity, message, appended_at=0.0)


def test_the_size_of_an_entry_is_its_bytes_on_the_wire() -> None:
    item = entry(1, 1000)
    assert entry_size(item) == len(item.message.to_sse_format())
    assert 1000 < entry_size(item) < 1200


def test_past_max_bytes_the_oldest_are_evicted_and_a_resume_across_them_is_truncated() -> None:
    size = entry_size(entry(0, 10_000))
    history = History(max_events=1000, max_bytes=3 * size, source="kafka", epoch="e1")
    for offset in range(5):
        history.append(entry(offset, 10_000))
    assert [e.identity.offset[0] for e in history] == [2, 3, 4]
    assert history.size == 3 * size
    behind = history.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
    assert behind.truncated  # offset 1 was evicted for its size: said, not skipped
    assert not history.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING).truncated


def test_an_event_larger_than_the_whole_bound_is_not_kept_and_its_loss_is_said() -> None:
    history = History(max_events=10, max_bytes=500, source="kafka", epoch="e1")
    history.append(entry(0))
    history.append(entry(1, 5000))
    assert len(history) == 0
    assert history.size == 0
    assert history.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING).truncated


def test_a_new_history_starts_empty_by_bytes_too() -> None:
    history = History(max_events=10, max_bytes=100_000, source="kafka", epoch="e1")
    history.append(entry(0, 100))
    other = EventIdentity("kafka", "0", (0,), "e2")
    history.append(Entry(other, entry(0, 10).message, 0.0))
    assert history.size == entry_size(Entry(other, entry(0, 10).message, 0.0))


def test_a_meaningless_size_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        History(max_events=1, max_bytes=0)


@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    max_bytes=st.integers(1, 12_000),
    max_events=st.integers(1, 30),
    seen=st.integers(0, 40),
)
def test_bounded_by_bytes_a_resume_never_misses_silently_and_never_repeats(
    sizes: list[int], max_bytes: int, max_events: int, seen: int
) -> None:
    history = History(max_events=max_events, max_bytes=max_bytes, source="kafka", epoch="e1")
    items = [entry(offset, size) for offset, size in enumerate(sizes)]
    for item in items:
        history.append(item)
        assert history.size <= max_bytes
        assert len(history) <= max_events
        assert history.size == sum(entry_size(e) for e in history)
    seen = min(seen, len(items) - 1)
    replay = history.replay(Cursor.of(items[seen].identity), EVERYTHING)
    got = [e.identity.offset[0] for e in replay.entries]
    assert all(offset > seen for offset in got)
    assert replay.truncated or got == list(range(seen + 1, len(items)))


async def test_the_memory_cache_is_bounded_by_bytes() -> None:
    size = entry_size(entry(0, 1000))
    cache = MemoryReplayCache(max_events=100, max_bytes=2 * size, clock=lambda: 0.0)
    await cache.append([entry(offset, 1000) for offset in range(4)])
    assert (await cache.window()).events == 2
    assert (await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)).truncated
