"""The inbox on its own, the way h11 tests its connection: plain calls in, answers out.

No trio, no event loop, no patched constants and no private fields: every test drives
:class:`router.core.inbox.Inbox` through the calls the adapter and the session actor make, and
reads only what it answers. The properties run over any interleaving of offers, takes, heartbeat
ticks with the router's progress, and a stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.events import ContentUpdateEvent
from router.core.inbox import (
    DEFAULT_INBOX_MAX_BYTES,
    MAX_WRITE_BATCH,
    TICKS_PER_HEARTBEAT,
    Delivery,
    Inbox,
    Offer,
    SharedBatch,
)
from router.core.scope import Scope
from router.core.sse import SSEMessage
from tests.actor_helpers import Feed, content, progress

CLIENT_AHEAD = parse_cursor("memory@e1:1:1000")
"""A client that came from an instance ahead in partition 1: events there ("had") it has."""


def offered(inbox: Inbox, deliveries: Sequence[Delivery]) -> Counter[Offer]:
    outcomes: Counter[Offer] = Counter()
    inbox.offer(deliveries, outcomes)
    return outcomes


def big(version: int, size: int) -> SSEMessage:
    """A content update of about ``size`` bytes on the wire (its summary)."""
    return ContentUpdateEvent(
        novel_id="n1", content_version=version, summary="x" * size, scope=Scope(novel_id="n1")
    )


def size_of(deliveries: Sequence[Delivery]) -> int:
    return sum(len(d.message.to_sse_format()) for d in deliveries)


def drain(inbox: Inbox, most: int = MAX_WRITE_BATCH) -> list[Delivery]:
    taken: list[Delivery] = []
    while batch := inbox.take(most):
        assert len(batch) <= most
        taken += batch
    return taken


# -- the adapter's side: the bound, coalescing, the lag verdict ---------------------------------


def test_an_offer_is_taken_whole_while_fewer_than_the_capacity_wait() -> None:
    inbox = Inbox(capacity=4)
    feed = Feed()
    outcomes: Counter[Offer] = Counter()
    assert not inbox.offer([feed.next(content()) for _ in range(3)], outcomes)
    assert inbox.offer([feed.next(content()) for _ in range(10)], outcomes)  # at the bound
    assert outcomes == {Offer.QUEUED: 13}
    assert inbox.waiting == 13
    assert offered(inbox, [feed.next(content())]) == {Offer.DISCONNECTED: 1}
    assert inbox.lagged
    assert inbox.closed


def test_past_the_bound_progress_is_coalesced_by_task_and_keeps_its_place() -> None:
    inbox = Inbox(capacity=2)
    feed = Feed()
    first = [feed.next(content(version=n)) for n in range(2)]
    older, newer, other = (
        feed.next(progress(t, p)) for t, p in [("t1", 10), ("t1", 20), ("t2", 5)]
    )
    later = feed.next(content(version=3))
    assert offered(inbox, first) == {Offer.QUEUED: 2}
    assert offered(inbox, [older, newer, other]) == {Offer.COALESCED: 3}
    assert inbox.set_aside == 2
    assert inbox.waiting == 2  # what is held aside is not queued
    assert [d.seq for d in inbox.take(most=1)] == [first[0].seq]
    assert offered(inbox, [later]) == {Offer.QUEUED: 1}
    assert drain(inbox) == [first[1], newer, other, later]
    assert inbox.set_aside == inbox.waiting == 0
    assert not inbox.ready


def test_a_high_priority_event_with_no_room_is_the_lag_verdict_and_the_rest_is_closed() -> None:
    inbox = Inbox(capacity=2)
    feed = Feed()
    offered(inbox, [feed.next(content(version=n)) for n in range(2)])
    late = [feed.next(content(version=n)) for n in range(2, 5)]
    assert offered(inbox, late) == {Offer.DISCONNECTED: 1, Offer.CLOSED: 2}
    assert inbox.lagged
    assert offered(inbox, [feed.next(content())]) == {Offer.CLOSED: 1}


def test_an_offer_all_coalesced_aside_does_not_fill_the_inbox_however_much_waits() -> None:
    """A client that reads nothing has its progress coalesced aside, step after step: the
    adapter pauses for an inbox an offer filled, and must not pause for this one every step."""
    inbox = Inbox(capacity=2)
    feed = Feed()
    outcomes: Counter[Offer] = Counter()
    assert inbox.offer([feed.next(progress("t1", n)) for n in range(2)], outcomes)  # filled
    for n in range(2, 6):
        assert not inbox.offer([feed.next(progress("t1", n))], outcomes)  # coalesced aside
    assert outcomes == {Offer.QUEUED: 2, Offer.COALESCED: 4}
    assert inbox.waiting == 2
    assert not inbox.closed


def test_coalescing_eagerly_starts_at_a_quarter_of_the_capacity_for_low_priority_only() -> None:
    """The overload ladder's first rung: progress is coalesced once a quarter of the inbox
    waits, while content updates are still queued up to the capacity, in their place."""
    inbox = Inbox(capacity=8)
    feed = Feed()
    inbox.coalesce_eagerly(True)
    first = [feed.next(content(version=n)) for n in range(2)]  # a quarter of 8
    assert offered(inbox, first) == {Offer.QUEUED: 2}
    burst = [feed.next(progress("t1", n)) for n in range(5)]
    update = feed.next(content(version=9))
    last = feed.next(progress("t1", 99))
    assert offered(inbox, [*burst, update, last]) == {Offer.COALESCED: 6, Offer.QUEUED: 1}
    assert not inbox.lagged
    assert drain(inbox) == [*first, update, last]
    inbox.coalesce_eagerly(False)
    offered(inbox, first[:1])
    assert offered(inbox, burst) == {Offer.QUEUED: 5}  # back to the whole capacity


def test_a_closed_inbox_counts_offers_as_closed_and_still_gives_what_waits() -> None:
    inbox = Inbox(capacity=4)
    feed = Feed()
    waiting = [feed.next(content())]
    offered(inbox, waiting)
    inbox.close()
    assert offered(inbox, [feed.next(content())]) == {Offer.CLOSED: 1}
    assert not inbox.lagged
    assert drain(inbox) == waiting


def test_an_inbox_holds_at_least_one_event() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Inbox(capacity=0)
    with pytest.raises(ValueError, match="at least one byte"):
        Inbox(capacity=1, max_bytes=0)


def test_past_the_byte_bound_an_offer_is_the_same_verdict_as_past_the_count() -> None:
    """Big events fill the inbox by their bytes long before their count: the offer that reached
    the bound is taken whole and says so; after it, progress is coalesced and a content update
    is the lag verdict, as past the count."""
    inbox = Inbox(capacity=100, max_bytes=10_000)
    feed = Feed()
    outcomes: Counter[Offer] = Counter()
    assert not inbox.offer([feed.next(big(n, 4000)) for n in range(2)], outcomes)
    assert inbox.offer([feed.next(big(n, 4000)) for n in range(2, 5)], outcomes)  # 5 x 4 kB
    assert outcomes == {Offer.QUEUED: 5}
    assert inbox.waiting == 5
    assert inbox.waiting_bytes == 5 * len(feed.next(big(9, 4000)).message.to_sse_format())
    assert offered(inbox, [feed.next(progress("t1", 1))]) == {Offer.COALESCED: 1}
    assert offered(inbox, [feed.next(content())]) == {Offer.DISCONNECTED: 1}
    assert inbox.lagged


def test_the_bytes_of_a_shared_batch_are_summed_once_and_given_back_as_it_is_taken() -> None:
    feed = Feed()
    batch = SharedBatch([feed.next(big(n, 1000)) for n in range(3)])
    inboxes = [Inbox(capacity=8) for _ in range(3)]
    for inbox in inboxes:
        offered(inbox, batch)
        assert inbox.waiting_bytes == batch.wire_size == size_of(batch)
    assert inboxes[0].take() is batch
    assert inboxes[1].take(most=2) == batch[:2]
    assert [inbox.waiting_bytes for inbox in inboxes] == [0, size_of(batch[2:]), size_of(batch)]


def test_the_batch_in_the_writers_hand_counts_in_the_byte_bound_until_it_is_written() -> None:
    """A writer that took a batch and is still writing it (its client reads slowly) holds those
    bytes: an offer meanwhile finds them, and past the bound the same verdict as if they still
    waited; once it says it wrote, they are the socket's, and the inbox has room again."""
    inbox = Inbox(capacity=100, max_bytes=10_000)
    feed = Feed()
    offered(inbox, [feed.next(big(n, 4000)) for n in range(3)])
    taken = inbox.take()
    assert (inbox.waiting_bytes, inbox.in_hand_bytes) == (0, size_of(taken))
    assert inbox.held_bytes == size_of(taken) >= 10_000
    assert offered(inbox, [feed.next(progress("t1", 1))]) == {Offer.COALESCED: 1}
    inbox.written()
    assert inbox.held_bytes == inbox.in_hand_bytes == 0
    assert offered(inbox, [feed.next(content())]) == {Offer.QUEUED: 1}
    assert not inbox.lagged


