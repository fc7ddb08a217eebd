"""The session actor under trio's mock clock: heartbeats, expiry, backpressure, goodbyes."""

from __future__ import annotations

import json
import time
import unittest.mock
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.heartbeats import run_heartbeat_clock
from actors.session import (
    MAX_WRITE_BATCH,
    TICKS_PER_HEARTBEAT,
    CloseReason,
    Offer,
    Session,
    SessionSettings,
    SharedBatch,
    Transport,
)
from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.events import TaskProgressEvent
from router.core.history import Entry, Replay
from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope
from router.core.wire import SSE
from tests.actor_helpers import (
    Feed,
    Reader,
    content,
    in_an_hour,
    offer,
    offer_batch,
    progress,
)

ME = Principal(user_id="u1", novels=frozenset({"n1"}))


HEARTBEAT_SECONDS = 15


def session(expires_at: float | None = None, **settings: object) -> Session:
    return Session(
        ME,
        StreamFilter(),
        expires_at=in_an_hour() if expires_at is None else expires_at,
        settings=SessionSettings(**settings),  # type: ignore[arg-type]
    )


async def heartbeats_until_finished(
    subject: Session, progress: Callable[[], Cursor | None] | None = None
) -> None:
    """The hub's heartbeat clock, for one session, for as long as it runs."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_heartbeat_clock, [subject], HEARTBEAT_SECONDS, progress)
        await subject.finished.wait()
        nursery.cancel_scope.cancel()


async def start(
    nursery: trio.Nursery,
    subject: Session,
    resume: Replay | None = None,
    position: Cursor | None = None,
    progress: Callable[[], Cursor | None] | None = None,
) -> Reader:
    send, receive = trio.open_memory_channel[bytes](1)
    reader = Reader(receive)
    nursery.start_soon(subject.run, send, resume, position)
    nursery.start_soon(reader.run)
    nursery.start_soon(heartbeats_until_finished, subject, progress)
    await trio.testing.wait_all_tasks_blocked()
    return reader


async def test_the_first_bytes_set_the_retry_and_arrive_at_once() -> None:
    subject = session(retry_ms=2500)
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        assert reader.raw.startswith(b"retry: 2500\n\n")
        subject.stop(CloseReason.CLIENT)


async def test_heartbeats_fill_silences_and_only_silences(autojump_clock: trio.abc.Clock) -> None:
    """A comment follows between three quarters of a heartbeat period and a whole one of silence
    (the clock ticks four times a period), and never while events flow."""
    subject = session()
    feed = Feed()
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        await trio.sleep(14)
        assert reader.comments == ["ok"]
        await trio.sleep(2)
        assert reader.comments == ["ok", ""]
        for _ in range(30):  # an event every 5 s for 150 s: never a heartbeat
            offer(subject, feed.next(content()))
            await trio.sleep(5)
        assert reader.comments == ["ok", ""]
        await trio.sleep(11.25 - 5 - 0.01)  # silence since the last event: just under 3/4 period
        assert reader.comments == ["ok", ""]
        await trio.sleep(15 - 11.25 + 0.02)  # a whole period: the heartbeat has come
        assert reader.comments == ["ok", "", ""]
        subject.stop(CloseReason.CLIENT)
    assert len(reader.events) == 30


async def test_an_expired_token_ends_the_stream_with_token_expired(
    autojump_clock: trio.abc.Clock,
) -> None:
    subject = session(expires_at=time.time() + 40)
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        await reader.closed.wait()
    assert subject.close_reason is CloseReason.TOKEN_EXPIRED
    assert reader.comments == ["ok", "", ""]  # at 15 s and 30 s, then expiry at 40 s
    (goodbye,) = reader.data()
    assert goodbye == {
        "code": "token-expired",
        "message": "the access token has expired",
        "retryable": False,
    }


async def test_an_already_expired_token_gets_the_goodbye_at_once() -> None:
    subject = session(expires_at=time.time() - 1)
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        await reader.closed.wait()
    assert [e.event for e in reader.events] == ["sse.error"]


async def test_events_stream_in_order_with_their_cursor_as_id() -> None:
    subject = session()
    feed = Feed()
    deliveries = [feed.next(content(version=n)) for n in range(5)]
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        for delivery in deliveries:
            assert offer(subject, delivery) is Offer.QUEUED
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    assert [e["content_version"] for e in reader.data()] == [0, 1, 2, 3, 4]
    assert [e.last_event_id for e in reader.events] == [f"memory@e1:0:{n}" for n in range(5)]


async def test_a_full_inbox_coalesces_progress_keeping_the_newest_and_the_order() -> None:
    subject = session(session_buffer=2)
    feed = Feed()
    stuck = [feed.next(content(version=1)), feed.next(content(version=2))]
    assert [offer(subject, d) for d in stuck] == [Offer.QUEUED, Offer.QUEUED]
    older, newer = feed.next(progress("t1", 10)), feed.next(progress("t1", 20))
    other_task = feed.next(progress("t2", 5))
    assert offer(subject, older) is Offer.COALESCED
    assert offer(subject, newer) is Offer.COALESCED  # replaces 10 %: only the newest matters
    assert offer(subject, other_task) is Offer.COALESCED
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        subject.stop(CloseReason.CLIENT)
    got = [(e.event, e.last_event_id) for e in reader.events]
    assert got == [
        ("content.updated", "memory@e1:0:0"),
        ("content.updated", "memory@e1:0:1"),
        ("task.progress-updated", "memory@e1:0:3"),
        ("task.progress-updated", "memory@e1:0:4"),
    ]
    assert [d.get("progress") for d in reader.data()] == [None, None, 20, 5]


async def test_coalesced_progress_keeps_its_place_before_later_events() -> None:
    subject = session(session_buffer=1)
    feed = Feed()
    offer(subject, feed.next(content(version=1)))
    offer(subject, feed.next(progress("t1", 50)))  # inbox full: held aside
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        offer(subject, feed.next(content(version=2)))
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    ids = [e.last_event_id for e in reader.events]
    assert ids == ["memory@e1:0:0", "memory@e1:0:1", "memory@e1:0:2"]


async def test_a_high_priority_event_that_cannot_be_queued_ends_the_stream_as_lagged() -> None:
    subject = session(session_buffer=1)
    feed = Feed()
    assert offer(subject, feed.next(content(version=1))) is Offer.QUEUED
    assert offer(subject, feed.next(content(version=2))) is Offer.DISCONNECTED
    assert offer(subject, feed.next(content(version=3))) is Offer.CLOSED
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        await reader.closed.wait()
    assert subject.close_reason is CloseReason.LAGGED
    assert [e.event for e in reader.events] == ["sse.error"]
    assert reader.data()[0]["code"] == "lagged"


async def test_too_many_coalesced_tasks_end_the_stream_as_lagged() -> None:
    subject = session(session_buffer=1)
    feed = Feed()
    offer(subject, feed.next(content()))
    assert offer(subject, feed.next(progress("t1", 1))) is Offer.COALESCED
    assert offer(subject, feed.next(progress("t2", 1))) is Offer.DISCONNECTED


async def test_a_slow_reader_does_not_block_the_offer() -> None:
    """The adapter's side never waits: a session nobody reads fills up and is cut off."""
    subject = session(session_buffer=4)
    feed = Feed()
    outcomes = [offer(subject, feed.next(content(version=n))) for n in range(10)]
    assert outcomes[:4] == [Offer.QUEUED] * 4
    assert outcomes[4] is Offer.DISCONNECTED


