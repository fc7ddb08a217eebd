"""The Redis replay cache bounded by bytes (``--cache-max-bytes``), against a real Redis.

The append script keeps a running total of the stream's entries' weights (the bytes of their
stored fields) beside the stream, trims the oldest past the bound and records each trimmed
offset as evicted, exactly as a count trim does: a resume behind them is truncated, never
silently short. Each test has its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import redis
import trio

from router.cache.redis import RedisReplayCache
from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.history import Entry
from router.core.scope import Scope
from router.core.sse import SSEMessage
from tests.redis_helpers import REDIS_URL, new_prefix, own_redis_server, redis_cache

EVERYTHING = parse_cursor("kafka@e1:0:1000,1:1000,2:1000")
PAD = 1000


def entry(partition: str, offset: int, pad: int = PAD, epoch: str = "e1") -> Entry:
    identity = EventIdentity("kafka", partition, (offset,), epoch)
    message = SSEMessage(
        event="content.updated",
        data={"n": offset, "pad": "x" * pad},
        id=str(Cursor.of(identity)),
        scope=Scope(user_id="u1"),
    )
    return Entry(identity, message, 0.0)


def places(entries: list[Entry]) -> list[tuple[str, int]]:
    return [(e.identity.partition, e.identity.offset[0]) for e in entries]


def stored(cache: RedisReplayCache) -> tuple[int, int]:
    """The running total the script keeps, and the weights of the stream's entries summed."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stream, bytes_key = cache.keys[0], cache.keys[5]
        weights = sum(
            len(value) for _, fields in client.xrange(stream) for value in fields.values()
        )
        total = client.get(bytes_key)
        return (0 if total is None else int(total)), weights
    finally:
        client.close()


async def test_past_the_byte_bound_the_oldest_are_trimmed_and_a_resume_behind_is_truncated() -> (
    None
):
    async with redis_cache(max_events=100, max_bytes=5 * PAD + 500) as cache:
        await cache.append([entry("0", n) for n in range(10)])
        total, weights = stored(cache)
        assert total == weights <= 5 * PAD + 500
        kept = places((await cache.replay(parse_cursor("kafka@e1:0:8"), EVERYTHING)).entries)
        assert kept == [("0", 9)]
        window = (await cache.window()).events
        assert 1 <= window < 10
        oldest_kept = 10 - window
        behind = await cache.replay(parse_cursor(f"kafka@e1:0:{oldest_kept - 2}"), EVERYTHING)
        assert behind.truncated  # the event after its cursor was trimmed
        assert places(behind.entries) == [("0", n) for n in range(oldest_kept, 10)]
        in_time = await cache.replay(parse_cursor(f"kafka@e1:0:{oldest_kept - 1}"), EVERYTHING)
        assert not in_time.truncated
        assert places(in_time.entries) == places(behind.entries)


async def test_without_a_byte_bound_only_the_count_trims() -> None:
    async with redis_cache(max_events=100) as cache:
        await cache.append([entry("0", n, pad=20_000) for n in range(20)])
        assert (await cache.window()).events == 20
        total, weights = stored(cache)
        assert total == weights > 20 * 20_000


async def test_two_instances_sharing_the_cache_trim_by_one_total() -> None:
    """Two routers reading the same partitions append each event once, and the bound holds for
    what they hold together; a resume behind what either trimmed is truncated on both."""
    prefix = new_prefix()
    bound = 8 * PAD
    async with redis_cache(prefix=prefix, max_events=1000, max_bytes=bound) as first:
        second = RedisReplayCache(
            first.url, key_prefix=prefix, source="kafka", max_events=1000, max_bytes=bound
        )
        try:
            for n in range(0, 30, 3):
                await first.append([entry("0", n), entry("1", n), entry("0", n + 1)])
                await second.append([entry("1", n), entry("0", n), entry("0", n + 1)])
                await second.append([entry("0", n + 2), entry("1", n + 1)])
                await first.append([entry("0", n + 2), entry("1", n + 1), entry("1", n + 2)])
                total, weights = stored(first)
                assert total == weights <= bound
            for cache in (first, second):
                behind = await cache.replay(parse_cursor("kafka@e1:0:0,1:0"), EVERYTHING)
                assert behind.truncated
                seen = places(behind.entries)
                assert len(seen) == len(set(seen))  # each event once, for both writers
                assert ("0", 29) in seen
                assert ("1", 29) in seen
        finally:
            await second.aclose()


async def test_an_event_larger_than_the_bound_alone_is_trimmed_too_and_said() -> None:
    """As the memory cache does: nothing is kept past the bound, and a resume from before the
    event is truncated, not answered complete and empty."""
    async with redis_cache(max_events=100, max_bytes=PAD) as cache:
        await cache.append([entry("0", 0, pad=10), entry("0", 1, pad=5 * PAD)])
        assert (await cache.window()).events == 0
        assert stored(cache) == (0, 0)
        behind = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert behind.truncated
        assert behind.entries == []
        await cache.append([entry("0", 2, pad=10)])
        after = await cache.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING)
        assert not after.truncated
        assert places(after.entries) == [("0", 2)]


async def test_entries_from_before_the_total_was_kept_are_weighed_once() -> None:
    """A stream an older router wrote has no total: the next append weighs it whole, so the
    bound holds from that append on."""
    async with redis_cache(max_events=100) as older:
        await older.append([entry("0", n) for n in range(6)])
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.delete(older.keys[5])
        finally:
            client.close()
        newer = RedisReplayCache(
            older.url,
            key_prefix=older.keys[0].rsplit(":", 2)[0],
            source="kafka",
            max_events=100,
            max_bytes=4 * PAD + 400,
        )
        try:
            await newer.append([entry("0", 6)])
            total, weights = stored(newer)
            assert total == weights <= 4 * PAD + 400
            assert (await newer.window()).events == 4
            assert (await newer.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING)).truncated
        finally:
            await newer.aclose()


async def test_a_new_epoch_starts_the_total_again() -> None:
    async with redis_cache(max_events=100, max_bytes=100 * PAD) as cache:
        await cache.append([entry("0", n) for n in range(5)])
        await cache.append([entry("0", 0, epoch="e2")])
        total, weights = stored(cache)
        assert total == weights < 2 * PAD
        await cache.forget(EventIdentity("kafka", "0", (3,), "e3"))  # a newer epoch again
        assert stored(cache) == (0, 0)


async def test_while_redis_is_away_what_waits_in_memory_is_bounded_by_bytes_too() -> None:
    """The appends held while Redis is away keep to the byte bound as well: the oldest are
    dropped and noted as lost, so once Redis is back a resume from before them is truncated."""
    with own_redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    bound = 5 * PAD + 500
    async with redis_cache(url=url, max_events=100, max_bytes=bound, timeout_seconds=0.2) as cache:
        await cache.append([entry("0", n) for n in range(10)])  # Redis is down: held
        assert not await cache.healthy()
        held = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert held.truncated
        kept = places(held.entries)
        assert 1 <= len(kept) < 9
        assert kept == [("0", n) for n in range(10 - len(kept), 10)]
        with own_redis_server(port):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.run)
                with trio.fail_after(20):  # a hang guard: the retry backoff is capped at 5 s
                    await cache.health_changed.wait()
                nursery.cancel_scope.cancel()
            behind = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
            assert behind.truncated
            assert places(behind.entries) == kept
            oldest = kept[0][1]
            in_time = await cache.replay(parse_cursor(f"kafka@e1:0:{oldest - 1}"), EVERYTHING)
            assert not in_time.truncated
