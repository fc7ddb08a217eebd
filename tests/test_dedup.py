from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.dedup import RecentIds, Sighting, event_digest
from router.core.envelope import parse_envelope

A, B = b"digest-a", b"digest-b"


def test_an_id_seen_within_the_window_with_the_same_content_is_a_duplicate() -> None:
    recent = RecentIds(capacity=2)
    assert recent.sight("a", A) is Sighting.NEW
    assert recent.sight("a", A) is Sighting.DUPLICATE
    assert recent.sight("b", A) is Sighting.NEW  # another id: content does not matter
    assert recent.sight("c", A) is Sighting.NEW  # forgets "a"
    assert recent.sight("a", A) is Sighting.NEW
    assert len(recent) == 2


def test_an_id_seen_with_other_content_is_a_reuse_and_both_events_are_remembered() -> None:
    recent = RecentIds(capacity=10)
    assert recent.sight("a", A) is Sighting.NEW
    assert recent.sight("a", B) is Sighting.REUSED_ID
    assert recent.sight("a", B) is Sighting.DUPLICATE  # the second event, retried
    assert recent.sight("a", A) is Sighting.DUPLICATE  # and the first one
    assert len(recent) == 2


def test_needs_a_window() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RecentIds(0)


@given(
    sightings=st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from([A, B])), max_size=100),
    capacity=st.integers(1, 10),
)
def test_matches_a_sliding_window_of_distinct_events(
    sightings: list[tuple[str, bytes]], capacity: int
) -> None:
    """A window of the last ``capacity`` distinct (id, content) pairs: a pair in it is a
    duplicate, an id in it with other content a reuse, anything else new."""
    recent = RecentIds(capacity)
    window: list[tuple[str, bytes]] = []
    for event_id, digest in sightings:
        if (event_id, digest) in window:
            expected = Sighting.DUPLICATE
        elif any(seen_id == event_id for seen_id, _ in window):
            expected = Sighting.REUSED_ID
        else:
            expected = Sighting.NEW
        assert recent.sight(event_id, digest) is expected
        if expected is not Sighting.DUPLICATE:
            window = [*window, (event_id, digest)][-capacity:]
        assert len(recent) == len(window)


def envelope(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "event_type": "Content.Updated",
        "event_id": "e1",
        "occurred_at": "2026-11-28T10:00:00Z",
        "scope": {"novel_id": "n1"},
        "payload": {"novel_id": "n1", "content_version": 1, "extra": {"b": 1, "a": [1, 2]}},
    }
    return {**body, **changes}


def test_the_digest_is_of_type_scope_and_payload_only() -> None:
    digest = event_digest(parse_envelope(envelope()))
    # The id, the time of a retry, and the order of keys do not make another event.
    assert event_digest(parse_envelope(envelope(event_id="e2"))) == digest
    assert event_digest(parse_envelope(envelope(occurred_at="2026-11-28T11:00:00Z"))) == digest
    reordered = {"extra": {"a": [1, 2], "b": 1}, "content_version": 1, "novel_id": "n1"}
    assert event_digest(parse_envelope(envelope(payload=reordered))) == digest
    # Anything else does.
    others = [
        envelope(event_type="Content.Deleted"),
        envelope(scope={"novel_id": "n1", "user_id": "u1"}),
        envelope(payload={"novel_id": "n1", "content_version": 2}),
        envelope(
            payload={"novel_id": "n1", "content_version": 1.0, "extra": {"b": 1, "a": [1, 2]}}
        ),
    ]
    digests = {event_digest(parse_envelope(other)) for other in others}
    assert digest not in digests
    assert len(digests) == len(others)


@given(text=st.text())
def test_the_digest_takes_any_string_even_a_lone_surrogate(text: str) -> None:
    assert len(event_digest(parse_envelope(envelope(payload={"novel_id": text})))) == 16