async def test_an_offer_to_a_full_inbox_coalesces_what_it_can() -> None:
    subject = session(session_buffer=2)
    feed = Feed()
    assert offer_batch(subject, [feed.next(content(version=n)) for n in (1, 2)]) == Counter(
        {Offer.QUEUED: 2}
    )
    batch = [
        feed.next(progress("t1", 10)),
        feed.next(progress("t1", 20)),
        feed.next(progress("t2", 5)),
    ]
    assert offer_batch(subject, batch) == Counter({Offer.COALESCED: 3})
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        subject.stop(CloseReason.CLIENT)
    assert [e.last_event_id for e in reader.events] == [
        "memory@e1:0:0",
        "memory@e1:0:1",
        "memory@e1:0:3",
        "memory@e1:0:4",
    ]


async def test_a_high_priority_event_offered_to_a_full_inbox_ends_the_stream() -> None:
    subject = session(session_buffer=2)
    feed = Feed()
    offer_batch(subject, [feed.next(content(version=n)) for n in range(2)])
    batch = [feed.next(content(version=n)) for n in range(2, 4)]
    assert offer_batch(subject, batch) == Counter({Offer.DISCONNECTED: 1, Offer.CLOSED: 1})
    assert subject.close_reason is CloseReason.LAGGED
    assert offer_batch(subject, [feed.next(content())]) == Counter({Offer.CLOSED: 1})