def test_a_take_of_events_coalesced_aside_has_their_bytes_in_hand() -> None:
    inbox = Inbox(capacity=1, max_bytes=None)
    feed = Feed()
    offered(inbox, [feed.next(content())])
    offered(inbox, [feed.next(progress("t1", n)) for n in range(3)])  # past the count: aside
    taken = inbox.take()
    assert len(taken) == 2
    assert inbox.in_hand_bytes == size_of(taken)
    assert inbox.take() == ()
    assert inbox.in_hand_bytes == 0  # nothing more to take: the writer is done with the last


def test_the_default_byte_bound_is_a_mebibyte_and_none_is_no_byte_bound() -> None:
    assert Inbox(capacity=1).byte_bound == DEFAULT_INBOX_MAX_BYTES == 1024 * 1024
    inbox = Inbox(capacity=1000, max_bytes=None)
    feed = Feed()
    for n in range(300):  # 3 MB waiting: only the count bounds it
        offered(inbox, [feed.next(big(n, 10_000))])
    assert not inbox.lagged


# -- the writer's side: what to take, and with which ids ----------------------------------------


def test_a_shared_batch_offered_alone_comes_back_as_it_was_and_is_served_as_is_in_step() -> None:
    feed = Feed()
    inbox = Inbox(capacity=8)
    inbox.serve(feed.next(content(version=0)))  # the first event puts the client in step
    batch = SharedBatch([feed.next(content(version=n)) for n in (1, 2)])
    offered(inbox, batch)
    taken = inbox.take()
    assert taken is batch
    assert inbox.serve_shared(taken)
    assert inbox.cursor == batch[-1].cursor


