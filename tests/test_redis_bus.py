"""The Redis Streams bus: malformed entries, outages, and what a resume reads again from it."""

from __future__ import annotations

import json
import zlib
from typing import Any

import redis
import trio
import trio_asyncio

from router.bus.redis import RedisBusSettings, RedisStreamBus
from router.core.cursor import Cursor
from router.core.envelope import Envelope
from router.core.scope import Scope
from tests.e2e_helpers import auth, content, running_router
from tests.redis_helpers import (
    RedisServer,
    delete_prefix,
    new_prefix,
    resumes_across_a_lost_history,
)


async def test_entries_that_are_not_envelopes_are_skipped_and_counted(
    redis_bus_settings: dict[str, Any],
) -> None:
    stream = redis_bus_settings["redis_streams"][0]
    async with running_router(**redis_bus_settings) as router:
        await router.running.hub.reading.wait()
        async with router.stream() as events:
            client = redis.Redis.from_url(redis_bus_settings["redis_url"])
            client.xadd(stream, {"envelope": b"not json"})
            client.xadd(stream, {"something": b"else"})
            client.xadd(stream, {"envelope": json.dumps(content("n1", 1)).encode()})
            client.close()
            await events.events_count(1)
        assert events.data()[0]["content_version"] == 1
        assert router.running.hub.adapter.stats.rejected == {"malformed": 2}


async def test_the_bus_rides_out_a_redis_outage_and_skips_nothing() -> None:
    server = RedisServer()
    server.start()
    prefix = new_prefix()
    settings = {
        "bus": "redis",
        "redis_url": server.url,
        "redis_key_prefix": prefix,
        "redis_streams": ("events-a", "events-b"),
    }
    try:
        async with running_router(**settings) as router:
            bus = router.running.hub.bus
            assert isinstance(bus, RedisStreamBus)
            await router.running.hub.reading.wait()
            async with router.stream(auth("u1", novels=["n1", "n2"])) as events:
                await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(4)))
                await events.events_count(4)
                server.stop()
                with trio.fail_after(20):  # hang guards: the reader must notice, then recover
                    await bus.health_changed.wait()
                assert (await router.client.get("/readyz")).status_code == 503
                publish = await router.client.post(
                    "/api/v1/events",
                    json=content("n1", 99),
                    headers=auth("backend", roles=["publisher"]),
                )
                assert publish.status_code == 503  # the bus did not take it: say so
                server.start()  # an empty Redis: written during the outage is lost with it
                with trio.fail_after(20):
                    await bus.health_changed.wait()
                await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(4, 8)))
                await events.events_count(9)
        *before, told = events.data()[:5]
        assert sorted(d["content_version"] for d in before) == list(range(4))
        assert told["code"] == "history-truncated"  # a new history: what was lost is said
        assert sorted(d["content_version"] for d in events.data()[5:]) == list(range(4, 8))
    finally:
        server.remove()
        delete_prefix(server.url, prefix)


async def test_a_resume_neither_the_cache_nor_the_trimmed_bus_holds_is_truncated(
    redis_bus_settings: dict[str, Any],
) -> None:
    streams = redis_bus_settings["redis_streams"]
    async with running_router(cache_max_events=3, **redis_bus_settings) as router:
        await router.running.hub.reading.wait()
        headers = auth("u1", novels=["n1"])
        cursor = await router.fall_behind(headers, [content("n1", n) for n in range(1, 11)])
        client = redis.Redis.from_url(redis_bus_settings["redis_url"])
        for stream in streams:  # the bus's own retention takes the oldest entries
            client.xtrim(stream, maxlen=5, approximate=False)
        client.close()
        resumed_headers = {**headers, "Last-Event-ID": cursor}
        async with router.stream(resumed_headers) as resumed:
            assert resumed.response is not None
            assert resumed.response.headers["sse-replay"] == "truncated"
            await resumed.events_count(4)
    error, *retained = resumed.data()
    assert error["code"] == "history-truncated"
    assert [d["content_version"] for d in retained] == [8, 9, 10]