async def test_the_inbox_bound_counts_the_events_waiting_from_earlier_offers() -> None:
    """Not batches, and not the offer at hand: one offer (one step of the adapter, which may be
    a burst larger than the inbox) is taken whole while fewer than the capacity wait."""
    subject = session(session_buffer=4)
    feed = Feed()
    outcomes: Counter[Offer] = Counter()
    assert not subject.offer([feed.next(content()) for _ in range(3)], outcomes)
    assert subject.offer([feed.next(content()) for _ in range(10)], outcomes)  # full: let it write
    assert outcomes == {Offer.QUEUED: 13}
    assert offer_batch(subject, [feed.next(content())]) == {Offer.DISCONNECTED: 1}


class CountingWrites:
    """A :class:`StreamObserver` that keeps how many events each write carried."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def opened(self, transport: Transport) -> None:
        pass

    def sent(
        self,
        events: Mapping[str, int],
        oldest_age: float | None,
        queued: int,
        transport: Transport,
    ) -> None:
        self.writes.append(sum(events.values()))

    def closed(self, reason: str, seconds: float, transport: Transport) -> None:
        pass


async def test_batches_waiting_together_go_out_in_one_write() -> None:
    subject = session()
    subject.observer = observer = CountingWrites()
    feed = Feed()
    for _ in range(3):
        offer_batch(subject, [feed.next(content()), feed.next(progress("t1", 1))])
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        subject.stop(CloseReason.CLIENT)
    assert observer.writes == [6]
    assert len(reader.events) == 6


async def test_a_write_carries_at_most_max_write_batch_events_in_order() -> None:
    subject = session(session_buffer=1000)
    subject.observer = observer = CountingWrites()
    feed = Feed()
    offer_batch(subject, [feed.next(content(version=n)) for n in range(MAX_WRITE_BATCH * 2 + 1)])
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        subject.stop(CloseReason.CLIENT)
    assert observer.writes == [MAX_WRITE_BATCH, MAX_WRITE_BATCH, 1]
    assert [d["content_version"] for d in reader.data()] == list(range(MAX_WRITE_BATCH * 2 + 1))


async def test_a_shared_batch_is_written_as_is_in_step_and_re_encoded_for_a_client_ahead() -> None:
    """Sessions in step with the router's cursor write a shared batch's bytes as they are; a
    client that came from an instance ahead in partition 1 keeps getting ids of its own."""
    from router.core.cursor import parse_cursor

    feed = Feed()
    first = SharedBatch([feed.next(content(version=1))])
    second = SharedBatch([feed.next(content(version=2)), feed.next(content(version=3))])
    in_step, ahead = session(), session()
    ahead.cursor = parse_cursor("memory@e1:1:5")
    async with trio.open_nursery() as nursery:
        readers = [await start(nursery, subject) for subject in (in_step, ahead)]
        for batch in (first, second):  # each written before the next comes
            for subject in (in_step, ahead):
                offer_batch(subject, batch)
            await trio.testing.wait_all_tasks_blocked()
        in_step.stop(CloseReason.CLIENT)
        ahead.stop(CloseReason.CLIENT)
    in_step_reader, ahead_reader = readers
    assert [e.last_event_id for e in in_step_reader.events] == [
        f"memory@e1:0:{n}" for n in range(3)
    ]
    assert second.encoded(SSE) in in_step_reader.raw
    assert [e.last_event_id for e in ahead_reader.events] == [
        f"memory@e1:0:{n},1:5" for n in range(3)
    ]
    assert [d["content_version"] for d in ahead_reader.data()] == [1, 2, 3]


async def test_shutdown_says_goodbye_with_a_retry_hint() -> None:
    subject = session(shutdown_retry_ms=750)
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject)
        subject.stop(CloseReason.SERVER_SHUTDOWN)
        await reader.closed.wait()
    (goodbye,) = reader.events
    assert goodbye.retry == 750
    assert reader.data()[0]["code"] == "server-shutdown"


async def test_shutdown_retry_hints_are_spread_over_the_window() -> None:
    hints = set()
    for _ in range(20):
        subject = session(shutdown_retry_ms=1000, shutdown_retry_spread_ms=5000)
        async with trio.open_nursery() as nursery:
            reader = await start(nursery, subject)
            subject.stop(CloseReason.SERVER_SHUTDOWN)
            await reader.closed.wait()
        (goodbye,) = reader.events
        assert goodbye.retry is not None
        assert 1000 <= goodbye.retry <= 6000
        hints.add(goodbye.retry)
    assert len(hints) > 10  # not all in the same instant


async def test_a_goodbye_to_a_client_that_does_not_read_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    subject = session(goodbye_timeout_seconds=1.0)
    send, receive = trio.open_memory_channel[bytes](0)
    async with receive, trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send, None)
        await receive.receive()  # the retry hint; then nobody reads
        subject.stop(CloseReason.SERVER_SHUTDOWN)
    assert subject.close_reason is CloseReason.SERVER_SHUTDOWN


async def test_a_client_that_goes_away_ends_the_session_quietly() -> None:
    subject = session()
    send, receive = trio.open_memory_channel[bytes](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send, None)
        await receive.receive()
        await receive.aclose()
        offer(subject, Feed().next(content()))
    assert subject.close_reason is CloseReason.CLIENT


def replay_of(feed: Feed, count: int) -> Replay:
    entries = []
    for n in range(count):
        delivery = feed.next(content(version=n))
        entries.append(Entry(delivery.identity, delivery.message, 0.0))
    return Replay(entries, truncated=False)


async def test_a_session_cancelled_mid_replay_stops_there(autojump_clock: trio.abc.Clock) -> None:
    subject = session(session_buffer=1)
    feed = Feed()
    replay = replay_of(feed, 1000)
    send, receive = trio.open_memory_channel[bytes](0)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send, replay)
        got.append(await receive.receive())  # retry hint
        for _ in range(3):
            got.append(await receive.receive())
        offer(subject, feed.next(content(version=100)))
        offer(subject, feed.next(content(version=101)))  # live inbox overflows mid-replay
        async with receive:
            async for chunk in receive:
                got.append(chunk)
    assert subject.close_reason is CloseReason.LAGGED
    events = Reader(receive)
    events.raw = b"".join(got)
    names = [e.event for e in events.events]
    assert names[:3] == ["content.updated"] * 3
    assert names[-1] == "sse.error"
    assert len(names) <= 4 * MAX_WRITE_BATCH + 1  # what the session had written when stopped


async def test_replay_then_live_skips_what_the_client_had_and_merges_its_cursor() -> None:
    """A client from another instance is ahead in partition 1: the replay and live events it
    already had are skipped, and every id it gets keeps partition 1 where the client had it."""
    from router.core.cursor import parse_cursor

    feed = Feed()
    history = [feed.next(content(version=n), partition=str(n % 2)) for n in range(6)]
    # partition 0: offsets 0,1,2 (versions 0,2,4); partition 1: offsets 0,1,2 (versions 1,3,5)
    subject = session()
    subject.cursor = parse_cursor("memory@e1:0:0,1:2")
    replay = Replay([Entry(d.identity, d.message, 0.0) for d in history], False)
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, replay)
        offer(subject, feed.next(content(version=6), partition="1"))  # partition 1, offset 3
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    assert [d["content_version"] for d in reader.data()] == [2, 4, 6]
    assert [e.last_event_id for e in reader.events] == [
        "memory@e1:0:1,1:2",
        "memory@e1:0:2,1:2",
        "memory@e1:0:2,1:3",
    ]


async def test_a_truncated_replay_is_announced_first() -> None:
    feed = Feed()
    replay = replay_of(feed, 2)
    truncated = Replay(replay.entries, truncated=True)
    subject = session()
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, truncated)
        subject.stop(CloseReason.CLIENT)
    assert [e.event for e in reader.events] == ["sse.error", "content.updated", "content.updated"]
    assert reader.data()[0]["code"] == "history-truncated"


@pytest.mark.parametrize(
    ("scope_user", "visible"), [("u1", True), ("u2", False)], ids=["mine", "another's"]
)
async def test_replayed_events_pass_the_same_permission_check(
    scope_user: str, visible: bool
) -> None:
    feed = Feed()
    delivery = feed.next(progress("t1", 5, user_id=scope_user))
    replay = Replay([Entry(delivery.identity, delivery.message, 0.0)], False)
    subject = session()
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, replay)
        subject.stop(CloseReason.CLIENT)
    assert len(reader.events) == (1 if visible else 0)


async def test_a_replayed_event_moves_the_cursor_by_its_own_place_only() -> None:
    """A shared cache holds events another instance appended, with that instance's cursor as
    their id; it may be ahead in other partitions. Taking it over would claim events this client
    never got, and a resume from it would skip them."""
    from router.core.cursor import parse_cursor
    from tests.actor_helpers import identity

    other_instances_message = content(version=5).with_id("memory@e1:0:5,1:10")
    replay = Replay([Entry(identity(5, "0"), other_instances_message, 0.0)], False)
    subject = session()
    subject.cursor = parse_cursor("memory@e1:0:4,1:7")
    feed = Feed()
    feed.cursor = parse_cursor("memory@e1:0:5,1:7")
    feed.offsets = {"0": 5, "1": 7}
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, replay)
        offer(subject, feed.next(content(version=8), partition="1"))
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    assert [e.last_event_id for e in reader.events] == [
        "memory@e1:0:5,1:7",
        "memory@e1:0:5,1:8",
    ]


async def test_sampled_sends_are_logged_with_the_connection_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="actors.session")
    subject = session(log_sample_rate=1.0)
    subject.connection_id = "c-42"
    feed = Feed()
    async with trio.open_nursery() as nursery:
        await start(nursery, subject)
        offer(subject, feed.next(content(version=1)))
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    (record,) = [r for r in caplog.records if r.getMessage() == "events sent"]
    assert record.connection_id == "c-42"  # type: ignore[attr-defined]
    assert record.sse_event == "content.updated"  # type: ignore[attr-defined]


# The inbox's promise over any interleaving of offers and takes is tested on the inbox itself
# (tests/test_inbox.py), with no trio; the position property below runs it through the actor.


# -- the client's position: from the first bytes, after a replay, and while others' events pass --


async def test_a_stream_starts_with_its_position_as_an_id_only_block() -> None:
    """Before any event a browser already holds a Last-Event-ID: the start of the epoch here."""
    subject = session(retry_ms=2500)
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, position=Cursor.empty("memory", "e1"))
        subject.stop(CloseReason.CLIENT)
    assert reader.raw == b"retry: 2500\n\n: ok\n\nid: memory@e1:\n\n"
    assert reader.events == []
    assert reader.last_event_id == "memory@e1:"


async def test_a_resume_starts_with_the_clients_own_cursor() -> None:
    feed = Feed()
    subject = session()
    subject.cursor = parse_cursor("memory@e1:0:4,1:7")
    async with trio.open_nursery() as nursery:
        reader = await start(
            nursery, subject, Replay([], False), position=parse_cursor("memory@e1:0:2")
        )
        subject.stop(CloseReason.CLIENT)
    assert reader.raw.startswith(b"retry: 2000\n\n: ok\n\nid: memory@e1:0:4,1:7\n\n")
    assert reader.last_event_id == "memory@e1:0:4,1:7"  # the router was behind: nothing moved
    del feed


async def test_a_replay_that_writes_nothing_still_moves_the_clients_cursor() -> None:
    """Everything the client missed was another user's: it has been served up to the router's
    position all the same, and is told so; a resume from its old cursor would go on replaying
    them, and turn truncated once the window moves on."""
    feed = Feed()
    subject = session()
    subject.cursor = feed.next(content(version=0)).cursor
    others = [feed.next(progress("t9", n, user_id="u2")) for n in range(3)]
    replay = Replay([Entry(d.identity, d.message, 0.0) for d in others], False)
    assert feed.cursor is not None
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, replay, position=feed.cursor)
        offer(subject, feed.next(content(version=4)))
        await trio.testing.wait_all_tasks_blocked()
        ids_before_live = parse_stream_ids(reader.raw)
        subject.stop(CloseReason.CLIENT)
    assert ids_before_live[-2:] == ["memory@e1:0:3", "memory@e1:0:4"]
    assert [d["content_version"] for d in reader.data()] == [4]


def parse_stream_ids(raw: bytes) -> list[str]:
    """Every id the stream carried, in order, whether on an event or alone."""
    return [
        line.removeprefix(b"id: ").decode()
        for block in raw.split(b"\n\n")
        for line in block.split(b"\n")
        if line.startswith(b"id: ")
    ]


async def test_a_quiet_sessions_heartbeat_carries_the_routers_progress(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Others' events pass and none is for this client: its heartbeat moves its cursor up to
    the router's, in place of the comment; with nothing new, the heartbeat is a comment."""
    feed = Feed()
    subject = session()
    async with trio.open_nursery() as nursery:
        reader = await start(
            nursery,
            subject,
            position=Cursor.empty("memory", "e1"),
            progress=lambda: feed.cursor,
        )
        for n in range(10):
            feed.next(progress("t9", n, user_id="u2"), partition=str(n % 3))  # not offered
        await trio.sleep(HEARTBEAT_SECONDS + 0.01)
        assert reader.last_event_id == str(feed.cursor) == "memory@e1:0:3,1:2,2:2"
        assert reader.comments == ["ok"]
        await trio.sleep(HEARTBEAT_SECONDS)
        assert reader.comments == ["ok", ""]
        subject.stop(CloseReason.CLIENT)
    assert reader.events == []