def test_batches_waiting_together_are_taken_together_up_to_the_most_asked() -> None:
    feed = Feed()
    inbox = Inbox(capacity=100)
    for _ in range(3):
        offered(inbox, [feed.next(content()), feed.next(content())])
    assert [len(inbox.take(most=5)), len(inbox.take(most=5))] == [5, 1]  # joined, then cut
    offered(inbox, [feed.next(content()) for _ in range(7)])
    assert [len(inbox.take(most=3)) for _ in range(3)] == [3, 3, 1]


def test_a_client_ahead_skips_what_it_had_and_keeps_its_own_ids_until_in_step() -> None:
    feed = Feed()
    inbox = Inbox(capacity=8, cursor=CLIENT_AHEAD)
    had = feed.next(content(version=0), partition="1")
    new = feed.next(content(version=1))
    assert not inbox.serve_shared(SharedBatch([had]))  # not in step: re-encoded
    assert inbox.serve(had) is None
    message = inbox.serve(new)
    assert message is not None
    assert message.id == str(CLIENT_AHEAD.merge(new.cursor)) == "memory@e1:0:0,1:1000"


def test_a_replay_moves_the_cursor_by_each_events_own_place_then_up_to_the_router() -> None:
    feed = Feed()
    events = [feed.next(content(version=n), partition=str(n % 2)) for n in range(4)]
    inbox = Inbox(capacity=8, cursor=parse_cursor("memory@e1:1:0"))
    served = [inbox.replayed(d.identity) for d in events]
    assert [None if s is None else str(s) for s in served] == [
        "memory@e1:0:0,1:0",
        None,  # the client had it
        "memory@e1:0:1,1:0",
        "memory@e1:0:1,1:1",
    ]
    assert str(inbox.caught_up(parse_cursor("memory@e1:0:5"))) == "memory@e1:0:5,1:1"


