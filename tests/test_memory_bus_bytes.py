"""The embedded bus bounded by bytes (``--memory-bus-max-bytes``): a publisher waits while its
partition's unread records weigh too much, and nothing is dropped."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio
import trio.testing

from router.bus.memory import MemoryBus
from tests.test_memory_bus import GUARD_SECONDS, envelope, number, take


def weight(n: int) -> int:
    return len(envelope(n, user_id="u1").to_bytes())


async def test_a_publisher_waits_while_the_unread_bytes_are_at_the_bound(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = MemoryBus(partitions=1, capacity=1000, max_bytes=2 * weight(0))
    await bus.publish([envelope(0, user_id="u1"), envelope(1, user_id="u1")])  # fits exactly
    published = trio.Event()

    async def publish_one_more() -> None:
        await bus.publish([envelope(2, user_id="u1")])
        published.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_one_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not published.is_set()  # two records of 1,000 allowed, but no bytes left
        async with aclosing(bus.read({})) as batches:
            got = await take(batches, 2)
            with trio.fail_after(GUARD_SECONDS):
                await published.wait()
            got += await take(batches, 1)
    assert [number(record) for record in got] == [0, 1, 2]


async def test_a_record_larger_than_the_bound_goes_through_an_empty_partition(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = MemoryBus(partitions=1, max_bytes=10)
    async with aclosing(bus.read({})) as batches, trio.open_nursery() as nursery:
        nursery.start_soon(bus.publish, [envelope(n, user_id="u1") for n in range(3)])
        with trio.fail_after(GUARD_SECONDS):
            got = await take(batches, 3)
    assert [number(record) for record in got] == [0, 1, 2]


def test_a_meaningless_size_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryBus(max_bytes=0)