async def test_a_heartbeat_never_moves_the_cursor_past_an_event_still_waiting() -> None:
    """The heartbeat is due while events wait behind a write of events the client already had
    (it came from an instance ahead in partition 1), one of them coalesced aside. The router's
    cursor covers them all, so the heartbeat must not carry it: a client cut just after would
    resume past events it was never sent."""
    feed = Feed()
    subject = session(session_buffer=3)
    subject.cursor = CLIENT_AHEAD
    with unittest.mock.patch("actors.session.MAX_WRITE_BATCH", 2):
        async with trio.open_nursery() as nursery:
            reader = await start(nursery, subject, Replay([], False))
            for _ in range(TICKS_PER_HEARTBEAT):
                subject.tick(feed.cursor)  # nothing routed yet; the heartbeat is queued
            had = [feed.next(content(version=n), partition="1") for n in range(2)]
            waiting = [feed.next(progress("t1", 10)), feed.next(progress("t1", 20))]
            outcomes = offer_batch(subject, [*had, waiting[0]])
            outcomes += offer_batch(subject, [waiting[1]])
            assert outcomes == {Offer.QUEUED: 3, Offer.COALESCED: 1}
            subject.tick(feed.cursor)  # the router's cursor covers both progress events
            await trio.testing.wait_all_tasks_blocked()
            subject.stop(CloseReason.CLIENT)
    assert [d["progress"] for d in reader.data()] == [10, 20]
    ids = parse_stream_ids(reader.raw)
    events_after = {0: waiting, 1: waiting[1:], 2: []}  # what was written after each id
    for at, text in enumerate(ids):
        assert not any(parse_cursor(text).covers(d.identity) for d in events_after[at]), text


