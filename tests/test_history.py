"""The replay window: what a resume gets back, and when it must say history was truncated."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.history import Entry, History
from router.core.scope import Scope
from router.core.sse import SSEMessage


def entry(partition: str, offset: int, at: float = 0.0, epoch: str = "e1") -> Entry:
    identity = EventIdentity("kafka", partition, (offset,), epoch)
    cursor = Cursor.of(identity)
    message = SSEMessage(
        event="x.happened", data={"n": offset}, id=str(cursor), scope=Scope(broadcast=True)
    )
    return Entry(identity, message, appended_at=at)


def offsets(entries: list[Entry]) -> list[tuple[str, int]]:
    return [(e.identity.partition, e.identity.offset[0]) for e in entries]


EVERYTHING = parse_cursor("kafka@e1:0:1000,1:1000,2:1000")


def filled(*items: tuple[str, int], max_events: int = 100) -> History:
    history = History(max_events=max_events, source="kafka", epoch="e1")
    for partition, offset in items:
        history.append(entry(partition, offset))
    return history


def test_replays_exactly_what_lies_after_the_cursor_in_every_partition() -> None:
    history = filled(("0", 0), ("1", 0), ("0", 1), ("1", 1), ("0", 2))
    replay = history.replay(parse_cursor("kafka@e1:0:0,1:1"), EVERYTHING)
    assert offsets(replay.entries) == [("0", 1), ("0", 2)]
    assert not replay.truncated


def test_a_partition_the_cursor_does_not_name_is_replayed_whole() -> None:
    history = filled(("0", 0), ("1", 0), ("0", 1))
    assert offsets(history.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING).entries) == [("1", 0)]


def test_up_to_leaves_out_what_will_arrive_live() -> None:
    history = filled(("0", 0), ("0", 1), ("0", 2))
    replay = history.replay(parse_cursor("kafka@e1:0:0"), up_to=parse_cursor("kafka@e1:0:1"))
    assert offsets(replay.entries) == [("0", 1)]


@pytest.mark.parametrize("after", ["kafka@e1:0:0", "kafka@old:0:0"])
def test_nothing_is_replayed_before_the_router_has_routed_anything(after: str) -> None:
    history = filled(("0", 0), ("0", 1))
    assert history.replay(parse_cursor(after), up_to=None).entries == []


def test_eviction_of_unseen_events_is_truncation() -> None:
    history = filled(("0", 0), ("0", 1), ("0", 2), ("0", 3), max_events=2)
    assert len(history) == 2
    behind = history.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
    assert behind.truncated
    assert offsets(behind.entries) == [("0", 2), ("0", 3)]
    just_in_time = history.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING)
    assert not just_in_time.truncated
    assert offsets(just_in_time.entries) == [("0", 2), ("0", 3)]


def test_eviction_in_a_partition_the_cursor_never_saw_is_truncation() -> None:
    history = filled(("1", 0), ("0", 0), ("0", 1), max_events=2)
    assert history.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING).truncated


@pytest.mark.parametrize("cursor", ["kafka@other:0:0", "kafka:0:0", "redis@e1:0:0"])
def test_a_cursor_of_another_history_is_truncation_and_gets_everything(cursor: str) -> None:
    history = filled(("0", 0), ("0", 1))
    replay = history.replay(parse_cursor(cursor), EVERYTHING)
    assert replay.truncated
    assert offsets(replay.entries) == [("0", 0), ("0", 1)]


def test_entries_older_than_max_age_are_evicted() -> None:
    history = History(max_events=100, max_age=60.0, source="kafka", epoch="e1")
    history.append(entry("0", 0, at=0.0))
    history.append(entry("0", 1, at=30.0))
    history.append(entry("0", 2, at=61.0))
    assert offsets(list(history)) == [("0", 1), ("0", 2)]
    history.expire(now=200.0)
    assert len(history) == 0
    assert history.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING).truncated
    assert not history.replay(parse_cursor("kafka@e1:0:2"), EVERYTHING).truncated


def test_a_new_epoch_starts_a_new_history() -> None:
    history = filled(("0", 0), ("0", 1))
    history.append(entry("0", 0, epoch="e2"))
    assert len(history) == 1
    assert history.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING).truncated
    assert not history.replay(parse_cursor("kafka@e2:0:0"), EVERYTHING).truncated


@pytest.mark.parametrize(("max_events", "max_age"), [(0, None), (1, 0.0), (1, -5.0)])
def test_rejects_a_meaningless_retention(max_events: int, max_age: float | None) -> None:
    with pytest.raises(ValueError, match=r"keeps at least|max_age"):
        History(max_events=max_events, max_age=max_age)


@given(
    stream=st.lists(st.sampled_from(["0", "1", "2"]), min_size=1, max_size=60),
    max_events=st.integers(1, 20),
    seen=st.integers(0, 60),
)
def test_a_resume_never_misses_silently_and_never_repeats(
    stream: list[str], max_events: int, seen: int
) -> None:
    """Whatever the retention: the replay holds no event the client saw, and either holds every
    event it did not see, or says it is truncated."""
    history = History(max_events=max_events, source="kafka", epoch="e1")
    next_offset = {"0": 0, "1": 0, "2": 0}
    all_entries = []
    for partition in stream:
        item = entry(partition, next_offset[partition])
        next_offset[partition] += 1
        history.append(item)
        all_entries.append(item)
    seen = min(seen, len(all_entries) - 1)
    cursor = Cursor.of(all_entries[0].identity)
    for item in all_entries[1 : seen + 1]:
        cursor = cursor.advance(item.identity)
    unseen = offsets(all_entries[seen + 1 :])
    replay = history.replay(cursor, EVERYTHING)
    got = offsets(replay.entries)
    assert not set(got) & set(offsets(all_entries[: seen + 1]))
    assert replay.truncated or got == unseen
    assert got == [item for item in unseen if item in set(offsets(list(history)))]


@given(
    stream=st.lists(st.sampled_from(["0", "1", "2"]), max_size=40),
    after=st.dictionaries(st.sampled_from(["0", "1", "2", "3"]), st.integers(0, 20)),
    up_to=st.dictionaries(st.sampled_from(["0", "1", "2", "3"]), st.integers(0, 20)),
    after_epoch=st.sampled_from(["e1", "e0"]),
    up_to_epoch=st.sampled_from(["e1", "e0"]),
    max_events=st.integers(1, 40),
)
def test_a_replay_is_what_the_cursors_say_entry_by_entry(
    stream: list[str],
    after: dict[str, int],
    up_to: dict[str, int],
    after_epoch: str,
    up_to_epoch: str,
    max_events: int,
) -> None:
    """The replay's entries are those ``up_to`` covers and ``after`` does not, by
    ``Cursor.covers`` (of another history: every entry ``up_to`` covers), in order."""
    history = History(max_events=max_events, source="kafka", epoch="e1")
    next_offset = {"0": 0, "1": 0, "2": 0}
    for partition in stream:
        history.append(entry(partition, next_offset[partition]))
        next_offset[partition] += 1
    start = Cursor("kafka", after_epoch, tuple((p, (o,)) for p, o in after.items()))
    end = Cursor("kafka", up_to_epoch, tuple((p, (o,)) for p, o in up_to.items()))
    same = after_epoch == "e1"
    expected = [
        e for e in history if end.covers(e.identity) and not (same and start.covers(e.identity))
    ]
    assert history.replay(start, end).entries == expected