async def test_a_redis_restarted_empty_is_a_new_history_and_every_cursor_from_before_is_told() -> (
    None
):
    """The bus and the cache share one Redis, restarted with its data lost while one client is
    away and another is connected: the first resumes truncated, the second hears it in-band, and
    both carry on in the new history, exact from then on."""
    server = RedisServer()
    server.start()
    prefix = new_prefix()
    settings = {
        "bus": "redis",
        "cache": "redis",
        "redis_url": server.url,
        "redis_key_prefix": prefix,
        "redis_streams": ("events-a", "events-b"),
    }
    headers = auth("u1", novels=["n1", "n2"])
    try:
        async with running_router(**settings) as router:
            await router.running.hub.reading.wait()
            async with router.stream(headers) as away:
                await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(4)))
                await away.events_count(4)
            async with router.stream(headers) as live:
                await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(4, 10)))
                await live.events_count(6)  # the client away misses these
                server.stop()
                server.start()  # empty: the streams, their epoch marker and the cache are gone
                await router.publish(content("n1", 10))
                await live.read_until(
                    lambda s: any(d.get("content_version") == 10 for d in s.data())
                )
            *before, told, after = live.data()
            assert [d["content_version"] for d in before] == list(range(4, 10))
            assert told["code"] == "history-truncated"  # events may have been lost: said
            assert after["content_version"] == 10
            await resumes_across_a_lost_history(
                router,
                headers,
                from_before=away.events[-1].last_event_id,
                from_after=live.events[-1].last_event_id,
                novel="n2",
                version=11,
            )
    finally:
        server.remove()


async def test_a_redis_restored_from_an_older_copy_is_a_new_history() -> None:
    """The copy keeps the epoch marker, but its streams end before what the router consumed:
    that too is a new history. A resume from before is truncated, a connected client is told,
    and what was published since is delivered, the restored entries not again."""
    server = RedisServer()
    server.start()
    settings = {
        "bus": "redis",
        "redis_url": server.url,
        "redis_key_prefix": new_prefix(),
        "redis_streams": ("events-a", "events-b"),
    }
    headers = auth("u1", novels=["n1", "n2"])
    control = redis.Redis.from_url(server.url)
    try:
        async with running_router(**settings) as router:
            bus = router.running.hub.bus
            assert isinstance(bus, RedisStreamBus)
            await router.running.hub.reading.wait()
            async with router.stream(headers) as live:
                await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(4)))
                await live.events_count(4)
                control.save()  # the copy Redis comes back with
                await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(4, 8)))
                await live.events_count(8)
                server.stop()
                with trio.fail_after(20):  # hang guards: the reader notices, then recovers
                    await bus.health_changed.wait()
                server.start()  # from the copy: marker kept, entries 4 to 7 gone
                with trio.fail_after(20):
                    await bus.health_changed.wait()
                await router.publish(content("n1", 8))
                await live.events_count(10)
            *before, told, after = live.data()
            assert sorted(d["content_version"] for d in before) == list(range(8))
            assert told["code"] == "history-truncated"
            assert after["content_version"] == 8  # nothing restored delivered again
            resume = {**headers, "Last-Event-ID": live.events[5].last_event_id}
            async with router.stream(resume) as resumed:
                await router.flush(resumed)
            assert resumed.response is not None
            assert resumed.response.headers["sse-replay"] == "truncated"
    finally:
        control.close()
        server.remove()