position_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("offer"), st.lists(st.sampled_from(["content", "t1", "had"]), min_size=1)
        ),
        st.tuples(st.just("others"), st.integers(1, 3)),
        st.tuples(st.just("tick"), st.integers(1, 4)),
        st.tuples(st.just("read"), st.integers(0, 3)),
    ),
    max_size=30,
)


CLIENT_AHEAD = parse_cursor("memory@e1:1:1000")
"""A client that came from an instance ahead in partition 1: events there ("had") are skipped."""


@settings(max_examples=300, deadline=None)
@given(steps=position_steps, capacity=st.integers(1, 6), write_batch=st.integers(1, 4))
def test_no_id_the_client_is_sent_covers_an_event_sent_after_it(
    steps: list[tuple[str, Any]], capacity: int, write_batch: int
) -> None:
    """Over any interleaving of the client's events, events it already had, others' events,
    heartbeat ticks and reads: a client cut at any point resumes from its last id and misses
    nothing written after it, so no id (on an event or alone) names a position past an event
    still to come. And the client's last id follows the router's cursor. Writes are cut small,
    so that skipped events fill whole writes while others wait behind them."""
    with unittest.mock.patch("actors.session.MAX_WRITE_BATCH", write_batch):
        raw, identities, wanted, subject, router = trio.run(offer_tick_and_read, steps, capacity)
    written: list[EventIdentity | None] = []  # in stream order: an event's identity, or an id
    ids: list[tuple[int, str]] = []
    for block in raw.split(b"\n\n"):
        lines = block.split(b"\n")
        for line in lines:
            if line.startswith(b"id: "):
                ids.append((len(written), line.removeprefix(b"id: ").decode()))
        if any(line.startswith(b"data: ") for line in lines):
            data = json.loads(lines[-1].removeprefix(b"data: "))
            if "code" in data:  # the goodbye
                written.append(None)
            else:
                version = data.get("content_version", data.get("message"))
                written.append(identities[int(version)])
    for at, text in ids:
        cursor = parse_cursor(text)
        for later in written[at + 1 :]:
            assert later is None or not cursor.covers(later), (text, later)
    if subject.close_reason is CloseReason.CLIENT:  # not cut as lagged: nothing it needs is lost
        assert set(wanted) <= set(written)
    if subject.close_reason is CloseReason.CLIENT and router is not None:
        assert parse_cursor(ids[-1][1]) == CLIENT_AHEAD.merge(router)  # the heartbeat caught up