def test_a_history_from_another_epoch_is_said_once_per_batch_and_none_before_an_epoch() -> None:
    feed = Feed()
    batch = [feed.next(content())]
    assert Inbox(capacity=1, cursor=parse_cursor("memory@e0:0:3")).history_replaced(batch)
    assert not Inbox(capacity=1, cursor=Cursor.empty("memory", None)).history_replaced(batch)
    assert not Inbox(capacity=1).history_replaced(batch)


def test_a_heartbeat_is_due_after_a_periods_ticks_without_a_write_and_only_then() -> None:
    inbox = Inbox(capacity=4)
    due = [inbox.tick() for _ in range(TICKS_PER_HEARTBEAT * 2)]
    assert due == [False] * (TICKS_PER_HEARTBEAT - 1) + [True] + [False] * TICKS_PER_HEARTBEAT
    assert inbox.ready
    inbox.written()  # a write fills the silence: no heartbeat is owed any more
    assert not inbox.heartbeat_due
    assert not inbox.ready


def test_a_heartbeat_carries_the_routers_progress_only_when_nothing_waits() -> None:
    feed = Feed()
    inbox = Inbox(capacity=4, cursor=Cursor.empty("memory", "e1"))
    feed.next(content(novel_id="n2"))  # another client's event passes
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)
    assert inbox.heartbeat().moved_to == feed.cursor == inbox.cursor
    waiting = feed.next(content())
    offered(inbox, [waiting])
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)  # covers the event still waiting: not carried
    assert inbox.heartbeat().moved_to is None  # a comment


def test_a_quiet_client_moved_into_a_new_history_by_a_heartbeat_is_told_first() -> None:
    """Others' events of a new history pass while this client sees none: the heartbeat that
    carries its cursor there says so, as a batch of its own events of that history would."""
    inbox = Inbox(capacity=4, cursor=parse_cursor("memory@e0:0:41"))
    feed = Feed()  # of epoch e1
    feed.next(progress("t9", 1, user_id="u2"))  # not for this client
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)
    heartbeat = inbox.heartbeat()
    assert heartbeat.history_replaced
    assert heartbeat.moved_to == feed.cursor == inbox.cursor
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)
    assert not inbox.heartbeat().history_replaced  # said once: the client is in it now


def test_progress_of_the_history_before_never_moves_the_client_back_into_it() -> None:
    """The router's progress kept at a tick of the old history is dropped once a batch of a
    new history is written: a later heartbeat must not carry the client back."""
    before = parse_cursor("memory@e0:0:41")
    inbox = Inbox(capacity=4, cursor=before)
    inbox.tick(before)  # nothing waits: the router's progress, in the old history, is kept
    feed = Feed()  # of epoch e1
    batch = [feed.next(content())]
    offered(inbox, batch)
    assert inbox.take() == batch
    assert inbox.history_replaced(batch)
    assert inbox.serve(batch[0]) is not None
    offered(inbox, [feed.next(content(version=2))])  # waits through the ticks: none kept
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)
    heartbeat = inbox.heartbeat()
    assert heartbeat.moved_to is None
    assert not heartbeat.history_replaced
    assert inbox.cursor == batch[0].cursor


# -- the promises, over any interleaving ---------------------------------------------------------

inbox_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("offer"),
            st.tuples(
                st.lists(
                    st.sampled_from(["content", "big", "t1", "t2", "t3"]), min_size=1, max_size=6
                ),
                st.booleans(),  # offered as a shared batch
            ),
        ),
        st.tuples(st.just("take"), st.integers(1, 4)),
        st.tuples(st.just("written"), st.none()),
        st.tuples(st.just("tick"), st.integers(1, 4)),
        st.tuples(st.just("eager"), st.booleans()),
        st.tuples(st.just("stop"), st.none()),
    ),
    max_size=30,
)