async def test_a_restored_redis_loses_nothing_published_while_the_reader_was_away() -> None:
    """Restored from a copy, one stream ends before what the router consumed (a new history),
    the other does not; an event published to it before the reader is back is new, and must be
    delivered, not skipped as though the copy held it."""
    server = RedisServer()
    server.start()
    streams = ("events-a", "events-b")
    settings = {
        "bus": "redis",
        "redis_url": server.url,
        "redis_key_prefix": new_prefix(),
        "redis_streams": streams,
    }
    headers = auth("u1", novels=["n1", "n4"])  # n1 lands in events-a, n4 in events-b
    assert [zlib.crc32(n.encode()) % 2 for n in ("n1", "n4")] == [0, 1]
    control = redis.Redis.from_url(server.url)
    try:
        async with running_router(**settings) as router:
            bus = router.running.hub.bus
            assert isinstance(bus, RedisStreamBus)
            await router.running.hub.reading.wait()
            async with router.stream(headers) as live:
                await router.publish(content("n1", 0), content("n4", 1))
                await live.events_count(2)
                control.save()  # the copy Redis comes back with
                await router.publish(content("n1", 2))  # events-a only: it goes back
                await live.events_count(3)
                server.stop()
                with trio.fail_after(20):  # a hang guard: the reader notices
                    await bus.health_changed.wait()
                server.start()  # from the copy
                control.xadd(streams[1], {"envelope": json.dumps(content("n4", 3)).encode()})
                with trio.fail_after(20):
                    await bus.health_changed.wait()
                await router.publish(content("n1", 4))
                await live.read_until(
                    lambda s: any(d.get("content_version") == 4 for d in s.data())
                )
                await router.flush(live)
            versions = [d.get("content_version") for d in live.data()]
            assert sorted(v for v in versions if v is not None) == [0, 1, 2, 3, 4]
    finally:
        control.close()
        server.remove()


async def test_a_restore_another_instance_noticed_first_is_not_delivered_again() -> None:
    """Two instances read one restored Redis; the first to notice gives it a new epoch (set
    here by hand, as that instance would), and the other adopts it from the marker. The copy's
    entries were delivered before on both: the second instance must not deliver them again."""
    server = RedisServer()
    server.start()
    prefix = new_prefix()
    settings = {
        "bus": "redis",
        "redis_url": server.url,
        "redis_key_prefix": prefix,
        "redis_streams": ("events-a", "events-b"),
    }
    headers = auth("u1", novels=["n1", "n4"])
    control = redis.Redis.from_url(server.url)
    try:
        async with running_router(**settings) as router:
            bus = router.running.hub.bus
            assert isinstance(bus, RedisStreamBus)
            await router.running.hub.reading.wait()
            async with router.stream(headers) as live:
                await router.publish(*(content(("n1", "n4")[n % 2], n) for n in range(4)))
                await live.events_count(4)
                control.save()  # the copy Redis comes back with
                await router.publish(*(content(("n1", "n4")[n % 2], n) for n in range(4, 8)))
                await live.events_count(8)
                server.stop()
                with trio.fail_after(20):  # a hang guard: the reader notices
                    await bus.health_changed.wait()
                server.start()  # from the copy: the marker of the history before
                control.set(f"{prefix}:redis-bus:epoch", "another-instance")
                with trio.fail_after(20):
                    await bus.health_changed.wait()
                await router.publish(content("n1", 8))
                await live.read_until(
                    lambda s: any(d.get("content_version") == 8 for d in s.data())
                )
            versions = [d.get("content_version") for d in live.data()]
            assert sorted(v for v in versions if v is not None) == list(range(9))
            assert await bus.epoch() == "another-instance"
    finally:
        control.close()
        server.remove()


async def test_a_long_resume_read_again_from_the_bus_lets_the_loop_run_while_it_converts(
    redis_bus_settings: dict[str, Any],
) -> None:
    """3,000 events read again from the bus are converted a slice at a time, with a checkpoint
    after each, so every other stream and the adapter run meanwhile (in one go it held the
    loop for seconds at 100,000)."""
    import unittest.mock

    import actors.hub
    from router.core.mapping import convert_batch

    turns = 0
    slices: list[tuple[int, int]] = []

    def recording(records: Any, cursor: Any = None) -> Any:
        batch = convert_batch(records, cursor)
        slices.append((len(batch.events), turns))
        return batch

    async def beside(done: trio.Event) -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await trio.lowlevel.checkpoint()

    async with running_router(cache_max_events=1, **redis_bus_settings) as router:
        await router.running.hub.reading.wait()
        headers = auth("u1", novels=["n1"])
        cursor = await router.fall_behind(headers, [content("n1", 1)])
        for start in range(2, 3002, 1000):
            await router.publish(*(content("n1", n) for n in range(start, start + 1000)))
        await router.running.hub.adapter.wait_consumed(3002)
        done = trio.Event()
        with unittest.mock.patch.object(actors.hub, "convert_batch", recording):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(beside, done)
                async with router.stream({**headers, "Last-Event-ID": cursor}) as resumed:
                    await resumed.events_count(3001)
                done.set()
        assert router.running.hub.replays["complete", "bus"] == 1
    assert sum(events for events, _ in slices) == 3001
    assert max(events for events, _ in slices) <= 500
    # Other tasks ran all along (trio may run the two in either order within one round).
    assert len({at for _, at in slices}) >= len(slices) // 2


