"""Kafka's retention passing a client's cursor: an explicit ``history-truncated``, never a gap.

On noida-db, the test broker that moves a partition's log start: by DeleteRecords and by time
(``retention.ms``). Real routers, real HTTP; a replay cache of two events, so a resume from further
back is read again from Kafka. Every wait is bounded and polls what it waits for.
"""

from __future__ import annotations

import json

import trio

from tests.e2e_helpers import auth, content
from tests.kafka_broker import (
    Broker,
    create_topic,
    delete_records,
    kafka_router,
    new_topic_name,
    produce_raw,
    set_topic_config,
    wait_for_log_start,
)
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

HEADERS = auth("u1", novels=["n1"])
A_DAY_MS = str(24 * 3600 * 1000)


def versions(data: list[dict[str, object]]) -> list[object]:
    return [d["content_version"] for d in data]


async def test_records_deleted_past_a_cursor_truncate_its_resume_and_spare_a_later_one(
    noida_broker: Broker,
) -> None:
    topic = new_topic_name()
    await create_topic(noida_broker.bootstrap, topic, partitions=1)
    async with kafka_router(noida_broker, topic, cache_max_events=2) as router:
        async with router.stream(HEADERS) as first:
            await router.publish(*(content("n1", n) for n in range(10)))  # offsets 0..9
            await first.events_count(10)
        behind, within = first.events[1].last_event_id, first.events[6].last_event_id
        assert await delete_records(noida_broker.bootstrap, topic, 0, before=5) == 5
        async with router.stream({**HEADERS, "Last-Event-ID": behind}) as truncated:
            assert truncated.response is not None
            assert truncated.response.headers["sse-replay"] == "truncated"
            await truncated.events_count(1 + 5)
            await router.publish(content("n1", 10))
            await truncated.events_count(1 + 6)
        async with router.stream({**HEADERS, "Last-Event-ID": within}) as exact:
            assert exact.response is not None
            assert exact.response.headers["sse-replay"] == "complete"
            await exact.events_count(4)
        replays = router.running.hub.replays
    error, *retained_and_live = truncated.data()
    assert error["code"] == "history-truncated"
    assert versions(retained_and_live) == [5, 6, 7, 8, 9, 10]  # all Kafka still holds, then live
    assert versions(exact.data()) == [7, 8, 9, 10]
    assert replays["truncated", "bus"] == 1
    assert replays["complete", "bus"] == 1


async def test_time_retention_past_a_cursor_truncates_its_resume_and_spares_a_later_one(
    noida_broker: Broker,
) -> None:
    topic = new_topic_name()
    await create_topic(noida_broker.bootstrap, topic, partitions=1)
    async with (
        kafka_router(noida_broker, topic, cache_max_events=2) as router,
        router.stream(HEADERS) as watcher,
    ):
        await router.publish(*(content("n1", n) for n in range(5)))  # offsets 0..4
        await watcher.events_count(5)
        behind = watcher.events[1].last_event_id
        await set_topic_config(noida_broker.bootstrap, topic, {"retention.ms": "1000"})
        await wait_for_log_start(noida_broker.bootstrap, topic, 0, at_least=5)
        await set_topic_config(noida_broker.bootstrap, topic, {"retention.ms": A_DAY_MS})
        await router.publish(*(content("n1", n) for n in range(5, 10)))  # offsets 5..9, kept
        await watcher.events_count(10)
        within = watcher.events[6].last_event_id
        async with router.stream({**HEADERS, "Last-Event-ID": behind}) as truncated:
            assert truncated.response is not None
            assert truncated.response.headers["sse-replay"] == "truncated"
            await truncated.events_count(1 + 5)
            await router.publish(content("n1", 10))
            await truncated.events_count(1 + 6)
        async with router.stream({**HEADERS, "Last-Event-ID": within}) as exact:
            assert exact.response is not None
            assert exact.response.headers["sse-replay"] == "complete"
            await exact.events_count(4)
        await watcher.events_count(11)
    error, *retained_and_live = truncated.data()
    assert error["code"] == "history-truncated"
    assert versions(retained_and_live) == [5, 6, 7, 8, 9, 10]
    assert versions(exact.data()) == [7, 8, 9, 10]
    assert versions(watcher.data()) == list(range(11))  # the live stream missed nothing


async def test_a_router_restarted_where_kafka_deleted_unread_records_says_so(
    noida_broker: Broker,
) -> None:
    """The Redis cache's resume point is offset 5; while no router runs, offsets 6..9 are written
    and 6 and 7 deleted. The new router must not carry on from 8 as if nothing happened."""
    topic, prefix = new_topic_name(), new_prefix()
    await create_topic(noida_broker.bootstrap, topic, partitions=1)
    shared = {"cache": "redis", "redis_url": REDIS_URL, "redis_key_prefix": prefix}
    try:
        async with (
            kafka_router(noida_broker, topic, **shared) as first,
            first.stream(HEADERS) as before,
        ):
            await first.publish(*(content("n1", n) for n in range(6)))  # offsets 0..5
            await before.events_count(6)
        behind, at_the_resume_point = before.events[2].last_event_id, before.events[5].last_event_id
        while_down = [(b"n1", json.dumps(content("n1", n)).encode()) for n in range(6, 10)]
        await produce_raw(noida_broker.bootstrap, topic, while_down)
        assert await delete_records(noida_broker.bootstrap, topic, 0, before=8) == 8
        async with kafka_router(noida_broker, topic, **shared) as second:
            adapter = second.running.hub.adapter
            with trio.fail_after(20):  # a hang guard: the new router reads offsets 8 and 9
                await adapter.wait_consumed(2)
            assert adapter.stats.lost_on_bus == 1
            async with second.stream({**HEADERS, "Last-Event-ID": behind}) as from_behind:
                assert from_behind.response is not None
                assert from_behind.response.headers["sse-replay"] == "truncated"
                await from_behind.events_count(1 + 5)
            async with second.stream({**HEADERS, "Last-Event-ID": at_the_resume_point}) as at:
                assert at.response is not None
                assert at.response.headers["sse-replay"] == "truncated"
                await at.events_count(1 + 2)
            past_the_gap = from_behind.events[-2].last_event_id  # served up to offset 8
            async with second.stream({**HEADERS, "Last-Event-ID": past_the_gap}) as exact:
                assert exact.response is not None
                assert exact.response.headers["sse-replay"] == "complete"
                await second.publish(content("n1", 10))
                await exact.events_count(2)
    finally:
        delete_prefix(REDIS_URL, prefix)
    error, *retained = from_behind.data()
    assert error["code"] == "history-truncated"
    assert versions(retained) == [3, 4, 5, 8, 9]  # what the cache and Kafka still hold
    error, *retained = at.data()
    assert error["code"] == "history-truncated"
    assert versions(retained) == [8, 9]
    assert versions(exact.data()) == [9, 10]