def message_of(kind: str, n: int) -> SSEMessage:
    if kind == "content":
        return content(version=n)
    if kind == "big":
        return big(n, 300)
    return progress(kind, n)


@settings(max_examples=400, deadline=None)
@given(
    steps=inbox_steps,
    capacity=st.integers(1, 6),
    max_bytes=st.none() | st.integers(1, 1500),
)
def test_what_is_offered_is_taken_once_in_order_coalesced_or_the_inbox_lags(
    steps: list[tuple[str, Any]], capacity: int, max_bytes: int | None
) -> None:
    """Every event offered is counted once; an offer is queued only while fewer than the
    capacity wait, and fewer bytes than the byte bound are held (waiting, and in the writer's
    hand until it says it wrote), and at most the capacity is held aside; the bytes held never
    pass the bound by more than one offer; nothing is taken twice or out
    of the adapter's order, nor more than asked at once; a content update is taken unless the
    inbox lagged or was stopped first; a progress event is taken unless a newer one of its task
    is. All of it whether or not the inbox coalesces eagerly (the overload ladder's first rung),
    with or without a byte bound."""
    inbox = Inbox(capacity, max_bytes=max_bytes)
    feed = Feed()
    offers: list[Delivery] = []
    outcomes: Counter[Offer] = Counter()
    taken: list[Delivery] = []
    for step, argument in steps:
        if step == "offer":
            kinds, shared = argument
            batch = [
                feed.next(message_of(kind, n)) for n, kind in enumerate(kinds, start=len(offers))
            ]
            offers += batch
            before, waiting, was_closed = sum(outcomes.values()), inbox.waiting, inbox.closed
            waiting_bytes, held_bytes = inbox.waiting_bytes, inbox.held_bytes
            queued_before = outcomes[Offer.QUEUED]
            filled = inbox.offer(SharedBatch(batch) if shared else batch, outcomes)
            assert sum(outcomes.values()) == before + len(batch)
            if inbox.waiting != waiting:  # queued: fewer than both bounds were held before
                assert waiting < capacity
                assert held_bytes < inbox.byte_bound
                assert inbox.waiting <= waiting + len(batch)
                assert inbox.waiting_bytes <= waiting_bytes + size_of(batch)
                assert inbox.held_bytes < inbox.byte_bound + size_of(batch)
            else:
                assert inbox.waiting_bytes == waiting_bytes
            assert inbox.set_aside <= capacity
            assert filled is (
                not inbox.closed
                and (inbox.waiting >= capacity or inbox.held_bytes >= inbox.byte_bound)
                and outcomes[Offer.QUEUED] > queued_before  # all coalesced aside: not filled
            )
            if was_closed:
                assert inbox.waiting == waiting
        elif step == "take":
            waiting_bytes = inbox.waiting_bytes
            batch = inbox.take(argument)
            assert len(batch) <= argument
            assert bool(batch) or not (inbox.waiting or inbox.set_aside)
            assert waiting_bytes - size_of(batch) <= inbox.waiting_bytes <= waiting_bytes
            assert inbox.in_hand_bytes == size_of(batch)  # the last batch's bytes, and no more
            taken += batch
        elif step == "written":
            inbox.written()
            assert inbox.in_hand_bytes == 0
        elif step == "tick":
            for _ in range(argument):
                inbox.tick(feed.cursor)
        elif step == "eager":
            inbox.coalesce_eagerly(argument)
        else:
            inbox.close()
        assert inbox.closed or not inbox.lagged
        assert (inbox.waiting_bytes > 0) is (inbox.waiting > 0)
    taken += drain(inbox, most=3)
    assert inbox.waiting == inbox.set_aside == inbox.waiting_bytes == 0
    seqs = [d.seq for d in taken]
    assert seqs == sorted(set(seqs))
    assert outcomes[Offer.DISCONNECTED] == (1 if inbox.lagged else 0)
    assert (
        outcomes[Offer.QUEUED] <= len(taken) <= outcomes[Offer.QUEUED] + outcomes[Offer.COALESCED]
    )
    newest_of_task = {d.message.coalesce_key: d.seq for d in taken if d.message.coalesce_key}
    for d in offers:
        if d.seq not in seqs and d.message.coalesce_key is not None:
            assert newest_of_task.get(d.message.coalesce_key, 0) > d.seq or inbox.closed
    if not inbox.closed:
        assert outcomes[Offer.CLOSED] == 0
        newest = {d.message.coalesce_key: d.seq for d in offers if d.message.coalesce_key}
        expected = [
            d.seq
            for d in offers
            if d.message.coalesce_key is None or newest[d.message.coalesce_key] == d.seq
        ]
        assert set(expected) <= set(seqs)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3000), st.booleans(), st.booleans()), min_size=1, max_size=40
    ),
    max_bytes=st.integers(1, 20_000),
)
def test_a_stream_whose_held_bytes_pass_the_bound_is_lagged_and_resumes_with_nothing_missing(
    steps: list[tuple[int, bool, bool]], max_bytes: int
) -> None:
    """Events of any size, one per step, to a client whose writer sometimes takes one and
    sometimes finishes writing it: far from its count bound, it is lagged exactly when an event
    finds the bytes held (waiting, and in the writer's hand until written) at or past the byte
    bound, and the bytes held never pass it by more than one event; and from its cursor, once
    it has what was queued, a replay gives it every other event, none twice (the resume from
    the cache)."""
    inbox = Inbox(capacity=1000, max_bytes=max_bytes)
    feed = Feed()
    offers: list[Delivery] = []
    served: list[EventIdentity] = []

    def serve(batch: Sequence[Delivery]) -> None:
        for delivery in batch:
            assert inbox.serve(delivery) is not None
            served.append(delivery.identity)

    for size, takes, writes in steps:
        delivery = feed.next(big(len(offers), size))
        offers.append(delivery)
        held_bytes = inbox.held_bytes
        outcome = offered(inbox, [delivery])
        if held_bytes >= max_bytes:
            assert outcome == {Offer.DISCONNECTED: 1}
            break
        assert outcome == {Offer.QUEUED: 1}
        assert inbox.held_bytes < max_bytes + size_of([delivery])
        if takes:
            serve(inbox.take(1))
        if writes:
            inbox.written()
    assert inbox.lagged is (outcome == {Offer.DISCONNECTED: 1})
    serve(drain(inbox))
    resumed = Inbox(capacity=1000, cursor=inbox.cursor)
    replayed = [d.identity for d in offers if resumed.replayed(d.identity) is not None]
    assert served + replayed == [d.identity for d in offers]


