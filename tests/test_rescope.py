"""A session's principal or filter changed while it runs (Session.begin_rescope/finish_rescope,
driven by Hub.rescope): narrowing never writes what was queued for the old scope, widening writes
the replay first, with no duplicate of what waits in the inbox."""

from __future__ import annotations

import json

import trio
import trio.testing

from actors.session import CloseReason, Session, SharedBatch
from router.core.history import Entry, Replay
from router.core.permissions import Principal, StreamFilter
from router.core.sse import SSEMessage
from tests.actor_helpers import Feed, content, in_an_hour, offer_batch
from tests.sse_spec_parser import parse_stream

BOTH = Principal(user_id="u1", novels=frozenset({"n1", "n2"}))
ONLY_N2 = Principal(user_id="u1", novels=frozenset({"n2"}))


class _Drain:
    def __init__(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        self.receive = receive
        self.raw = b""

    async def run(self) -> None:
        async for chunk in self.receive:
            self.raw += chunk


def _novels(raw: bytes) -> list[tuple[str, int]]:
    events = parse_stream(raw).events
    return [
        (data["novel_id"], data["content_version"])
        for data in (json.loads(e.data) for e in events)
        if "novel_id" in data
    ]


async def test_narrowing_drops_what_was_queued_for_the_old_scope_shared_batches_included() -> None:
    subject = Session(BOTH, StreamFilter(), expires_at=in_an_hour())
    feed = Feed()
    send, receive = trio.open_memory_channel[bytes](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send)
        await receive.receive()  # the hello
        offer_batch(subject, SharedBatch([feed.next(content("n2", 1))]))
        await receive.receive()  # served one by one, now in step with the router's cursor
        offer_batch(subject, SharedBatch([feed.next(content("n2", 2))]))
        await trio.testing.wait_all_tasks_blocked()  # the writer waits to send n2/2
        queued = SharedBatch([feed.next(content("n1", 3)), feed.next(content("n2", 4))])
        offer_batch(subject, queued)  # queued as one shared batch, admitted for the old scope
        assert feed.cursor is not None
        subject.begin_rescope(ONLY_N2, StreamFilter(), in_an_hour())
        subject.finish_rescope(None, feed.cursor)
        drain = _Drain(receive)
        nursery.start_soon(drain.run)
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    raw = drain.raw
    assert _novels(raw) == [("n2", 2), ("n2", 4)]


async def test_nothing_is_written_between_the_rescope_and_its_replay() -> None:
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send)
        offer_batch(subject, [feed.next(content("n1", 1))])
        await trio.testing.wait_all_tasks_blocked()
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
        queued = feed.next(content("n1", 2))
        offer_batch(subject, [queued])
        await trio.testing.wait_all_tasks_blocked()
        written_meanwhile = receive.statistics().current_buffer_used
        replay = Replay([Entry(queued.identity, queued.message, 0.0)], truncated=False)
        assert feed.cursor is not None
        subject.finish_rescope(replay, feed.cursor)
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
        drain = _Drain(receive)
        await drain.run()
    raw = drain.raw
    assert written_meanwhile == 2  # the hello and n1/1: n1/2 waits for the replay
    assert _novels(raw) == [("n1", 1), ("n1", 2)]


async def test_widening_writes_the_replay_first_then_the_answer_then_live_without_repeats() -> None:
    """The replay from the client's cursor holds what the new filter now admits (n2) and what
    waits in the inbox already (n1/3): each is written once, in the bus's order."""
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send)
        offer_batch(subject, [feed.next(content("n1", 1))])
        await trio.testing.wait_all_tasks_blocked()
        missed: list[SSEMessage] = [content("n2", 2), content("n1", 3)]
        deliveries = [feed.next(message) for message in missed]
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
        offer_batch(subject, [deliveries[1]])  # n1/3 was queued before; n2/2 was not for it
        replay = Replay([Entry(d.identity, d.message, 0.0) for d in deliveries], truncated=False)
        assert feed.cursor is not None
        subject.finish_rescope(replay, feed.cursor, then=b": filtered\n\n")
        await trio.testing.wait_all_tasks_blocked()
        offer_batch(subject, [feed.next(content("n2", 4))])
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
        drain = _Drain(receive)
        await drain.run()
    raw = drain.raw
    assert _novels(raw) == [("n1", 1), ("n2", 2), ("n1", 3), ("n2", 4)]
    assert raw.index(b": filtered") < raw.index(b'"content_version":4')
    ids = [e.last_event_id for e in parse_stream(raw).events]
    assert ids == [f"memory@e1:0:{n}" for n in range(4)]


async def test_two_rescopes_before_the_writer_takes_the_first_answer_both_in_order() -> None:
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        offer_batch(subject, [feed.next(content("n1", 1))])
        assert feed.cursor is not None
        for answer in (b": first\n\n", b": second\n\n"):
            subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
            subject.finish_rescope(Replay([], truncated=False), feed.cursor, then=answer)
        nursery.start_soon(subject.run, send)
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
        drain = _Drain(receive)
        await drain.run()
    assert drain.raw.index(b": first") < drain.raw.index(b": second")