async def test_a_replay_from_a_history_redis_lost_is_refused_before_the_reader_notices() -> None:
    """Redis restarted empty and the reader has not read since (its epoch is stale): a replay of
    the lost history must not be answered from the new one's streams, where its range is empty
    (the new ids are later), as if the client had missed nothing. Seen in the fault suite as a
    resume from before the loss answered complete, and the events it missed lost, untold."""
    server = RedisServer()
    server.start()
    prefix = new_prefix()
    bus = RedisStreamBus(RedisBusSettings(server.url, ("events-a",), key_prefix=prefix))
    event = Envelope("Task.ProgressUpdated", "2026-01-01T00:00:00Z", Scope(user_id="u1"), {})
    try:
        async with trio_asyncio.open_loop():
            first, second = await bus.publish([event, event])
            after, up_to = Cursor.of(first), Cursor.of(second)
            replayed = await bus.replay(after, up_to, 10)
            assert replayed is not None
            assert [r.identity for r in replayed] == [second]
            server.stop()
            # Empty, the stream and its epoch marker gone, and nothing published since (while
            # the publishing breaker is open): no entry later than the cursor to betray the loss.
            server.start()
            assert await bus.replay(after, up_to, 10) is None
            await bus.aclose()
    finally:
        server.remove()


async def test_a_publish_is_one_round_trip_and_every_envelope_lands_in_order_where_it_says(
    redis_bus_settings: dict[str, Any],
) -> None:
    """One XADD per round trip cost a targeted event about 1.5 ms of CPU (a POST of 100 was
    100 trips through trio-asyncio): a publish is one pipeline, in order."""
    streams = redis_bus_settings["redis_streams"]
    bus = RedisStreamBus(
        RedisBusSettings(
            redis_bus_settings["redis_url"],
            streams,
            key_prefix=redis_bus_settings["redis_key_prefix"],
        )
    )
    envelopes = [
        Envelope("Task.ProgressUpdated", "2026-01-01T00:00:00Z", Scope(user_id=f"u{n % 7}"), {})
        for n in range(50)
    ]
    trips: list[str] = []
    connection = bus._redis
    one_by_one, in_order = connection.call, connection.call_in_order

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        trips.append(method)
        return await one_by_one(method, *args, **kwargs)

    async def call_in_order(*commands: Any, **kwargs: Any) -> Any:
        trips.append("+".join(sorted({method for method, _, _ in commands})))
        return await in_order(*commands, **kwargs)

    connection.call, connection.call_in_order = call, call_in_order  # type: ignore[method-assign]
    async with trio_asyncio.open_loop():
        await bus.epoch()
        trips.clear()
        identities = await bus.publish(envelopes)
        await bus.aclose()
    assert trips == ["xadd"]
    client = redis.Redis.from_url(redis_bus_settings["redis_url"])
    try:
        for stream in streams:
            mine = [
                (i, e) for i, e in zip(identities, envelopes, strict=True) if i.partition == stream
            ]
            entries = client.xrange(stream)
            assert [entry_id.decode() for entry_id, _ in entries] == [
                "-".join(map(str, i.offset)) for i, _ in mine
            ]
            assert [fields[b"envelope"] for _, fields in entries] == [e.to_bytes() for _, e in mine]
            by_scope = streams[zlib.crc32(b"u0") % len(streams)]
            assert all(i.partition == by_scope for i, e in mine if e.scope.user_id == "u0")
    finally:
        client.close()
