"""A session's principal or filter changed while it runs (Session.begin_rescope/finish_rescope,
driven by Hub.rescope): narrowing never writes what was queued for the old scope, widening writes
the replay first, with no duplicate of what waits in the inbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio.testing

from actors.session import CloseReason, Delivery, Session, SharedBatch
from router.core.cursor import Cursor
from router.core.history import Entry, Replay
from router.core.inbox import MAX_WRITE_BATCH
from router.core.permissions import Principal, StreamFilter
from router.core.sse import SSEMessage
from tests.actor_helpers import Feed, content, in_an_hour, offer_batch
from tests.sse_spec_parser import parse_stream

BOTH = Principal(user_id="u1", novels=frozenset({"n1", "n2"}))
ONLY_N2 = Principal(user_id="u1", novels=frozenset({"n2"}))


@dataclass
class Served:
    """A session writing into a channel of its own; :attr:`raw` is what it wrote, whole once the
    :func:`serving` block has ended."""

    subject: Session
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    nursery: trio.Nursery
    raw: bytes = b""
    draining: bool = False

    def start(self, replay: Replay | None = None, cursor: Cursor | None = None) -> None:
        self.nursery.start_soon(self.subject.run, self.send, replay, cursor)

    async def in_step(self, feed: Feed, first: SSEMessage) -> None:
        """Read the hello and a first shared batch of ``first``: served one by one until then,
        the session is now in step with the router's cursor."""
        await self.receive.receive()  # the hello
        offer_batch(self.subject, SharedBatch([feed.next(first)]))
        await self.receive.receive()

    def drain(self) -> None:
        """Read everything it writes from now on into :attr:`raw` (once: it is idempotent)."""
        if not self.draining:
            self.draining = True
            self.nursery.start_soon(self._read_all)

    async def _read_all(self) -> None:
        async for chunk in self.receive:
            self.raw += chunk


@asynccontextmanager
async def serving(
    subject: Session,
    capacity: int,
    replay: Replay | None = None,
    cursor: Cursor | None = None,
    *,
    started: bool = True,
) -> AsyncIterator[Served]:
    """``subject`` running (unless not ``started``: then the block calls :meth:`Served.start`)
    into a channel of ``capacity`` chunks; when the block ends, it writes all it can, is read
    whole, and is stopped as a client leaving."""
    send, receive = trio.open_memory_channel[bytes](capacity)
    async with trio.open_nursery() as nursery:
        served = Served(subject, send, receive, nursery)
        if started:
            served.start(replay, cursor)
        yield served
        served.drain()
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)


def replay_of(deliveries: Sequence[Delivery]) -> Replay:
    return Replay([Entry(d.identity, d.message, 0.0) for d in deliveries], truncated=False)


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
    async with serving(subject, 0) as served:
        await served.in_step(feed, content("n2", 1))
        offer_batch(subject, SharedBatch([feed.next(content("n2", 2))]))
        await trio.testing.wait_all_tasks_blocked()  # the writer waits to send n2/2
        queued = SharedBatch([feed.next(content("n1", 3)), feed.next(content("n2", 4))])
        offer_batch(subject, queued)  # queued as one shared batch, admitted for the old scope
        assert feed.cursor is not None
        subject.begin_rescope(ONLY_N2, StreamFilter(), in_an_hour())
        subject.finish_rescope(None, feed.cursor)
    assert _novels(served.raw) == [("n2", 2), ("n2", 4)]


async def test_nothing_is_written_between_the_rescope_and_its_replay() -> None:
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 100) as served:
        offer_batch(subject, [feed.next(content("n1", 1))])
        await trio.testing.wait_all_tasks_blocked()
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
        queued = feed.next(content("n1", 2))
        offer_batch(subject, [queued])
        await trio.testing.wait_all_tasks_blocked()
        written_meanwhile = served.receive.statistics().current_buffer_used
        assert feed.cursor is not None
        subject.finish_rescope(replay_of([queued]), feed.cursor)
    assert written_meanwhile == 2  # the hello and n1/1: n1/2 waits for the replay
    assert _novels(served.raw) == [("n1", 1), ("n1", 2)]


