"""End to end: resume cursors at the edges (many partitions, past the bus's end, unknown
partitions, the length bound), through a real router and real HTTP clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import trio

from router.config import Settings
from router.core.cursor import MAX_CURSOR_LENGTH, MAX_OFFSET, Cursor, parse_cursor
from router.server import ConfigurationError, serve
from tests.conftest import RouterFactory
from tests.e2e_helpers import (
    SECRET,
    STREAM_PATH,
    RouterUnderTest,
    auth,
    content,
    progress,
    running_router,
)
from tests.kafka_broker import Broker, create_topic, delete_topic, new_topic_name
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix


def others(first: int, count: int) -> list[dict[str, Any]]:
    """Events of other users, spread over the partitions (a partition is a hash of the user)."""
    return [progress(f"user-{n}", "t", 1) for n in range(first, first + count)]


async def resumes_exactly(router: RouterUnderTest, spread: int) -> str:
    """A client of user u1 gets its event among ``spread`` others; away, it misses two of its
    own among more others; back with its cursor, it gets exactly those two. Returns the cursor."""
    headers = auth("u1")
    async with router.stream(headers) as first:
        await router.publish(*others(0, spread))
        # Routed before u1's event, whatever order the partitions are read in, so its cursor
        # names every partition they touched.
        await router.running.hub.adapter.wait_consumed(spread)
        await router.publish(progress("u1", "t", 10))
        await first.events_count(1)
        cursor = first.events[-1].last_event_id
    await router.publish(progress("u1", "t", 20), *others(spread, spread), progress("u1", "t", 30))
    await router.running.hub.adapter.wait_consumed(2 * spread + 3)
    async with router.stream({**headers, "Last-Event-ID": cursor}) as second:
        assert second.response is not None
        assert second.response.headers["sse-replay"] == "complete"
        await second.events_count(2)
        await router.publish(progress("u1", "t", 40))
        await second.events_count(3)
    assert [d["progress"] for d in second.data()] == [20, 30, 40]
    assert len(parse_cursor(cursor).positions) > 1
    return cursor


async def test_a_router_of_200_memory_partitions_routes_and_resumes_with_a_compact_cursor() -> None:
    async with running_router(memory_partitions=200) as router:
        cursor = await resumes_exactly(router, 900)
    assert ":~" in cursor  # the compact form: shorter than the text one
    assert len(parse_cursor(cursor).positions) > 150
    assert len(cursor) < 512


async def test_a_kafka_topic_of_128_partitions_routes_and_resumes(kafka_broker: Broker) -> None:
    topic = new_topic_name()
    await create_topic(kafka_broker.bootstrap, topic, 128)
    try:
        async with running_router(**kafka_broker.router_settings, kafka_topic=topic) as router:
            with trio.fail_after(20):
                await router.running.hub.reading.wait()
            cursor = await resumes_exactly(router, 600)
        assert ":~" in cursor
        assert len(parse_cursor(cursor).positions) > 100
    finally:
        await delete_topic(kafka_broker.bootstrap, topic)


@asynccontextmanager
async def redis_streams_named_long(streams: int, length: int) -> AsyncIterator[dict[str, Any]]:
    prefix = new_prefix()
    tail = prefix.rsplit(":", 1)[1]
    names = tuple(f"{tail}-{n}-".ljust(length, "s") for n in range(streams))
    assert {len(name) for name in names} == {length}
    try:
        yield {
            "bus": "redis",
            "redis_url": REDIS_URL,
            "redis_key_prefix": prefix,
            "redis_streams": names,
        }
    finally:
        delete_prefix(REDIS_URL, prefix)
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(*names)
        client.close()


async def test_a_redis_bus_of_7_streams_of_57_character_names_routes_and_resumes() -> None:
    async with redis_streams_named_long(7, 57) as settings, running_router(**settings) as router:
        with trio.fail_after(20):
            await router.running.hub.reading.wait()
        cursor = await resumes_exactly(router, 200)
    assert len(parse_cursor(cursor).positions) == 7
    assert len(cursor) > 512  # the bound it used to break


async def test_a_bus_too_wide_for_a_cursor_is_refused_at_start_with_a_clear_message() -> None:
    with pytest.raises(ConfigurationError) as refused, trio.fail_after(20):
        await serve(Settings(port=0, jwt_secret=SECRET, memory_partitions=2000))
    message = str(refused.value)
    assert "2000 partitions" in message
    assert f"more than the {MAX_CURSOR_LENGTH}" in message


# --- A cursor past the bus's end (issue 13, item 5) ---------------------------------------------


def _beyond(cursor: Cursor, how: str) -> str:
    def moved(offset: tuple[int, ...]) -> tuple[int, ...]:
        first = offset[0] + 1000 if how == "head+1000" else MAX_OFFSET
        return (first, *offset[1:])

    return str(
        Cursor(cursor.source, cursor.epoch, tuple((p, moved(o)) for p, o in cursor.positions))
    )


@pytest.mark.parametrize("how", ["head+1000", "2^63-1"])
async def test_a_cursor_past_the_bus_end_is_truncated_history_and_live_events_flow(
    router_on_each_bus: RouterFactory, how: str
) -> None:
    async with router_on_each_bus() as router:
        async with router.stream() as first:
            await router.publish(content("n1", 1))
            await first.events_count(1)
            real = parse_cursor(first.events[-1].last_event_id)
        headers = {**auth(novels=["n1"]), "Last-Event-ID": _beyond(real, how)}
        async with router.stream(headers) as resumed:
            assert resumed.response is not None
            assert resumed.response.headers["sse-replay"] == "truncated"
            await router.publish(content("n1", 2))
            await resumed.read_until(lambda s: any(d.get("content_version") == 2 for d in s.data()))
    data = resumed.data()
    assert data[0]["code"] == "history-truncated"
    assert [d["content_version"] for d in data[1:]] == [1, 2]  # retained again, then live
    last = parse_cursor(resumed.events[-1].last_event_id)
    ((partition, offset),) = last.positions
    assert offset < _offset_of(_beyond(real, how), partition)  # the bogus position is gone


def _offset_of(text: str, partition: str) -> tuple[int, ...]:
    offset = parse_cursor(text).position(partition)
    assert offset is not None
    return offset


# --- Unknown partitions and the length bound (issue 13, item 15) --------------------------------


def _unknown_partitions(head: str, size: int) -> str:
    """A well-formed cursor of ``head`` of exactly ``size`` bytes, of partitions no bus has."""
    text = head + ":" + ",".join(f"nope-{n:05}:{n}" for n in range(size // 14))
    text = text[: text.rfind(",", 0, size - 40)] + ","
    text += "z" * (size - len(text) - 2) + ":1"
    assert len(text) == size
    return text


@pytest.mark.parametrize("size", [500, MAX_CURSOR_LENGTH])
async def test_a_cursor_of_unknown_partitions_is_truncated_history_and_the_stream_goes_on(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Near the size bound (today's and the new one): not a failed session."""
    async with running_router(memory_partitions=3) as router:
        async with router.stream() as first:
            await router.publish(content("n1", 1), content("n2", 1), progress("u9", "t", 1))
            await first.events_count(1)
            real = parse_cursor(first.events[-1].last_event_id)
        assert real.epoch is not None
        forged = _unknown_partitions(f"memory@{real.epoch}", size)
        headers = {**auth(novels=["n1"]), "Last-Event-ID": forged}
        with caplog.at_level(logging.INFO):
            async with router.stream(headers) as resumed:
                assert resumed.response is not None
                assert resumed.response.status_code == 200
                assert resumed.response.headers["sse-replay"] == "truncated"
                await router.publish(content("n1", 2))
                await resumed.read_until(
                    lambda s: any(d.get("content_version") == 2 for d in s.data())
                )
    assert "session failed" not in caplog.text
    data = resumed.data()
    assert data[0]["code"] == "history-truncated"
    assert [d["content_version"] for d in data[1:]] == [1, 2]
    last = parse_cursor(resumed.events[-1].last_event_id)
    assert {p for p, _ in last.positions} <= {"0", "1", "2"}  # the forged positions are gone


