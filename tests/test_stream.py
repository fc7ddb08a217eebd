"""A stream's hub-facing state on its own (router/core/stream.py): plain calls, no trio."""

from __future__ import annotations

from collections import Counter

from router.core.cursor import Cursor, EventIdentity
from router.core.events import ContentUpdateEvent
from router.core.history import Entry, Replay
from router.core.inbox import Delivery
from router.core.observer import CloseReason, Offer, Transport
from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope
from router.core.session_settings import SessionSettings
from router.core.stream import Stream
from router.core.writer import Pause
from router.core.ws_wire import JSONFrames

BOTH = Principal("u1", frozenset({"n1", "n2"}))
ONLY_N2 = Principal("u1", frozenset({"n2"}))


def delivery(offset: int, novel_id: str) -> Delivery:
    where = EventIdentity("memory", "0", (offset,), "e1")
    cursor = Cursor.of(where)
    message = ContentUpdateEvent(
        novel_id=novel_id, content_version=offset, scope=Scope(novel_id=novel_id)
    )
    return Delivery(offset, where, cursor, message.with_id(str(cursor)))


def written(stream: Stream) -> list[object]:
    chunks = []
    while (step := stream.next()) is not Pause.WAIT:
        if step is not Pause.CHECKPOINT:
            chunks.append(step)
            stream.wrote()
    return chunks


def test_the_wire_format_says_the_transport() -> None:
    assert Stream(BOTH, StreamFilter(), 0.0).transport is Transport.SSE
    websocket = Stream(BOTH, StreamFilter(), 0.0, wire=JSONFrames("test"))
    assert websocket.transport is Transport.WEBSOCKET


def test_the_settings_shape_the_inbox() -> None:
    stream = Stream(BOTH, StreamFilter(), 0.0, settings=SessionSettings(session_buffer=7))
    assert stream.inbox_capacity == 7


def test_the_first_reason_to_stop_is_kept_and_later_offers_are_refused() -> None:
    stream = Stream(BOTH, StreamFilter(), 0.0)
    stream.stop(CloseReason.LAGGED)
    stream.stop(CloseReason.CLIENT)
    assert stream.close_reason is CloseReason.LAGGED
    outcomes: Counter[Offer] = Counter()
    stream.inbox.offer([delivery(0, "n1")], outcomes)
    assert outcomes == {Offer.CLOSED: 1}


def test_a_narrowing_drops_what_waits_for_the_old_grants_and_says_so_first() -> None:
    stream = Stream(BOTH, StreamFilter(), 0.0)
    stream.start(None, delivery(0, "n3").cursor, 1000, "c", 0.0)
    assert len(written(stream)) == 1  # the hello
    stream.inbox.offer([delivery(1, "n1"), delivery(2, "n2")], Counter())
    stream.narrow(ONLY_N2, b": narrowed\n\n")
    chunks = written(stream)
    assert chunks[0] == b": narrowed\n\n"
    assert b'"novel_id":"n2"' in b"".join(c for c in chunks if isinstance(c, bytes))
    assert b'"novel_id":"n1"' not in b"".join(c for c in chunks if isinstance(c, bytes))
    assert stream.events_sent == 1


def test_a_rescope_holds_everything_back_until_its_replay_comes() -> None:
    stream = Stream(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), 0.0)
    stream.start(None, delivery(0, "n3").cursor, 1000, "c", 0.0)
    written(stream)
    missed = delivery(1, "n2")
    stream.begin_rescope(BOTH, StreamFilter(), 60.0)
    assert stream.expires_at == 60.0
    stream.inbox.offer([delivery(2, "n1")], Counter())
    assert stream.next() is Pause.WAIT
    stream.finish_rescope(
        Replay([Entry(missed.identity, missed.message, 0.0)], truncated=False),
        missed.cursor,
        b": filtered\n\n",
    )
    chunks = b"".join(c for c in written(stream) if isinstance(c, bytes))
    assert (
        chunks.index(b'"novel_id":"n2"')
        < chunks.index(b": filtered")
        < chunks.index(b'"novel_id":"n1"')
    )