async def offer_tick_and_read(
    steps: list[tuple[str, Any]], capacity: int
) -> tuple[bytes, dict[int, EventIdentity], list[EventIdentity], Session, Cursor | None]:
    subject = session(session_buffer=capacity)
    feed = Feed()
    identities: dict[int, EventIdentity] = {}  # by content version: what each event is
    wanted: list[EventIdentity] = []  # the content updates the client did not have
    send, receive = trio.open_memory_channel[bytes](0)
    chunks: list[bytes] = []

    async def read(most: int) -> None:
        for _ in range(most):
            await trio.testing.wait_all_tasks_blocked()
            try:
                chunks.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return
        await trio.testing.wait_all_tasks_blocked()  # the session goes on from its last write

    subject.cursor = CLIENT_AHEAD
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send, Replay([], False), Cursor.empty("memory", "e1"))
        await read(1)
        for step, argument in steps:
            if step == "read":
                await read(argument)
            elif step == "tick":
                for _ in range(argument):
                    subject.tick(feed.cursor)
            elif step == "others":
                for _ in range(argument):
                    feed.next(content(novel_id="n2"), partition="2")
            else:
                batch = []
                for kind in argument:
                    version = len(identities)
                    if kind == "had":
                        delivery = feed.next(content(version=version), partition="1")
                        identities[version] = delivery.identity
                        batch.append(delivery)
                        continue
                    message = (
                        content(version=version)
                        if kind == "content"
                        else TaskProgressEvent(
                            task_id="t1", progress=50, message=str(version), scope=Scope("u1")
                        )
                    )
                    delivery = feed.next(message)
                    identities[version] = delivery.identity
                    if kind == "content":
                        wanted.append(delivery.identity)
                    batch.append(delivery)
                subject.offer(batch, Counter())
        await read(10_000)  # the client catches up with everything
        for _ in range(4):
            subject.tick(feed.cursor)  # and a heartbeat comes
        await read(10_000)
        subject.stop(CloseReason.CLIENT)
    return b"".join(chunks), identities, wanted, subject, feed.cursor