async def test_widening_writes_the_replay_first_then_the_answer_then_live_without_repeats() -> None:
    """The replay from the client's cursor holds what the new filter now admits (n2) and what
    waits in the inbox already (n1/3): each is written once, in the bus's order."""
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 100) as served:
        offer_batch(subject, [feed.next(content("n1", 1))])
        await trio.testing.wait_all_tasks_blocked()
        missed: list[SSEMessage] = [content("n2", 2), content("n1", 3)]
        deliveries = [feed.next(message) for message in missed]
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
        offer_batch(subject, [deliveries[1]])  # n1/3 was queued before; n2/2 was not for it
        assert feed.cursor is not None
        subject.finish_rescope(replay_of(deliveries), feed.cursor, then=b": filtered\n\n")
        await trio.testing.wait_all_tasks_blocked()
        offer_batch(subject, [feed.next(content("n2", 4))])
    raw = served.raw
    assert _novels(raw) == [("n1", 1), ("n2", 2), ("n1", 3), ("n2", 4)]
    assert raw.index(b": filtered") < raw.index(b'"content_version":4')
    ids = [e.last_event_id for e in parse_stream(raw).events]
    assert ids == [f"memory@e1:0:{n}" for n in range(4)]


async def test_two_rescopes_before_the_writer_takes_the_first_answer_both_in_order() -> None:
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 100, started=False) as served:
        offer_batch(subject, [feed.next(content("n1", 1))])
        assert feed.cursor is not None
        for answer in (b": first\n\n", b": second\n\n"):
            subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
            subject.finish_rescope(Replay([], truncated=False), feed.cursor, then=answer)
        served.start()
    assert served.raw.index(b": first") < served.raw.index(b": second")


async def test_a_replay_ending_with_events_for_others_still_moves_the_client_s_id() -> None:
    """The last id the client was sent is that of the last event written, not the cursor that
    passed over the events after it it may not see: so the id-only block after the replay says
    where it really stands."""
    subject = Session(Principal("u1", frozenset({"n1"})), StreamFilter(), expires_at=in_an_hour())
    feed = Feed()
    deliveries = [feed.next(content("n1", 0)), feed.next(content("n2", 1))]
    async with serving(subject, 100, replay_of(deliveries), feed.cursor) as served:
        pass
    assert _novels(served.raw) == [("n1", 0)]
    assert served.raw.endswith(f"id: {feed.cursor}\n\n".encode())


async def test_narrowing_in_the_middle_of_a_replay_stops_the_lost_novel_at_once() -> None:
    subject = Session(BOTH, StreamFilter(), expires_at=in_an_hour())
    feed = Feed()
    deliveries = [feed.next(content(f"n{n % 2 + 1}", n)) for n in range(200)]
    async with serving(subject, 0, replay_of(deliveries), feed.cursor) as served:
        before = await served.receive.receive()  # the hello
        before += await served.receive.receive()  # the first slice, for both novels
        subject.begin_rescope(ONLY_N2, StreamFilter(), in_an_hour())
        assert feed.cursor is not None
        subject.finish_rescope(None, feed.cursor)
    first = _novels(before)
    assert {novel for novel, _ in first} == {"n1", "n2"}
    rest = _novels(served.raw)
    assert rest[0][1] > first[-1][1]
    assert {novel for novel, _ in rest} == {"n2"}  # at most the slice in flight was of both
    assert [v for _, v in first + rest] == sorted(v for _, v in first + rest)


async def test_narrowing_behind_a_long_backlog_never_writes_a_shared_batch_queued_before_it() -> (
    None
):
    """More than one write's worth waits when the scope narrows: the first write is served one by
    one and puts the client back in step with the router's cursor, and a shared batch queued
    before the narrowing, admitted for the old scope, must still not be written whole."""
    subject = Session(BOTH, StreamFilter(), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 0) as served:
        await served.in_step(feed, content("n2", 0))
        offer_batch(subject, SharedBatch([feed.next(content("n2", 1))]))
        await trio.testing.wait_all_tasks_blocked()  # the writer waits to send n2/1
        backlog = [feed.next(content("n2", version)) for version in range(2, 2 + MAX_WRITE_BATCH)]
        offer_batch(subject, SharedBatch(backlog))
        offer_batch(subject, SharedBatch([feed.next(content("n1", 100))]))  # taken alone, next
        assert feed.cursor is not None
        subject.begin_rescope(ONLY_N2, StreamFilter(), in_an_hour())
        subject.finish_rescope(None, feed.cursor)
    written = _novels(served.raw)
    assert ("n1", 100) not in written, "a shared batch queued for the old scope was written"
    assert written == [("n2", v) for v in range(1, 2 + MAX_WRITE_BATCH)]


# -- narrowing in place (a revocation on a transport that can say so: Session.narrow) ------------


