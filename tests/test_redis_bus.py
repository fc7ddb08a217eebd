"""The Redis Streams bus: malformed entries, outages, and what a resume reads again from it."""

from __future__ import annotations

import json
from typing import Any

import redis
import trio

from router.bus.redis import RedisStreamBus
from tests.e2e_helpers import auth, content, running_router
from tests.redis_helpers import RedisServer, delete_prefix, new_prefix


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
                await events.events_count(8)
        assert sorted(d["content_version"] for d in events.data()) == list(range(8))
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
