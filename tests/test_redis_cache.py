"""The Redis Stream replay cache, against a real Redis."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import trio
import trio.testing

from router.cache.redis import RedisReplayCache
from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.history import Entry
from router.core.scope import Scope
from router.core.sse import SSEMessage
from tests.e2e_helpers import EventStream, RouterUnderTest, auth, content, running_router
from tests.redis_helpers import (
    RedisServer,
    delete_prefix,
    new_prefix,
    own_redis_server,
    redis_cache,
    resumes_across_a_lost_history,
    wait_for_writes_in_flight,
)

EVERYTHING = parse_cursor("kafka@e1:0:1000,1:1000,2:1000")


@asynccontextmanager
async def a_router_on_a_redis_of_its_own() -> AsyncIterator[
    tuple[RedisServer, RouterUnderTest, RedisReplayCache]
]:
    """A router on the embedded bus of three partitions, its replay cache on a Redis of the
    test's own, which the test may stop and start; that Redis is removed afterwards."""
    server = RedisServer()
    server.start()
    try:
        async with running_router(
            cache="redis",
            redis_url=server.url,
            redis_key_prefix=new_prefix(),
            memory_partitions=3,
        ) as router:
            cache = router.running.hub.cache
            assert isinstance(cache, RedisReplayCache)
            yield server, router, cache
    finally:
        server.remove()


def entry(partition: str, offset: int, epoch: str = "e1", user: str = "u1") -> Entry:
    identity = EventIdentity("kafka", partition, (offset,), epoch)
    message = SSEMessage(
        event="content.updated",
        data={"n": offset, "p": partition},
        id=str(Cursor.of(identity)),
        scope=Scope(user_id=user),
    )
    return Entry(identity, message, 0.0)


def places(entries: list[Entry]) -> list[tuple[str, int]]:
    return [(e.identity.partition, e.identity.offset[0]) for e in entries]


async def test_replays_exactly_what_lies_after_the_cursor() -> None:
    async with redis_cache(max_events=100) as cache:
        await cache.append([entry("0", 0), entry("1", 0), entry("0", 1), entry("1", 1)])
        await cache.append([entry("0", 2)])
        replay = await cache.replay(parse_cursor("kafka@e1:0:0,1:1"), EVERYTHING)
        assert places(replay.entries) == [("0", 1), ("0", 2)]
        assert not replay.truncated
        replayed = replay.entries[0].message
        assert replayed.event == "content.updated"
        assert replayed.data == {"n": 1, "p": "0"}
        assert replayed.scope == Scope(user_id="u1")
        partial = await cache.replay(
            parse_cursor("kafka@e1:0:0,1:1"), parse_cursor("kafka@e1:0:1,1:1")
        )
        assert places(partial.entries) == [("0", 1)]