@settings(max_examples=300, deadline=None)
@given(
    bursts=st.lists(
        st.lists(st.integers(0, 2000), min_size=1, max_size=20), min_size=1, max_size=10
    ),
    capacity=st.integers(1, 6),
    max_bytes=st.integers(1, 5000),
)
def test_a_burst_past_both_bounds_reaches_a_client_that_keeps_up(
    bursts: list[list[int]], capacity: int, max_bytes: int
) -> None:
    """One step's offer is taken whole while the client is within both bounds, however many
    events and bytes it holds: a client that reads everything after each step gets every event,
    in order, and is never cut."""
    inbox = Inbox(capacity, max_bytes=max_bytes)
    feed = Feed()
    offers: list[Delivery] = []
    taken: list[Delivery] = []
    for sizes in bursts:
        batch = [feed.next(big(len(offers) + n, size)) for n, size in enumerate(sizes)]
        offers += batch
        assert offered(inbox, batch) == {Offer.QUEUED: len(batch)}
        taken += drain(inbox)
    assert not inbox.lagged
    assert taken == offers


@dataclass
class Client:
    """The stream one client receives, written the way the session actor writes it."""

    items: list[EventIdentity | Cursor] = field(default_factory=list)
    """In stream order: an event's identity (its id is the cursor after it), or an id alone."""
    ids: list[tuple[int, Cursor]] = field(default_factory=list)
    """Each id sent, with how many events came before it."""

    def write(self, inbox: Inbox, most: int) -> None:
        """One turn of the actor's loop: take, serve, and the heartbeat if still due."""
        batch = inbox.take(most)
        wrote = False
        if batch and inbox.serve_shared(batch):
            for delivery in batch:
                self._event(delivery.identity, delivery.cursor)
            wrote = True
        else:
            for delivery in batch:
                message = inbox.serve(delivery)
                if message is not None:
                    assert message.id is not None
                    self._event(delivery.identity, parse_cursor(message.id))
                    wrote = True
        if wrote:
            inbox.written()
        if inbox.heartbeat_due:
            moved = inbox.heartbeat().moved_to
            if moved is not None:
                self.ids.append((len(self.items), moved))
            inbox.written()

    def _event(self, identity: EventIdentity, cursor: Cursor) -> None:
        self.items.append(identity)
        self.ids.append((len(self.items), cursor))