async def test_a_last_event_id_over_the_bound_is_a_400_with_a_json_body() -> None:
    async with running_router() as router:
        too_long = _unknown_partitions("memory@e", MAX_CURSOR_LENGTH + 1)
        response = await router.client.get(
            STREAM_PATH, headers={**auth(), "Last-Event-ID": too_long}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["parameter"] == "Last-Event-ID"
    assert f"at most {MAX_CURSOR_LENGTH} bytes" in error["message"]


async def test_a_maximal_last_event_id_with_ordinary_headers_reaches_the_router() -> None:
    """hypercorn's own limit on a request head (16 KiB) would refuse it before the app: sent
    in two parts, so that the server holds an incomplete head of about 25 KiB."""
    async with running_router() as router:
        maximal = _unknown_partitions("memory@e", MAX_CURSOR_LENGTH)
        headers = {
            **auth(novels=["n1"]),
            "Last-Event-ID": maximal,
            "Cookie": "; ".join(f"c{n}={'v' * 90}" for n in range(80)),  # about 8 KiB
            "User-Agent": "Mozilla/5.0 " + "x" * 200,
        }
        head = f"GET {STREAM_PATH} HTTP/1.1\r\nHost: router\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as connection:
            await connection.send_all(head.encode())
            # Another request answered: the loop has long since read what the first one sent.
            assert (await router.client.get("/healthz")).status_code == 200
            await connection.send_all(b"\r\n")
            answer = b""
            with trio.fail_after(20):
                while b"\r\n\r\n" not in answer:
                    answer += await connection.receive_some()
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 200 ", answer[:300]
        assert b"sse-replay: truncated" in answer.lower()
        query = await router.client.get(
            STREAM_PATH,
            params={"last_event_id": maximal + "0"},
            headers={**auth(), "Last-Event-ID": ""},
        )
    assert query.status_code == 400
    assert query.json()["error"]["parameter"] == "last_event_id"
