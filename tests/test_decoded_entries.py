"""router/cache/decoded.py: entries decoded once, shared, never served stale, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.cache.decoded import DecodedEntries
from router.core.cursor import EventIdentity
from router.core.history import Entry, entry_size
from router.core.scope import Scope
from router.core.sse import SSEMessage


def decode(fields: dict[bytes, bytes], epoch: str) -> Entry:
    """What the Redis cache's decoding would give for ``fields`` (here: its data is them)."""
    identity = EventIdentity("kafka", "0", (int(fields.get(b"o", b"0")),), epoch)
    data = {k.decode(): v.decode() for k, v in fields.items()}
    message = SSEMessage(event="e", data=data, id=None, scope=Scope(user_id="u1"))
    return Entry(identity, message, 0.0)


def test_an_entry_read_back_the_same_again_is_the_one_decoded_before() -> None:
    decoded = DecodedEntries(max_events=10, max_bytes=None)
    fields = {b"o": b"1", b"d": b"x"}
    first = decoded.entry(b"1-0", fields, "e1", lambda: decode(fields, "e1"))
    again = decoded.entry(b"1-0", dict(fields), "e1", lambda: decode(fields, "e1"))
    assert again is first
    assert decoded.decoded == 1


def test_other_fields_or_another_epoch_under_the_same_id_are_decoded_afresh() -> None:
    decoded = DecodedEntries(max_events=10, max_bytes=None)
    old, new = {b"o": b"1", b"d": b"old"}, {b"o": b"1", b"d": b"new"}
    decoded.entry(b"1-0", old, "e1", lambda: decode(old, "e1"))
    rewritten = decoded.entry(b"1-0", new, "e1", lambda: decode(new, "e1"))
    assert rewritten.message.data == {"o": "1", "d": "new"}  # the stream was written again
    other_epoch = decoded.entry(b"1-0", new, "e2", lambda: decode(new, "e2"))
    assert other_epoch.identity.epoch == "e2"
    assert (decoded.decoded, len(decoded)) == (3, 1)


def test_what_decoding_raises_goes_through_and_nothing_is_kept() -> None:
    decoded = DecodedEntries(max_events=10, max_bytes=None)

    def unreadable() -> Entry:
        raise ValueError("not JSON")

    try:
        decoded.entry(b"1-0", {b"d": b"{"}, "e1", unreadable)
    except ValueError:
        pass
    else:
        raise AssertionError("the decoding error was swallowed")
    assert len(decoded) == 0


def test_it_holds_at_most_max_events_and_max_bytes_the_first_decoded_going_first() -> None:
    by_count = DecodedEntries(max_events=3, max_bytes=None)
    for n in range(5):
        fields = {b"o": str(n).encode()}
        by_count.entry(str(n).encode(), fields, "e1", lambda f=fields: decode(f, "e1"))
    assert len(by_count) == 3
    kept = {b"o": b"4"}
    assert by_count.entry(b"4", kept, "e1", lambda: decode(kept, "e1")) is not None
    assert by_count.decoded == 5  # 4 was still held
    one = entry_size(decode({b"o": b"0"}, "e1"))
    by_bytes = DecodedEntries(max_events=100, max_bytes=2 * one)
    for n in range(5):
        fields = {b"o": str(n).encode()}
        by_bytes.entry(str(n).encode(), fields, "e1", lambda f=fields: decode(f, "e1"))
    assert len(by_bytes) == 2


reads = st.lists(
    st.tuples(
        st.sampled_from([b"1-0", b"2-0", b"3-0", b"4-0"]),
        st.dictionaries(st.sampled_from([b"o", b"d"]), st.sampled_from([b"1", b"2", b"3"])),
        st.sampled_from(["e1", "e2"]),
    ),
    max_size=40,
)


@given(reads, st.integers(min_value=1, max_value=4))
def test_whatever_is_read_the_entry_given_is_what_its_fields_decode_to(
    sequence: list[tuple[bytes, dict[bytes, bytes], str]], max_events: int
) -> None:
    decoded = DecodedEntries(max_events=max_events, max_bytes=None)
    for stream_id, fields, epoch in sequence:
        given_back = decoded.entry(stream_id, fields, epoch, lambda f=fields, e=epoch: decode(f, e))
        assert given_back == decode(fields, epoch)
        assert len(decoded) <= max_events