position_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("offer"),
            st.tuples(
                st.lists(st.sampled_from(["content", "t1", "had"]), min_size=1, max_size=6),
                st.booleans(),
            ),
        ),
        st.tuples(st.just("others"), st.integers(1, 3)),
        st.tuples(st.just("tick"), st.integers(1, 4)),
        st.tuples(st.just("write"), st.integers(1, 4)),
        st.tuples(st.just("stop"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(steps=position_steps, capacity=st.integers(1, 6))
def test_no_id_covers_an_event_written_after_it_and_the_cursor_follows_the_router(
    steps: list[tuple[str, Any]], capacity: int
) -> None:
    """Over any interleaving of the client's events, events it already had, others' events
    passing, heartbeat ticks carrying the router's cursor, writes cut small, and a stop: no id
    the client is sent names a position past an event written after it (a client cut there
    would miss it), every event it did not have is written unless the inbox lagged or stopped,
    and once it has caught up and a heartbeat comes, its cursor is the router's merged with
    where it came from."""
    inbox = Inbox(capacity, cursor=CLIENT_AHEAD)
    feed = Feed()
    wanted: list[EventIdentity] = []
    client = Client()
    for step, argument in steps:
        if step == "offer":
            kinds, shared = argument
            batch = []
            for n, kind in enumerate(kinds):
                if kind == "had":
                    batch.append(feed.next(content(version=n), partition="1"))
                elif kind == "content":
                    batch.append(feed.next(content(version=n)))
                    wanted.append(batch[-1].identity)
                else:
                    batch.append(feed.next(progress("t1", n)))
            inbox.offer(SharedBatch(batch) if shared else batch, Counter())
        elif step == "others":
            for _ in range(argument):
                feed.next(content(novel_id="n2"), partition="2")  # not offered: another's
        elif step == "tick":
            for _ in range(argument):
                inbox.tick(feed.cursor)
        elif step == "write":
            client.write(inbox, argument)
        else:
            inbox.close()
    while inbox.ready:  # the client catches up with everything
        client.write(inbox, 3)
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)  # and a heartbeat comes
    client.write(inbox, 3)
    for at, cursor in client.ids:
        for later in client.items[at:]:
            assert isinstance(later, EventIdentity)
            assert not cursor.covers(later), (str(cursor), later)
    if not inbox.closed:
        assert set(wanted) <= set(client.items)
        if feed.cursor is not None:
            assert inbox.cursor == CLIENT_AHEAD.merge(feed.cursor)
            assert (client.ids[-1][1] if client.ids else CLIENT_AHEAD) == inbox.cursor


class Histories:
    """Deliveries the way the adapter makes them, across histories: the bus's history may be
    lost or replaced (a new epoch), and the router's cursor starts again in it."""

    def __init__(self) -> None:
        self.epoch = 0
        self.cursor: Cursor | None = None
        self.seq = 0
        self.offset = -1

    def next(self, message: Any) -> Delivery:
        self.offset += 1
        where = EventIdentity("memory", "0", (self.offset,), f"h{self.epoch}")
        self.cursor = Cursor.of(where) if self.cursor is None else self.cursor.advance(where)
        self.seq += 1
        return Delivery(self.seq, where, self.cursor, message.with_id(str(self.cursor)))

    def replace(self) -> None:
        self.epoch += 1
        self.offset = -1
        self.cursor = None


history_steps = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.lists(st.booleans(), min_size=1, max_size=4)),
        st.tuples(st.just("others"), st.integers(1, 3)),
        st.tuples(st.just("tick"), st.integers(1, 4)),
        st.tuples(st.just("write"), st.integers(1, 3)),
        st.tuples(st.just("replace"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=1000, deadline=None)
@given(steps=history_steps, capacity=st.integers(1, 4))
def test_a_client_hears_of_every_new_history_before_its_cursor_enters_it_and_never_goes_back(
    steps: list[tuple[str, Any]], capacity: int
) -> None:
    """Over any interleaving of the client's events (some of them not for it, as the actor's
    filter leaves out), others' events passing, heartbeat ticks with the router's cursor, writes
    and the bus's history replaced: the first id that puts the client in a new history comes
    after a history-truncated said since that history began (one error may tell of two), and
    neither its cursor nor any id it is sent moves it back to a history it left, whether the id
    comes with an event or alone with a heartbeat."""
    inbox = Inbox(capacity, cursor=Cursor.empty("memory", "h0"))
    feed = Histories()
    shown: set[int] = set()  # the seqs of the deliveries this client may see
    began = {0: -1}  # each history's number: where in the stream the bus began it
    told: list[int] = []  # where in the stream a history-truncated was said
    ids: list[tuple[int, Cursor]] = []  # each id sent, with where in the stream
    kept = [0]  # the history of the client's cursor, after each call

    def history_kept() -> None:
        assert inbox.cursor is not None
        assert inbox.cursor.epoch is not None
        kept.append(int(inbox.cursor.epoch.removeprefix("h")))
        assert kept[-1] >= kept[-2], f"the cursor went back to {inbox.cursor}"

    def write(most: int) -> None:
        """One turn of the actor's loop, as ``actors/session.py`` takes it."""
        batch = inbox.take(most)
        if batch and inbox.history_replaced(batch):
            told.append(len(told) + len(ids))
            inbox.written()
        wrote = False
        for delivery in batch:
            message = inbox.serve(delivery)
            history_kept()
            if message is not None and delivery.seq in shown:
                assert message.id is not None
                ids.append((len(told) + len(ids), parse_cursor(message.id)))
                wrote = True
        if wrote:
            inbox.written()
        if inbox.heartbeat_due:
            heartbeat = inbox.heartbeat()
            if heartbeat.history_replaced:
                told.append(len(told) + len(ids))
            if heartbeat.moved_to is not None:
                ids.append((len(told) + len(ids), heartbeat.moved_to))
            inbox.written()
            history_kept()

    for step, argument in steps:
        if step == "offer":
            batch = [feed.next(content(version=n)) for n in range(len(argument))]
            shown.update(d.seq for d, for_client in zip(batch, argument, strict=True) if for_client)
            inbox.offer(batch, Counter())
        elif step == "others":
            for _ in range(argument):
                feed.next(content(novel_id="n2"))  # not offered: another client's
        elif step == "tick":
            for _ in range(argument):
                inbox.tick(feed.cursor)
        elif step == "write":
            write(argument)
        else:
            feed.replace()
            began[feed.epoch] = len(told) + len(ids) - 1  # after all said so far
    while inbox.ready:
        write(3)
    for _ in range(TICKS_PER_HEARTBEAT):
        inbox.tick(feed.cursor)
    write(3)
    history = 0
    for at, cursor in ids:
        assert cursor.epoch is not None
        now = int(cursor.epoch.removeprefix("h"))
        assert now >= history, f"moved back from h{history} to {cursor}"
        if now != history:
            assert any(began[now] < said < at for said in told), f"moved into {cursor} untold"
            history = now
