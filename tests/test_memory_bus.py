"""The embedded bus and the consumer actor: partitions, order, backpressure, nothing dropped.

Waiting is proved with trio's scheduler (``wait_all_tasks_blocked``), never with time; the
``fail_after`` guards under the autojump clock turn a deadlock into a failure instead of a hang.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import pytest
import trio
import trio.testing

from actors.consumer import run_consumer
from router.bus.base import Record
from router.bus.memory import MemoryBus
from router.core.cursor import EventIdentity
from router.core.envelope import Envelope, parse_envelope

GUARD_SECONDS = 60


def envelope(n: int, **scope: str | bool) -> Envelope:
    return parse_envelope(
        {
            "event_type": "Test.Happened",
            "occurred_at": "2026-11-28T10:00:00Z",
            "scope": scope,
            "payload": {"n": n},
        }
    )


def number(record: Record) -> int:
    n = json.loads(record.raw)["payload"]["n"]
    assert isinstance(n, int)
    return n


async def take(batches: AsyncIterator[Sequence[Record]], count: int) -> list[Record]:
    got: list[Record] = []
    while len(got) < count:
        got.extend(await anext(batches))
    return got


def by_partition(identities: Sequence[EventIdentity]) -> dict[str, list[int]]:
    offsets: defaultdict[str, list[int]] = defaultdict(list)
    for identity in identities:
        (offset,) = identity.offset
        offsets[identity.partition].append(offset)
    return dict(offsets)


async def test_publish_returns_identities_of_this_epoch_with_increasing_offsets() -> None:
    bus = MemoryBus(partitions=4)
    epoch = await bus.epoch()
    first = await bus.publish([envelope(n, user_id=f"u{n % 7}") for n in range(30)])
    second = await bus.publish([envelope(n, user_id=f"u{n % 7}") for n in range(30, 50)])
    identities = first + second
    assert len(identities) == 50
    assert {(i.source, i.epoch) for i in identities} == {("memory", epoch)}
    assert {i.partition for i in identities} <= {"0", "1", "2", "3"}
    for offsets in by_partition(identities).values():
        assert offsets == list(range(len(offsets)))  # 0, 1, 2, ... across both calls


async def test_one_scope_key_always_lands_on_the_same_partition() -> None:
    bus = MemoryBus(partitions=8)
    keys: list[dict[str, str | bool]] = [
        *({"user_id": f"u{n}"} for n in range(20)),
        *({"novel_id": f"n{n}"} for n in range(20)),
        {"session_id": "s1"},
        {"broadcast": True},
    ]
    where: defaultdict[str, list[EventIdentity]] = defaultdict(list)
    for round_ in range(3):
        envelopes = [envelope(round_, **scope) for scope in keys]
        for scope, identity in zip(keys, await bus.publish(envelopes), strict=True):
            where[json.dumps(scope)].append(identity)
    for identities in where.values():
        assert len({i.partition for i in identities}) == 1
        offsets = [i.offset for i in identities]
        assert offsets == sorted(offsets)  # one key's events keep their order
    assert len({ids[0].partition for ids in where.values()}) > 1  # keys do spread out
    # An event is partitioned by the narrowest owner it names first: a user's event about a
    # novel goes where that user's other events go.
    (mine,) = await bus.publish([envelope(0, user_id="u3", novel_id="n1")])
    assert mine.partition == where[json.dumps({"user_id": "u3"})][0].partition


async def test_read_yields_every_record_in_order_per_partition() -> None:
    bus = MemoryBus(partitions=3)
    envelopes = [envelope(n, novel_id=f"n{n % 5}") for n in range(60)]
    published = await bus.publish(envelopes)
    async with aclosing(bus.read({})) as batches:
        got = await take(batches, 60)
    assert sorted(str(r.identity) for r in got) == sorted(map(str, published))
    for offsets in by_partition([r.identity for r in got]).values():
        assert offsets == list(range(len(offsets)))
    for record in got:
        assert record.raw == envelopes[number(record)].to_bytes()


async def test_read_skips_what_start_covers_and_reads_unnamed_partitions_from_the_start() -> None:
    bus = MemoryBus(partitions=2)
    published = await bus.publish([envelope(n, user_id=f"u{n % 8}") for n in range(40)])
    offsets = by_partition(published)
    assert set(offsets) == {"0", "1"}
    async with aclosing(bus.read({"0": (4,)})) as batches:
        got = await take(batches, 40 - 5)
    assert by_partition([r.identity for r in got]) == {
        "0": list(range(5, len(offsets["0"]))),
        "1": list(range(len(offsets["1"]))),
    }


async def test_records_skipped_by_start_make_room_for_a_waiting_publisher(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = MemoryBus(partitions=1, capacity=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bus.publish, [envelope(n, user_id="u1") for n in range(8)])
        with trio.fail_after(GUARD_SECONDS):
            async with aclosing(bus.read({"0": (5,)})) as batches:
                got = await take(batches, 2)
    assert [r.identity.offset for r in got] == [(6,), (7,)]


async def test_a_publisher_waits_while_its_partition_is_full(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = MemoryBus(partitions=2, capacity=3)
    full = [envelope(n, user_id="u1") for n in range(3)]
    (partition,) = {i.partition for i in await bus.publish(full)}  # fits: 3 unread of 3
    probe = MemoryBus(partitions=2)  # the same hash, so the same partitions
    users = [f"u{n}" for n in range(2, 20)]
    landed = await probe.publish([envelope(0, user_id=user) for user in users])
    other_user = next(u for u, i in zip(users, landed, strict=True) if i.partition != partition)
    published = trio.Event()

    async def publish_one_more() -> None:
        await bus.publish([envelope(3, user_id="u1")])
        published.set()

    async with trio.open_nursery() as nursery, aclosing(bus.read({})) as batches:
        nursery.start_soon(publish_one_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not published.is_set()  # waiting, not dropping and not overfilling
        await trio.sleep(3600)
        assert not published.is_set()  # and no timeout gives up on it
        # The other partition is not held up by the full one.
        with trio.fail_after(GUARD_SECONDS):
            await bus.publish([envelope(-2, user_id=other_user)])
        got = await take(batches, 4)
        with trio.fail_after(GUARD_SECONDS):
            await published.wait()
        got += await take(batches, 1)
    mine = [number(r) for r in got if r.identity.partition == partition]
    assert mine == [0, 1, 2, 3]


async def test_one_publish_of_more_than_a_partitions_capacity_goes_through(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The publisher must tell the reader about what it appended before it waits for room."""
    bus = MemoryBus(partitions=1, capacity=2)
    async with aclosing(bus.read({})) as batches, trio.open_nursery() as nursery:
        nursery.start_soon(bus.publish, [envelope(n, user_id="u1") for n in range(10)])
        with trio.fail_after(GUARD_SECONDS):
            got = await take(batches, 10)
    assert [number(r) for r in got] == list(range(10))