async def test_a_long_history_is_read_back_in_pages_newest_first() -> None:
    async with redis_cache(max_events=5000) as cache:
        await cache.append([entry(str(n % 3), n // 3) for n in range(1500)])
        behind = await cache.replay(parse_cursor("kafka@e1:0:400,1:400,2:400"), EVERYTHING)
        assert places(behind.entries) == [(str(n % 3), n // 3) for n in range(1203, 1500)]
        everything = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert len(everything.entries) == 1500 - 1  # partitions 1 and 2 were never seen: all


async def test_resumes_from_one_cursor_share_the_entries_decoded_once() -> None:
    # A deploy's storm: every client back from the same cursor reads the same entries.
    async with redis_cache(max_events=100) as cache:
        await cache.append([entry("0", n) for n in range(50)])
        cursor = parse_cursor("kafka@e1:0:9")
        first = await cache.replay(cursor, EVERYTHING)
        decoded_once = cache.decoded_entries.decoded  # 41: the first entry the cursor covers too
        second = await cache.replay(cursor, EVERYTHING)
        assert places(second.entries) == places(first.entries) == [("0", n) for n in range(10, 50)]
        assert all(a is b for a, b in zip(first.entries, second.entries, strict=True))
        assert cache.decoded_entries.decoded == decoded_once


async def test_a_replay_of_one_page_is_one_round_trip_to_redis() -> None:
    async with redis_cache(max_events=2000) as cache:
        await cache.append([entry("0", n) for n in range(600)])
        trips: list[str] = []
        connection = cache._redis
        call, in_order = connection.call, connection.call_in_order

        async def counted_call(method: str, *args: Any, **kwargs: Any) -> Any:
            trips.append(method)
            return await call(method, *args, **kwargs)

        async def counted_in_order(*commands: Any, **kwargs: Any) -> Any:
            trips.append("+".join(command[0] for command in commands))
            return await in_order(*commands, **kwargs)

        connection.call, connection.call_in_order = counted_call, counted_in_order  # type: ignore[method-assign]
        recent = await cache.replay(parse_cursor("kafka@e1:0:400"), EVERYTHING)
        assert trips == ["get+get+hgetall+hgetall+xrevrange"]
        assert places(recent.entries) == [("0", n) for n in range(401, 600)]
        trips.clear()
        everything = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert trips == ["get+get+hgetall+hgetall+xrevrange", "xrevrange"]  # a second page
        assert places(everything.entries) == [("0", n) for n in range(1, 600)]


async def test_an_entry_written_again_under_its_old_id_is_never_replayed_stale() -> None:
    async with redis_cache(max_events=100) as cache:
        await cache.append([entry("0", 0), entry("0", 1)])
        before = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        client = redis.Redis.from_url(cache.url)
        (stream_id, fields), *_ = client.xrevrange(cache.keys[0], count=1)
        client.delete(cache.keys[0])  # the stream written again, the same id, other data
        client.xadd(cache.keys[0], {**fields, b"d": b'{"n": "again"}'}, id=stream_id)
        client.close()
        after = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert before.entries[-1].message.data == {"n": 1, "p": "0"}
        assert after.entries[-1].message.data == {"n": "again"}


async def test_two_routers_appending_the_same_partition_append_each_event_once() -> None:
    prefix = new_prefix()
    async with redis_cache(prefix=prefix, max_events=100) as first:
        second = type(first)(first.url, key_prefix=prefix, source="kafka", max_events=100)
        await first.append([entry("0", 0), entry("1", 0), entry("0", 1)])
        await second.append([entry("1", 0), entry("0", 0), entry("0", 1), entry("1", 1)])
        await first.append([entry("1", 1), entry("0", 2)])
        await second.aclose()
        replay = await first.replay(parse_cursor("kafka@e1:5:0"), EVERYTHING)
        assert places(replay.entries) == [("0", 0), ("1", 0), ("0", 1), ("1", 1), ("0", 2)]
        assert (await first.window()).events == 5


async def test_eviction_is_remembered_so_a_resume_from_before_it_is_truncated() -> None:
    async with redis_cache(max_events=3) as cache:
        await cache.append([entry("0", n) for n in range(6)])
        assert (await cache.window()).events == 3
        behind = await cache.replay(parse_cursor("kafka@e1:0:1"), EVERYTHING)
        assert behind.truncated
        assert places(behind.entries) == [("0", 3), ("0", 4), ("0", 5)]
        just_in_time = await cache.replay(parse_cursor("kafka@e1:0:2"), EVERYTHING)
        assert not just_in_time.truncated
        assert places(just_in_time.entries) == [("0", 3), ("0", 4), ("0", 5)]


async def test_scripts_are_run_by_their_sha1_and_sent_whole_only_when_redis_lacks_them() -> None:
    """A steady append or forget sends only the script's SHA1 (``EVALSHA``); a Redis that does
    not hold the script (first use, a restart, ``SCRIPT FLUSH``) answers NOSCRIPT before running
    anything, and the script is then sent whole once, and runs once: no event lost or doubled."""
    with own_redis_server() as url:
        async with redis_cache(url=url, max_events=100) as cache:
            sent: list[str] = []
            call = cache._call

            async def recorded_call(method: str, *args: Any) -> Any:
                sent.append(method)
                return await call(method, *args)

            cache._call = recorded_call  # type: ignore[method-assign]
            await cache.append([entry("0", 0)])
            assert sent == ["evalsha", "eval"]  # a fresh server holds no script
            sent.clear()
            await cache.append([entry("0", 1), entry("1", 0)])
            await cache.forget(EventIdentity("kafka", "2", (0,), "e1"))
            assert sent == ["evalsha", "evalsha", "eval"]  # the forget script's first use
            sent.clear()
            redis.Redis.from_url(url).script_flush()  # as a restart would leave it
            await cache.append([entry("0", 2)])
            await cache.forget(EventIdentity("kafka", "2", (1,), "e1"))
            assert sent == ["evalsha", "eval", "evalsha", "eval"]
            sent.clear()
            await cache.append([entry("0", 3)])
            assert sent == ["evalsha"]
            replay = await cache.replay(parse_cursor("kafka@e1:0:0,1:0,2:1"), EVERYTHING)
            assert places(replay.entries) == [("0", 1), ("0", 2), ("0", 3)]  # each once
            assert not replay.truncated
            assert (await cache.window()).events == 5
            assert await cache.healthy()


async def test_a_new_epoch_wipes_the_old_history() -> None:
    async with redis_cache(max_events=10) as cache:
        await cache.append([entry("0", 0), entry("0", 1)])
        await cache.append([entry("0", 0, epoch="e2")])
        old = await cache.replay(parse_cursor("kafka@e1:0:0"), parse_cursor("kafka@e2:0:9"))
        assert old.truncated
        assert places(old.entries) == [("0", 0)]
        assert await cache.resume_point("e2") == {"0": (0,)}
        assert await cache.resume_point("e1") is None


async def test_the_resume_point_is_where_the_deployment_got_to() -> None:
    async with redis_cache(max_events=10) as cache:
        assert await cache.resume_point("e1") is None
        await cache.append([entry("0", 4), entry("2", 9)])
        assert await cache.resume_point("e1") == {"0": (4,), "2": (9,)}


async def test_while_redis_is_away_delivery_goes_on_and_resumes_say_truncated() -> None:
    with own_redis_server() as url:
        async with redis_cache(url=url, max_events=100, timeout_seconds=0.2) as cache:
            await cache.append([entry("0", 0)])
            assert await cache.healthy()
    # The server is gone (a new one comes up on the same port below).
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with redis_cache(url=url, max_events=100, timeout_seconds=0.2) as cache:
        await cache.append([entry("0", 1), entry("0", 2)])  # must not raise
        assert not await cache.healthy()
        replay = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert replay.truncated
        assert places(replay.entries) == [("0", 1), ("0", 2)]  # what is held in memory
        with own_redis_server(port):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.run)  # catches up without waiting for a new event
                with trio.fail_after(20):  # a hang guard: the retry backoff is capped at 5 s
                    await cache.health_changed.wait()
                nursery.cancel_scope.cancel()
            assert await cache.healthy()
            replay = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
            assert places(replay.entries) == [("0", 1), ("0", 2)]
            assert await cache.resume_point("e1") == {"0": (2,)}


async def test_the_router_rides_out_a_redis_outage_under_load() -> None:
    async with a_router_on_a_redis_of_its_own() as (server, router, cache):
        headers = auth("u1", novels=["n1", "n2", "n3"])
        novels = ["n1", "n2", "n3"]
        async with router.stream(headers) as first:
            await router.publish(*(content(novels[n % 3], n) for n in range(10)))
            await first.events_count(10)
            server.stop()
            await router.publish(*(content(novels[n % 3], n) for n in range(10, 20)))
            await first.events_count(20)  # live delivery goes on without Redis
            ready = (await router.client.get("/readyz")).json()
            assert ready["status"] == "degraded"
        cursor = first.events[9].last_event_id  # as if it had missed the last ten
        await router.publish(*(content(novels[n % 3], n) for n in range(20, 25)))
        await router.running.hub.adapter.wait_consumed(25)
        resume = {**headers, "Last-Event-ID": cursor}
        as_a_browser = {**resume, "Accept": "text/event-stream"}
        async with router.stream(as_a_browser) as during:
            await during.events_count(1)
        # The history is most likely still there: come back for it, rather than refetch.
        (refusal,) = during.data()
        assert refusal["code"] == "replay-unavailable"
        assert refusal["retryable"] is True
        assert during.events[0].retry == 2000
        assert "sse-replay" not in during.response.headers
        server.start()
        with trio.fail_after(20):  # a hang guard: the retry backoff is capped at 5 s
            while not await cache.healthy():
                await cache.health_changed.wait()
        async with router.stream(resume) as after:
            assert after.response.headers["sse-replay"] == "complete"
            await after.events_count(15)
        got = sorted(d["content_version"] for d in after.data())
        assert got == list(range(10, 25))  # exact again once Redis caught up


async def test_two_flushes_at_once_write_each_held_back_event_once() -> None:
    """The adapter's append and the background catch-up both write what waited while Redis was
    away. A paused Redis holds the first write in flight while the second is asked for, so the
    two meet every time."""
    server = RedisServer()
    server.start()
    control = redis.Redis.from_url(server.url)
    try:
        async with redis_cache(url=server.url, max_events=100, timeout_seconds=10) as cache:
            server.stop()
            await cache.append([entry("0", 0)])  # refused: held back in memory
            assert not await cache.healthy()
            server.start()
            control.client_pause(60_000, all=False)  # writes wait until the unpause below
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.run)  # writes once its retry delay is over
                await wait_for_writes_in_flight(control, 1)
                nursery.start_soon(cache.append, [entry("0", 1)])  # held: run() writes it next
                await trio.testing.wait_all_tasks_blocked()
                control.client_unpause()
                with trio.fail_after(20):  # a hang guard: both writes end once Redis answers
                    while not await cache.healthy() or (await cache.window()).events != 2:
                        await cache.health_changed.wait()
                nursery.cancel_scope.cancel()
            replay = await cache.replay(parse_cursor("kafka@e1:1:0"), EVERYTHING)
            assert places(replay.entries) == [("0", 0), ("0", 1)]  # each once, in order
            assert not replay.truncated
            assert await cache.resume_point("e1") == {"0": (1,)}
    finally:
        control.close()
        server.remove()


async def resume_and_check(
    router: RouterUnderTest, headers: dict[str, str], live: EventStream, index: int
) -> str:
    """Resume from the cursor ``live`` had after its event ``index`` and read through a flush
    marker: a complete resume is exactly the events ``live`` got after it, a truncated one says
    so first and repeats nothing. Returns the ``SSE-Replay`` answer."""
    expected = [d["content_version"] for d in live.data()[index + 1 :]]
    async with router.stream(
        {**headers, "Last-Event-ID": live.events[index].last_event_id}
    ) as resumed:
        await router.flush(resumed)
    assert resumed.response is not None
    answer = resumed.response.headers["sse-replay"]
    got = resumed.data()
    if answer == "truncated":
        assert got[0]["code"] == "history-truncated"  # said, never hidden
        rest = [d["content_version"] for d in got[1:]]
        assert len(rest) == len(set(rest))  # nothing twice
        assert set(rest) <= set(expected)  # nothing from before the cursor
    else:
        assert answer == "complete"
        assert sorted(d["content_version"] for d in got) == sorted(expected)
    return answer


async def test_the_router_survives_repeated_redis_restarts_while_events_flow() -> None:
    """Each restart loses Redis's data (the server keeps nothing on disk): live delivery goes
    on throughout, and every resume afterwards is exact or says it is truncated."""
    restarts, per_round, batch_size = 5, 40, 4
    total = restarts * per_round + per_round
    async with a_router_on_a_redis_of_its_own() as (server, router, cache):
        novels = ["n1", "n2", "n3"]
        headers = auth("u1", novels=novels)

        async def publish_all() -> None:
            for start in range(0, total, batch_size):
                await router.publish(
                    *(content(novels[n % 3], n) for n in range(start, start + batch_size))
                )

        async with router.stream(headers) as live, trio.open_nursery() as nursery:
            nursery.start_soon(publish_all)
            for restart in range(restarts):
                await live.events_count(restart * per_round + 10)
                server.stop()  # while events flow
                await live.events_count(restart * per_round + 25)  # delivered without Redis
                server.start()
            await live.events_count(total)
            with trio.fail_after(20):  # a hang guard: the retry backoff is capped at 5 s
                while not await cache.healthy():
                    await cache.health_changed.wait()
            got = [d["content_version"] for d in live.data()]
            assert sorted(got) == list(range(total))  # all of them, each once, live
            answers = [
                await resume_and_check(router, headers, live, index)
                for index in range(5, total, 15)
            ]
            assert "truncated" in answers  # history was lost: said so
            assert answers[-1] == "complete"  # and what was kept since is exact


async def test_a_cache_restarted_empty_answers_every_cursor_from_before_as_truncated() -> None:
    """The bus keeps nothing to read again here (memory), so a cursor whose missed events went
    with Redis's data can only be told its history is truncated, never served as complete."""
    async with a_router_on_a_redis_of_its_own() as (server, router, _cache):
        novels = ["n1", "n2", "n3"]
        headers = auth("u1", novels=novels)
        async with router.stream(headers) as away:
            await router.publish(*(content(novels[n % 3], n) for n in range(3)))
            await away.events_count(3)
        async with router.stream(headers) as live:
            await router.publish(*(content(novels[n % 3], n) for n in range(3, 9)))
            await live.events_count(6)  # in the cache; the client away misses them
            server.stop()
            server.start()  # empty: its data is lost
            await router.publish(*(content(novels[n % 3], n) for n in range(9, 12)))
            await live.events_count(9)
        await resumes_across_a_lost_history(
            router,
            headers,
            from_before=away.events[-1].last_event_id,
            from_after=live.events[-1].last_event_id,
            novel="n1",
            version=12,
        )


async def test_a_history_lost_in_redis_truncates_cursors_from_before_on_every_instance() -> None:
    """Redis loses the keys (here deleted, as a restart without persistence would): each
    instance records what it had written as lost before writing again, in every partition, not
    only those it writes next; a cursor from after it is exact again."""
    prefix = new_prefix()
    async with redis_cache(prefix=prefix, max_events=100) as first:
        second = type(first)(first.url, key_prefix=prefix, source="kafka", max_events=100)
        await first.append([entry("0", 0), entry("1", 0), entry("0", 1), entry("1", 1)])
        await second.append([entry("0", 0), entry("1", 0), entry("0", 1), entry("1", 1)])
        await second.append([entry("1", 2)])  # the second instance is a little ahead
        delete_prefix(first.url, prefix)
        lost = await first.replay(parse_cursor("kafka@e1:0:0,1:0"), EVERYTHING)
        assert lost.truncated
        await first.append([entry("0", 2)])
        behind = await first.replay(parse_cursor("kafka@e1:0:1,1:0"), EVERYTHING)
        assert behind.truncated  # partition 1's events after 0 are gone, though none came since
        assert places(behind.entries) == [("0", 2)]
        ahead = parse_cursor("kafka@e1:0:1,1:1")  # served 1:2 by the second instance: not here
        assert (await second.replay(ahead, EVERYTHING)).truncated
        await second.append([entry("0", 2)])
        assert (await first.replay(ahead, EVERYTHING)).truncated  # now recorded in Redis
        since = await first.replay(parse_cursor("kafka@e1:0:1,1:2"), EVERYTHING)
        assert not since.truncated
        assert places(since.entries) == [("0", 2)]
        await second.aclose()


async def test_records_the_bus_deleted_unread_truncate_a_resume_from_before_them() -> None:
    async with redis_cache(max_events=10) as cache:
        await cache.append([entry("0", n) for n in range(3)])
        await cache.forget(EventIdentity("kafka", "0", (6,), "e1"))  # offsets 3..6 were lost
        await cache.append([entry("0", 7)])
        up_to = Cursor.of(EventIdentity("kafka", "0", (7,), "e1"))
        from_before = await cache.replay(Cursor.of(EventIdentity("kafka", "0", (2,), "e1")), up_to)
        assert from_before.truncated
        assert places(from_before.entries) == [("0", 7)]
        past_them = Cursor.of(EventIdentity("kafka", "0", (6,), "e1"))
        assert not (await cache.replay(past_them, up_to)).truncated


async def test_an_event_holding_a_lone_surrogate_is_kept_and_takes_nothing_down(
    redis_bus_settings: dict[str, Any],
) -> None:
    """A producer writing to the bus itself can send JSON text "\\ud800", which reads as a
    lone surrogate: no UTF-8 form. The stream escapes it; the cache must keep it too (as JSON
    does, escaped), not fail its write and with it the adapter, and the router."""
    settings = {**redis_bus_settings, "cache": "redis"}
    stream = redis_bus_settings["redis_streams"][0]
    body = content("n1", 1, summary="\ud800")
    async with running_router(**settings) as router:
        await router.running.hub.reading.wait()
        async with router.stream() as live:
            client = redis.Redis.from_url(redis_bus_settings["redis_url"])
            client.xadd(stream, {"envelope": json.dumps(body).encode()})
            client.close()
            await router.publish(content("n1", 2))
            await live.events_count(2)
        before = live.raw.split(b"id: ", 1)[1].split(b"\n", 1)[0].decode()  # the id-only block
        resume = {**auth(novels=["n1"]), "Last-Event-ID": before}
        async with router.stream(resume) as resumed:
            await router.flush(resumed)
        assert router.running.hub.adapter.stats.failures == {}
    assert [d["content_version"] for d in live.data()] == [1, 2]
    assert live.data()[0]["summary"] == "\ud800"
    assert resumed.response is not None
    assert resumed.response.headers["sse-replay"] == "complete"
    replayed = [d for d in resumed.data() if "content_version" in d]
    assert [(d["content_version"], d.get("summary")) for d in replayed] == [
        (1, "\ud800"),
        (2, None),
    ]


class StepsWhileAppending(trio.abc.Instrument):
    """Counts how often a task that began an append while the cache was down was resumed
    before that append returned: each is a time live delivery waited on the cache."""

    def __init__(self) -> None:
        self.appending_while_down: set[trio.lowlevel.Task] = set()
        self.waits = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.appending_while_down:
            self.waits += 1


async def test_live_delivery_never_waits_on_a_redis_known_to_be_down() -> None:
    server = RedisServer()
    server.start()
    assert server.process is not None
    control = redis.Redis.from_url(server.url)
    prefix = new_prefix()
    instrument = StepsWhileAppending()
    try:
        async with running_router(
            cache="redis", redis_url=server.url, redis_key_prefix=prefix
        ) as router:
            cache = router.running.hub.cache
            assert isinstance(cache, RedisReplayCache)
            append = cache.append
            calls_while_down = 0

            async def watched_append(entries: Any) -> None:
                task = trio.lowlevel.current_task()
                if not cache.health.healthy:
                    instrument.appending_while_down.add(task)
                try:
                    await append(entries)
                finally:
                    instrument.appending_while_down.discard(task)

            call = cache._call

            async def counted_call(method: str, *args: Any) -> Any:
                nonlocal calls_while_down
                calls_while_down += not cache.health.healthy
                return await call(method, *args)

            cache.append = watched_append  # type: ignore[method-assign]
            cache._call = counted_call  # type: ignore[method-assign]
            trio.lowlevel.add_instrument(instrument)
            async with router.stream() as live:
                await router.publish(content("n1", 0))
                await live.events_count(1)
                server.process.send_signal(signal.SIGSTOP)  # calls now time out
                published = 1
                # Go on until the cache has retried a few times while down: with Redis still
                # unanswering, each retry takes the cache's whole timeout.
                with trio.fail_after(60):  # a hang guard
                    while calls_while_down < 3:
                        await router.publish(content("n1", published))
                        published += 1
                        await live.events_count(published)
                assert not cache.health.healthy
                assert instrument.waits == 0  # no step waited for the dead Redis
                trio.lowlevel.remove_instrument(instrument)
                server.process.send_signal(signal.SIGCONT)
                stream_key = cache.keys[0]
                with trio.fail_after(20):  # a hang guard: the retry backoff is capped at 5 s
                    while control.xlen(stream_key) < published or not cache.health.healthy:
                        await trio.sleep(0.05)
            stored = [json.loads(f[b"d"])["content_version"] for _, f in control.xrange(stream_key)]
            assert stored == list(range(published))  # each held event once, in order
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        control.close()
        delete_prefix(server.url, prefix)
        server.remove()


async def test_records_lost_in_one_epoch_do_not_truncate_a_resume_in_the_next() -> None:
    server = RedisServer()
    server.start()
    try:
        async with redis_cache(url=server.url, max_events=10, timeout_seconds=0.2) as cache:
            await cache.append([entry("0", n, epoch="eA") for n in range(3)])
            server.stop()
            # Offsets 3..6 of epoch A were deleted unread while Redis was away: noted in memory.
            await cache.forget(EventIdentity("kafka", "0", (6,), "eA"))
            assert not await cache.healthy()
            server.start()
            # The topic was recreated: epoch B starts again from offset 0.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.run)
                await cache.append([entry("0", n, epoch="eB") for n in range(4)])
                with trio.fail_after(20):  # a hang guard: the retry backoff is capped at 5 s
                    while not await cache.healthy() or (await cache.window()).events != 4:
                        await cache.health_changed.wait()
                nursery.cancel_scope.cancel()
            up_to = Cursor.of(EventIdentity("kafka", "0", (3,), "eB"))
            after = Cursor.of(EventIdentity("kafka", "0", (1,), "eB"))
            replay = await cache.replay(after, up_to)
            assert places(replay.entries) == [("0", 2), ("0", 3)]
            assert not replay.truncated  # epoch A's lost offsets say nothing of epoch B
    finally:
        server.remove()


UNREADABLE_ENTRIES: list[dict[str, str]] = [
    {"p": "0"},  # fields missing
    {"p": "0", "o": "x", "e": "content.updated", "d": "{}", "c": "", "s": '{"user_id": "u1"}'},
    {"p": "0", "o": "2", "e": "content.updated", "d": "{nope", "c": "", "s": '{"user_id": "u1"}'},
    {"p": "0", "o": "2", "e": "a\nid: forged", "d": "{}", "c": "", "s": '{"user_id": "u1"}'},
    {"p": "0", "o": "2", "e": "content.updated", "d": "[1]", "c": "", "s": '{"user_id": "u1"}'},
    {"p": "0", "o": "2", "e": "content.updated", "d": "{}", "c": "", "s": '{"tenant": "t"}'},
    {"p": "0", "o": "2", "e": "content.updated", "d": "[" * 100_000, "c": "", "s": "{}"},
]
"""Entries no router writes, as another writer (or another version) might leave them."""


async def test_an_entry_the_cache_cannot_read_back_is_skipped_and_the_replay_says_truncated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One unreadable entry must not fail every resume that reads across it (a 500, which an
    EventSource never retries): the rest is replayed, and the client is told it is incomplete."""
    async with redis_cache(max_events=100) as cache:
        await cache.append([entry("0", 0), entry("0", 1)])
        client = redis.Redis.from_url(cache.url)
        for fields in UNREADABLE_ENTRIES:
            client.xadd(cache.keys[0], fields)  # type: ignore[arg-type]
        client.close()
        await cache.append([entry("0", 3)])
        replay = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert places(replay.entries) == [("0", 1), ("0", 3)]
        assert replay.truncated
        assert cache.unreadable == len(UNREADABLE_ENTRIES)
        clean = await cache.replay(parse_cursor("kafka@e1:0:3"), EVERYTHING)
        assert not clean.truncated  # a resume past them reads none of them
    skipped = [r for r in caplog.records if r.getMessage() == "replay cache entry unreadable"]
    assert len(skipped) == len(UNREADABLE_ENTRIES)


async def test_entries_the_cache_cannot_read_back_are_trimmed_like_any_and_appends_go_on() -> None:
    async with redis_cache(max_events=3) as cache:
        await cache.append([entry("0", 0)])
        client = redis.Redis.from_url(cache.url)
        for fields in UNREADABLE_ENTRIES:
            client.xadd(cache.keys[0], fields)  # type: ignore[arg-type]
        client.close()
        await cache.append([entry("0", n) for n in range(1, 6)])  # trims past all of them
        assert cache.health.healthy
        assert (await cache.window()).events == 3
        replay = await cache.replay(parse_cursor("kafka@e1:0:0"), EVERYTHING)
        assert places(replay.entries) == [("0", 3), ("0", 4), ("0", 5)]
        assert replay.truncated  # 1 and 2 were trimmed: said, as for any eviction
        assert cache.unreadable == 0  # trimmed before any replay read them