# -- a long replay lets the rest of the router run -----------------------------------------------


class StepWrites(trio.abc.Instrument):
    """Counts the events written in each step of a task, and keeps the most."""

    def __init__(self) -> None:
        self.in_step = 0
        self.most_in_a_step = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.in_step = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most_in_a_step = max(self.most_in_a_step, self.in_step)


class InstantOutput:
    """A client whose socket takes every byte at once: ``send`` never checkpoints, as the HTTP
    body's direct writer when the socket has room."""

    def __init__(self, steps: StepWrites) -> None:
        self.steps = steps
        self.raw = b""
        self.events = 0

    async def send(self, value: bytes, /) -> None:
        self.raw += value
        self.events += value.count(b"event: ")
        self.steps.in_step += value.count(b"event: ")

    def close(self) -> None:
        pass


async def test_a_long_replay_checkpoints_so_other_tasks_run_meanwhile() -> None:
    """10,000 events replayed into a socket that never makes the session wait: no step of the
    session writes more than one batch, and a task scheduled beside it runs all along."""
    feed = Feed()
    replay = replay_of(feed, 10_000)
    steps = StepWrites()
    output = InstantOutput(steps)
    subject = session()
    turns_during_replay: list[int] = []

    async def beside() -> None:
        while output.events < 10_000:
            turns_during_replay.append(output.events)
            await trio.lowlevel.checkpoint()

    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subject.run, output, replay)
            nursery.start_soon(beside)
            await trio.testing.wait_all_tasks_blocked()
            subject.stop(CloseReason.CLIENT)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert output.events == 10_000
    assert steps.most_in_a_step <= MAX_WRITE_BATCH
    assert len({n for n in turns_during_replay if 0 < n < 10_000}) > 100