async def test_a_cancelled_publish_still_wakes_the_reader_for_what_it_appended() -> None:
    bus = MemoryBus(partitions=1, capacity=3)
    reader_got: list[Record] = []

    async def read_all() -> None:
        async with aclosing(bus.read({})) as batches:
            async for batch in batches:
                reader_got.extend(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await trio.testing.wait_all_tasks_blocked()  # the reader waits for records
        with trio.move_on_after(0):
            # Appends what fits without yielding, then is cancelled at its first wait for room.
            await bus.publish([envelope(n, user_id="u1") for n in range(5)])
        await trio.testing.wait_all_tasks_blocked()
        assert [number(r) for r in reader_got] == [0, 1, 2]
        nursery.cancel_scope.cancel()


async def test_two_buses_have_different_epochs() -> None:
    first, second = MemoryBus(), MemoryBus()
    assert await first.epoch() != await second.epoch()
    assert await first.epoch() == await first.epoch()
    (a,) = await first.publish([envelope(0, user_id="u1")])
    (b,) = await second.publish([envelope(0, user_id="u1")])
    assert (a.partition, a.offset) == (b.partition, b.offset)
    assert a != b  # same place, different histories


@pytest.mark.parametrize(("partitions", "capacity"), [(0, 10), (-1, 10), (1, 0), (1, -5)], ids=str)
def test_a_bus_needs_a_partition_and_some_capacity(partitions: int, capacity: int) -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        MemoryBus(partitions=partitions, capacity=capacity)


# -- the consumer actor ----------------------------------------------------------------------------


async def test_the_consumer_waits_for_a_full_records_channel_and_drops_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = MemoryBus(partitions=2, capacity=4)
    records_send, records_receive = trio.open_memory_channel[Sequence[Record]](1)
    published: list[EventIdentity] = []
    all_published = trio.Event()

    async def publisher() -> None:
        for n in range(60):
            published.extend(await bus.publish([envelope(n, user_id=f"u{n % 5}")]))
        all_published.set()

    got: list[Record] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_consumer, bus, {}, records_send)
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(3600)
        # Nobody reads: one batch waits in the channel, the consumer waits to send the next,
        # the bus fills up, and the publisher waits in turn.
        stats = records_receive.statistics()
        assert (stats.current_buffer_used, stats.tasks_waiting_send) == (1, 1)
        assert not all_published.is_set()
        assert len(published) < 60
        with trio.fail_after(GUARD_SECONDS):
            async for batch in records_receive:
                got.extend(batch)
                if len(got) == 60:
                    break
        assert all_published.is_set()
        nursery.cancel_scope.cancel()
    assert sorted(str(r.identity) for r in got) == sorted(map(str, published))
    assert len({r.identity for r in got}) == 60
    for offsets in by_partition([r.identity for r in got]).values():
        assert offsets == list(range(len(offsets)))
    per_user: defaultdict[str, list[int]] = defaultdict(list)
    for record in got:
        per_user[json.loads(record.raw)["scope"]["user_id"]].append(number(record))
    assert per_user == {f"u{u}": list(range(u, 60, 5)) for u in range(5)}


@pytest.mark.parametrize("blocked_on", ["the bus", "the records channel"])
async def test_a_cancelled_consumer_closes_its_channel_which_ends_the_adapter(
    blocked_on: str,
) -> None:
    bus = MemoryBus()
    records_send, records_receive = trio.open_memory_channel[Sequence[Record]](0)
    if blocked_on == "the records channel":
        await bus.publish([envelope(0, user_id="u1")])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_consumer, bus, {}, records_send)
        await trio.testing.wait_all_tasks_blocked()
        waiting = records_receive.statistics().tasks_waiting_send
        assert waiting == (1 if blocked_on == "the records channel" else 0)
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.EndOfChannel):
        records_receive.receive_nowait()


async def test_a_sealed_envelope_is_handed_over_parsed_and_a_plain_one_as_bytes_only() -> None:
    bus = MemoryBus()
    sealed, plain = envelope(1, user_id="u1").sealed(), envelope(2, user_id="u1")
    await bus.publish([sealed, plain])
    async with aclosing(bus.read(None)) as batches:
        first, second = await take(batches, 2)
    assert (first.raw, first.envelope) == (sealed.raw, sealed.envelope)
    assert (second.raw, second.envelope) == (plain.to_bytes(), None)
