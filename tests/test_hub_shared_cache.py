"""The hub with a replay cache shared by instances (a real Redis): a client moving between them.

Redis answers over a socket, so the mock clock here jumps only after a real pause (nothing is
stuck for seconds unless the test is broken); the cache's own timeout is longer than the guard,
so a jump never times out a Redis call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager

import trio
import trio.testing
import trio_asyncio

from actors.hub import Hub
from actors.session import CloseReason
from router.bus.base import Record
from router.bus.memory import MemoryBus
from router.cache.redis import RedisReplayCache
from router.core.cursor import Cursor, EventIdentity, Offset, advance
from router.core.history import Entry
from router.core.mapping import convert_batch
from tests.actor_helpers import Reader
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix
from tests.test_hub import GUARD_SECONDS, NOVELS, client, content, open_session, versions


class HeldBackBus(MemoryBus):
    """The memory bus, whose reader gets nothing until ``let_read`` is set: the consumer of an
    instance that is still starting (or slow) while a client arrives."""

    def __init__(self) -> None:
        super().__init__(partitions=3)
        self.let_read = trio.Event()

    async def read(self, start: Mapping[str, Offset] | None) -> AsyncGenerator[Sequence[Record]]:
        await self.let_read.wait()
        async with aclosing(super().read(start)) as records:
            async for batch in records:
                yield batch


@asynccontextmanager
async def shared_cache(prefix: str) -> AsyncIterator[RedisReplayCache]:
    cache = RedisReplayCache(
        REDIS_URL,
        key_prefix=prefix,
        source="memory",
        max_events=1000,
        timeout_seconds=GUARD_SECONDS * 2,
    )
    try:
        yield cache
    finally:
        await cache.aclose()


async def written_by_another_instance(
    cache: RedisReplayCache, published: Sequence[tuple[EventIdentity, bytes]]
) -> None:
    """Append ``published`` to the shared cache as another instance's adapter would."""
    batch = convert_batch(published)
    await cache.append([Entry(c.identity, c.message, 0.0) for c in batch.events])


async def test_a_resume_on_an_instance_that_has_routed_nothing_yet_is_exact(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Instance B started when the bus was empty; its consumer has read nothing yet when a client
    arrives from instance A with a cursor of events A routed and wrote to the shared cache. B
    routes every event after where its consumer started, so the resume is complete: nothing to
    replay, and the events the client missed reach it live, once each."""
    mock_clock.autojump_threshold = 5.0
    prefix = new_prefix()
    bus = HeldBackBus()
    events = [content(NOVELS[n % 4], n) for n in range(12)]
    try:
        async with (
            trio_asyncio.open_loop(),
            shared_cache(prefix) as cache_of_b,
            shared_cache(prefix) as cache_of_a,
            trio.open_nursery() as nursery,
        ):
            hub = Hub(bus, cache_of_b)
            await nursery.start(hub.run)
            with trio.fail_after(GUARD_SECONDS):
                await hub.reading.wait()
                identities = await bus.publish(events)
                published = list(zip(identities, (e.to_bytes() for e in events), strict=True))
                await written_by_another_instance(cache_of_a, published)
                client_cursor: Cursor | None = None
                for identity in identities[:8]:  # what the client got from A before A died
                    client_cursor = advance(client_cursor, identity)
                assert client_cursor is not None
                opened = await open_session(hub, client("u1", novels=NOVELS), client_cursor)
                subject, output, replay = opened.session, opened.output, opened.replay
                assert output is not None
                assert replay is not None
                assert not replay.truncated
                assert hub.replays == {("complete", "cache"): 1}
                reader = Reader(output)
                nursery.start_soon(reader.run)
                bus.let_read.set()
                await hub.adapter.wait_consumed(len(events))
                await trio.testing.wait_all_tasks_blocked()
                subject.stop(CloseReason.CLIENT)
                await reader.closed.wait()
            nursery.cancel_scope.cancel()
        assert sorted(versions(reader)) == [8, 9, 10, 11]  # each once (in bus order, not ours)
        assert all(d.get("code") != "history-truncated" for d in reader.data())
    finally:
        delete_prefix(REDIS_URL, prefix)