# -- the router's own errors are counted like any event sent -------------------------------------


class CountingEvents(CountingWrites):
    def __init__(self) -> None:
        super().__init__()
        self.events: Counter[str] = Counter()

    def sent(
        self,
        events: Mapping[str, int],
        oldest_age: float | None,
        queued: int,
        transport: Transport,
    ) -> None:
        super().sent(events, oldest_age, queued, transport)
        self.events.update(events)


@pytest.mark.parametrize(
    "reason", [CloseReason.LAGGED, CloseReason.TOKEN_EXPIRED, CloseReason.SERVER_SHUTDOWN]
)
async def test_the_routers_own_errors_are_counted_as_sent(reason: CloseReason) -> None:
    feed = Feed()
    subject = session()
    subject.observer = observer = CountingEvents()
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, Replay(replay_of(feed, 2).entries, truncated=True))
        subject.stop(reason)
    assert [e.event for e in reader.events] == ["sse.error", *["content.updated"] * 2, "sse.error"]
    assert observer.events == {"sse.error": 2, "content.updated": 2}


async def test_a_goodbye_that_never_left_is_not_counted(autojump_clock: trio.abc.Clock) -> None:
    subject = session(goodbye_timeout_seconds=0.5)
    subject.observer = observer = CountingEvents()
    send, receive = trio.open_memory_channel[bytes](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subject.run, send, None)
        await receive.receive()  # the first bytes, then the client reads no more
        subject.stop(CloseReason.SERVER_SHUTDOWN)
    assert observer.events == {}


# -- a history replaced under a stream ---------------------------------------------------------


async def test_a_stream_whose_history_was_replaced_is_told_once_and_it_is_counted() -> None:
    feed = Feed()
    subject = session()
    subject.observer = observer = CountingEvents()
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, position=parse_cursor("memory@e0:0:41"))
        offer_batch(subject, [feed.next(content(version=1)), feed.next(content(version=2))])
        offer_batch(subject, [feed.next(content(version=3))])
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    assert [e.event for e in reader.events] == ["sse.error", *["content.updated"] * 3]
    assert json.loads(reader.events[0].data)["code"] == "history-truncated"
    assert observer.events == {"sse.error": 1, "content.updated": 3}


async def test_a_stream_opened_before_the_bus_answered_is_not_told_of_a_lost_history() -> None:
    """Its first id names no epoch: it missed nothing, every event since reached it live."""
    feed = Feed()
    subject = session()
    async with trio.open_nursery() as nursery:
        reader = await start(nursery, subject, position=Cursor.empty("memory", None))
        offer_batch(subject, [feed.next(content(version=1))])
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    assert [e.event for e in reader.events] == ["content.updated"]
    assert reader.last_event_id == str(feed.cursor)


async def test_a_quiet_stream_whose_history_was_replaced_is_told_before_its_heartbeat_moves_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Others' events of a new history pass while this client sees none: its heartbeat may
    carry it into the new history only after the same history-truncated a stream with events
    of its own is sent, else it never hears that events may be missing."""
    feed = Feed()
    subject = session()
    async with trio.open_nursery() as nursery:
        reader = await start(
            nursery,
            subject,
            position=parse_cursor("memory@e0:0:41"),
            progress=lambda: feed.cursor,
        )
        for n in range(3):
            feed.next(progress("t9", n, user_id="u2"))  # of epoch e1, not for this client
        await trio.sleep(HEARTBEAT_SECONDS + 0.01)
        offer_batch(subject, [feed.next(content(version=1))])
        await trio.testing.wait_all_tasks_blocked()
        subject.stop(CloseReason.CLIENT)
    assert [e.event for e in reader.events] == ["sse.error", "content.updated"]
    assert json.loads(reader.events[0].data)["code"] == "history-truncated"
    assert reader.last_event_id == str(feed.cursor)