async def test_narrowing_in_place_says_so_first_then_writes_nothing_of_what_was_lost() -> None:
    subject = Session(BOTH, StreamFilter(), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 0) as served:
        await served.in_step(feed, content("n2", 1))
        offer_batch(subject, SharedBatch([feed.next(content("n1", 2))]))
        await trio.testing.wait_all_tasks_blocked()  # the writer waits to send n1/2: in flight
        offer_batch(
            subject, SharedBatch([feed.next(content("n1", 3)), feed.next(content("n2", 4))])
        )
        subject.narrow(ONLY_N2, b": narrowed\n\n")  # no checkpoint, no replay
        served.drain()
        await trio.testing.wait_all_tasks_blocked()
        offer_batch(subject, SharedBatch([feed.next(content("n2", 5))]))
        await trio.testing.wait_all_tasks_blocked()
        assert subject.close_reason is None  # the stream goes on
    raw = served.raw
    assert subject.principal == ONLY_N2
    assert _novels(raw) == [("n1", 2), ("n2", 4), ("n2", 5)]  # n1/2 was being written already
    assert raw.index(b'"content_version":2') < raw.index(b": narrowed")
    assert raw.index(b": narrowed") < raw.index(b'"content_version":4')


async def test_narrowing_while_a_change_s_replay_is_fetched_keeps_the_change_and_checks_it() -> (
    None
):
    """A filter change is under way (the hub fetching its replay) when a revocation narrows the
    session: the replay, when it comes, is written without the lost novel, then both answers."""
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n2"})), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 100) as served:
        offer_batch(subject, [feed.next(content("n2", 1))])
        await trio.testing.wait_all_tasks_blocked()
        missed = [feed.next(content("n1", 2)), feed.next(content("n2", 3))]
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())  # widened to n1 too
        subject.narrow(ONLY_N2, b": narrowed\n\n")  # while the replay is fetched
        await trio.testing.wait_all_tasks_blocked()
        assert feed.cursor is not None
        subject.finish_rescope(replay_of(missed), feed.cursor, then=b": filtered\n\n")
    raw = served.raw
    assert _novels(raw) == [("n2", 1), ("n2", 3)]
    assert raw.index(b'"content_version":3') < raw.index(b": narrowed") < raw.index(b": filtered")


async def test_narrowing_before_the_writer_takes_a_finished_change_keeps_its_replay() -> None:
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n2"})), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 0) as served:
        await served.receive.receive()  # the hello
        offer_batch(subject, [feed.next(content("n2", 1))])
        await trio.testing.wait_all_tasks_blocked()  # the writer waits to send n2/1
        missed = [feed.next(content("n1", 2)), feed.next(content("n2", 3))]
        assert feed.cursor is not None
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())
        subject.finish_rescope(replay_of(missed), feed.cursor, then=b": filtered\n\n")
        subject.narrow(ONLY_N2, b": narrowed\n\n")
    raw = served.raw
    assert _novels(raw) == [("n2", 1), ("n2", 3)]  # the replay kept, without n1
    assert raw.index(b'"content_version":3') < raw.index(b": filtered") < raw.index(b": narrowed")


async def test_a_rescope_begun_before_the_writer_took_the_last_holds_the_inbox_back() -> None:
    """A change finished, and the next began before the writer took the first: the writer
    holds the inbox back for the second's replay, and writes both answers. (It wrote the first
    change, then live events ahead of the second's replay, which it never wrote, nor its
    answer.)"""
    subject = Session(BOTH, StreamFilter(novel_ids=frozenset({"n1"})), expires_at=in_an_hour())
    feed = Feed()
    async with serving(subject, 100) as served:
        await trio.testing.wait_all_tasks_blocked()
        missed = feed.next(content("n2", 0))  # not for the n1 filter: never offered
        assert feed.cursor is not None
        replay = replay_of([missed])
        subject.begin_rescope(BOTH, StreamFilter(novel_ids=frozenset({"n2"})), in_an_hour())
        subject.finish_rescope(replay, feed.cursor, then=b": first\n\n")
        subject.begin_rescope(BOTH, StreamFilter(), in_an_hour())  # widened to n1 and n2
        position = feed.cursor  # the router's, as the second change began
        await trio.testing.wait_all_tasks_blocked()  # the second change's replay is fetched
        offer_batch(subject, [feed.next(content("n1", 1))])  # live, after the second began
        await trio.testing.wait_all_tasks_blocked()
        subject.finish_rescope(replay, position, then=b": second\n\n")
    raw = served.raw
    assert _novels(raw) == [("n2", 0), ("n1", 1)]
    assert raw.index(b": first") < raw.index(b": second") < raw.index(b'"content_version":1')
