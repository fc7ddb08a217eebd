"""History shared by instances and restarts, on each real bus with the Redis cache."""

from __future__ import annotations

import json

import redis
import trio

from tests.conftest import RouterFactory
from tests.e2e_helpers import auth, content
from tests.kafka_broker import Broker, create_topic, kafka_router, new_topic_name, produce_raw
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

NOVELS = ["n1", "n2", "n3", "n4"]


def batch(start: int, count: int) -> list[dict[str, object]]:
    return [content(NOVELS[n % 4], n) for n in range(start, start + count)]


def versions(*data_lists: list[dict[str, object]]) -> list[object]:
    return sorted(d["content_version"] for data in data_lists for d in data)


async def test_a_client_moves_from_a_dead_instance_to_another_without_gap_or_duplicate(
    shared_bus: RouterFactory,
) -> None:
    prefix = new_prefix()
    shared = {"cache": "redis", "redis_url": REDIS_URL, "redis_key_prefix": prefix}
    headers = auth("u1", novels=NOVELS)
    try:
        async with shared_bus(**shared) as b:
            async with shared_bus(**shared) as a, a.stream(headers) as on_a:
                await a.publish(*batch(0, 20))
                await on_a.events_count(20)
                await b.publish(*batch(20, 10))  # both instances consume these
                await on_a.events_count(25)  # then A dies, mid-stream
            last_id = on_a.events[-1].last_event_id
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.publish, *batch(30, 10))
                async with b.stream({**headers, "Last-Event-ID": last_id}) as on_b:
                    await b.running.hub.adapter.wait_consumed(40)
                    await on_b.read_until(lambda s: len(s.events) + len(on_a.events) >= 40)
        assert versions(on_a.data(), on_b.data()) == list(range(40))
        assert on_b.response is not None
        assert on_b.response.headers["sse-replay"] == "complete"
        client = redis.Redis.from_url(REDIS_URL)
        source = last_id.split("@")[0]
        assert client.xlen(f"{prefix}:{source}:stream") == 40  # each event once, two writers
        client.close()
    finally:
        delete_prefix(REDIS_URL, prefix)


async def test_a_restarted_router_carries_on_where_the_cache_says(kafka_broker: Broker) -> None:
    """Events written to Kafka while no router runs are not skipped: the new router starts at
    the cache's resume point, not at the end of the topic."""
    topic, prefix = new_topic_name(), new_prefix()
    await create_topic(kafka_broker.bootstrap, topic, partitions=3)
    shared = {"cache": "redis", "redis_url": REDIS_URL, "redis_key_prefix": prefix}
    headers = auth("u1", novels=NOVELS)
    try:
        async with (
            kafka_router(kafka_broker, topic, **shared) as first,
            first.stream(headers) as before,
        ):
            await first.publish(*batch(0, 6))
            await before.events_count(6)
        while_down = [
            (str(NOVELS[n % 4]).encode(), json.dumps(content(NOVELS[n % 4], n)).encode())
            for n in range(6, 12)
        ]
        await produce_raw(kafka_broker.bootstrap, topic, while_down)
        async with kafka_router(kafka_broker, topic, **shared) as second:
            resume = {**headers, "Last-Event-ID": before.events[-1].last_event_id}
            async with second.stream(resume) as after:
                await after.events_count(6)
        assert versions(before.data(), after.data()) == list(range(12))
    finally:
        delete_prefix(REDIS_URL, prefix)


async def test_a_resume_beyond_the_cache_window_is_served_from_the_bus(
    shared_bus: RouterFactory,
) -> None:
    async with shared_bus(cache_max_events=3) as router:
        headers = auth("u1", novels=["n1", "n2"])
        missed = [content(f"n{1 + n % 2}", n) for n in range(1, 11)]
        resumed_headers = {**headers, "Last-Event-ID": await router.fall_behind(headers, missed)}
        async with router.stream(resumed_headers) as resumed:
            assert resumed.response.headers["sse-replay"] == "complete"
            await resumed.events_count(10)
            await router.publish(content("n1", 11))
            await resumed.events_count(11)
    got = [d["content_version"] for d in resumed.data()]
    assert sorted(got) == list(range(1, 12))  # exact: nothing lost, nothing twice
    for novel in ("n1", "n2"):  # each novel's events stay in order
        of_novel = [d["content_version"] for d in resumed.data() if d["novel_id"] == novel]
        assert of_novel == sorted(of_novel)


async def test_a_resume_the_bus_will_not_read_again_is_truncated(
    shared_bus: RouterFactory,
) -> None:
    async with shared_bus(cache_max_events=3, bus_replay_limit=5) as router:
        headers = auth("u1", novels=["n1"])
        missed = [content("n1", n) for n in range(1, 11)]
        resumed_headers = {**headers, "Last-Event-ID": await router.fall_behind(headers, missed)}
        async with router.stream(resumed_headers) as resumed:
            assert resumed.response.status_code == 200, resumed.response.status_code
            assert resumed.response.headers["sse-replay"] == "truncated"
            await resumed.events_count(4)
    error, *retained = resumed.data()
    assert error["code"] == "history-truncated"
    assert [d["content_version"] for d in retained] == [8, 9, 10]
