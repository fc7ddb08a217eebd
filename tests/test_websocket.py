"""End to end: ``GET /api/v1/events/ws`` on a real router, driven by trio-websocket as the client.

Waiting is always for a frame or a close; the ``fail_after`` guards only turn a hang into a failure.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import Ping, Request
from wsproto.utilities import LocalProtocolError

from actors.session import CloseReason
from tests.e2e_helpers import (
    HANG_GUARD_SECONDS,
    RouterUnderTest,
    auth,
    content,
    envelope,
    progress,
    running_router,
    token,
)

WS_PATH = "/api/v1/events/ws"
Frame = dict[str, Any]


@dataclass
class Client:
    ws: WebSocketConnection
    frames: list[Frame] = field(default_factory=list)
    close: tuple[int, str] | None = None

    async def next(self) -> Frame:
        with trio.fail_after(HANG_GUARD_SECONDS):
            frame: Frame = json.loads(await self.ws.get_message())
        self.frames.append(frame)
        return frame

    async def until(self, done: Callable[[Frame], bool]) -> Frame:
        while not done(frame := await self.next()):
            pass
        return frame

    async def closed(self) -> tuple[int, str]:
        """Read every frame up to the close; its code and reason."""
        try:
            while True:
                await self.next()
        except ConnectionClosed as closed:
            reason = closed.reason
        assert reason is not None
        self.close = (reason.code, reason.reason or "")
        return self.close

    async def send(self, **message: Any) -> None:
        await self.ws.send_message(json.dumps(message))

    def events(self, name: str | None = None) -> list[Frame]:
        return [
            f for f in self.frames if f["type"] == "event" and (name is None or f["event"] == name)
        ]

    def contents(self) -> list[tuple[str, int]]:
        return [
            (e["data"]["novel_id"], e["data"]["content_version"])
            for e in self.events("content.updated")
        ]

    async def through(self, marker: str) -> None:
        await self.until(
            lambda f: f.get("event") == "system.notification-sent" and f["data"]["title"] == marker
        )


def ws_resource(params: dict[str, Any] | list[tuple[str, str]] | None) -> str:
    return WS_PATH + (f"?{urlencode(params, doseq=True)}" if params else "")


@asynccontextmanager
async def connect(
    router: RouterUnderTest,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | list[tuple[str, str]] | None = None,
    *,
    receive_buffer: int | None = None,
) -> AsyncIterator[Client]:
    """A trio-websocket client on a TCP stream of the test's own: trio-websocket does not close
    its socket when the server ends the connection (it waits for the server's TCP close, then
    leaves the socket open), so the test closes it. ``receive_buffer`` shrinks the kernel's
    buffer (``SO_RCVBUF``), for a reader that stalls."""
    headers = auth(novels=["n1"]) if headers is None else headers
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    host, port = router.url.removeprefix("http://").rsplit(":", 1)
    raw = trio.socket.socket()
    if receive_buffer is not None:
        raw.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
    await raw.connect((host, int(port)))
    try:
        async with trio.SocketStream(raw) as stream, trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, host, ws_resource(params), extra_headers=extra
            )
            try:
                yield Client(ws)
            finally:
                await ws.aclose()
                nursery.cancel_scope.cancel()
    except* LocalProtocolError:
        # trio-websocket's reader answers a ping that crosses its own close with a pong wsproto
        # refuses to send then; the client is closing anyway.
        pass


async def hello(client: Client) -> Frame:
    frame = await client.next()
    assert frame["type"] == "hello", frame
    return frame


async def flush(router: RouterUnderTest, *clients: Client) -> None:
    """Read ``clients`` through everything routed so far (a broadcast marker, like
    :meth:`RouterUnderTest.flush`)."""
    marker = f"marker-{secrets.token_hex(4)}"
    await router.publish(
        envelope(
            "System.NotificationSent",
            {"broadcast": True},
            level="info",
            title=marker,
            message="flush",
        )
    )
    for client in clients:
        await client.through(marker)


# -- delivery ------------------------------------------------------------------------------------


async def test_an_event_frame_carries_exactly_what_the_event_stream_carries() -> None:
    async with running_router() as router, router.stream() as stream, connect(router) as client:
        first = await hello(client)
        assert first["replay"] == "none"
        assert first["retry_ms"] == 2000
        assert first["version"] == "0.1.0"
        assert first["id"] is not None
        assert first["connection_id"]
        (event_id,) = await router.publish(content("n1", 7))
        (sse,) = await stream.events_count(1)
        frame = await client.next()
    assert frame == {
        "type": "event",
        "event": sse.event,
        "id": sse.last_event_id,
        "data": json.loads(sse.data),
    }
    assert frame["data"]["event_id"] == event_id


async def test_each_client_gets_only_what_its_token_grants() -> None:
    async with (
        running_router() as router,
        connect(router, auth("u1", novels=["n1"])) as one,
        connect(router, auth("u2", novels=["n2"])) as two,
    ):
        await hello(one), await hello(two)
        await router.publish(content("n1", 1), content("n2", 2), progress("u1", "t1", 50))
        await flush(router, one, two)
    assert one.contents() == [("n1", 1)]
    assert [e["event"] for e in one.events()][:2] == ["content.updated", "task.progress-updated"]
    assert two.contents() == [("n2", 2)]
    assert [e["event"] for e in two.events()] == ["content.updated", "system.notification-sent"]


async def test_the_token_may_come_from_the_query_the_cookie_or_a_first_auth_message() -> None:
    async with running_router() as router:
        async with connect(router, {}, {"token": token(novels=["n1"])}) as by_query:
            await hello(by_query)
        async with connect(router, {"Cookie": f"access_token={token()}"}) as by_cookie:
            await hello(by_cookie)
        async with connect(router, {}) as by_message:
            await by_message.send(type="auth", token=token(novels=["n1"]))
            await hello(by_message)
            await router.publish(content("n1", 3))
            await by_message.until(lambda f: f["type"] == "event")
        assert by_message.contents() == [("n1", 3)]


async def test_a_resume_while_publishing_has_no_gap_and_no_duplicate() -> None:
    total = 60
    async with running_router() as router:

        async def publish_all() -> None:
            for version in range(total):
                await router.publish(content("n1", version))
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            async with connect(router) as first:
                await hello(first)
                nursery.start_soon(publish_all)
                await first.until(lambda f: f.get("data", {}).get("content_version", -1) >= 10)
            cursor = first.events()[-1]["id"]
            async with connect(router, params={"last_event_id": cursor}) as second:
                assert (await hello(second))["replay"] == "complete"
                await second.until(lambda f: f.get("data", {}).get("content_version") == total - 1)
    seen = [v for _, v in first.contents()] + [v for _, v in second.contents()]
    assert seen == list(range(total))


async def test_a_resume_older_than_the_window_says_truncated_in_hello_and_as_an_event() -> None:
    async with running_router(cache_max_events=3) as router:
        async with connect(router) as first:
            await hello(first)
            await router.publish(content("n1", 0))
            cursor = (await first.until(lambda f: f["type"] == "event"))["id"]
        await router.publish(*(content("n1", n) for n in range(1, 6)))
        await router.running.hub.adapter.wait_consumed(6)
        async with connect(router, params={"last_event_id": cursor}) as resumed:
            assert (await hello(resumed))["replay"] == "truncated"
            await resumed.until(lambda f: f.get("data", {}).get("content_version") == 5)
    (truncated,) = resumed.events("sse.error")
    assert truncated["data"]["code"] == "history-truncated"
    assert [v for _, v in resumed.contents()] == [3, 4, 5]


# -- client messages -----------------------------------------------------------------------------


async def test_refresh_moves_the_expiry_and_a_narrowed_token_stops_a_novel_at_once() -> None:
    headers = auth(novels=["n1", "n2"], ttl_seconds=600)
    async with running_router() as router, connect(router, headers) as client:
        first = await hello(client)
        narrowed = token(novels=["n2"], ttl_seconds=7200)
        await client.send(type="refresh", token=narrowed, ref="r1")
        answer = await client.until(lambda f: f["type"] != "cursor")
        assert (answer["type"], answer["ref"]) == ("refreshed", "r1"), client.frames
        assert answer["expires_at"] > first["expires_at"] + 6000
        (session,) = router.running.hub.registry
        assert int(session.expires_at) == answer["expires_at"]
        await router.publish(content("n1", 1), content("n2", 2))
        await flush(router, client)
    assert client.contents() == [("n2", 2)]


async def test_a_filter_change_while_publishing_has_no_gap_and_no_duplicate() -> None:
    """The client follows n1, then n1 and n2 while both are published: every n1 once, and n2
    from some event on, each of them once, every later one included."""
    total = 80
    headers = auth(novels=["n1", "n2"])
    async with running_router() as router, connect(router, headers, {"novel_id": "n1"}) as client:
        await hello(client)

        async def publish_all() -> None:
            for version in range(total):
                await router.publish(content("n1" if version % 2 else "n2", version))
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_all)
            await client.until(lambda f: f.get("data", {}).get("content_version", -1) >= 21)
            await client.send(type="filter", novel_id=["n1", "n2"], ref=7)
            answer = await client.until(lambda f: f["type"] == "filtered")
            assert answer == {
                "type": "filtered",
                "ref": 7,
                "filter": {"novel_id": ["n1", "n2"], "session_id": None, "types": []},
            }
        await flush(router, client)
    versions = [v for _, v in client.contents()]
    assert len(versions) == len(set(versions))
    assert [v for v in versions if v % 2] == list(range(1, total, 2))
    n2 = [v for v in versions if v % 2 == 0]
    assert n2
    assert n2 == list(range(n2[0], total, 2))
    assert n2[0] <= answer_position(client)


def answer_position(client: Client) -> int:
    """The last version published before the ``filtered`` answer: every n2 after it is owed."""
    index = next(i for i, f in enumerate(client.frames) if f["type"] == "filtered")
    before = [
        f["data"]["content_version"]
        for f in client.frames[:index]
        if f.get("event") == "content.updated"
    ]
    return max(before) + 1


async def test_a_filter_beyond_the_grants_or_malformed_is_answered_and_the_stream_goes_on() -> None:
    async with running_router() as router, connect(router) as client:
        await hello(client)
        await client.send(type="filter", novel_id=["n9"], ref=1)
        await client.send(type="filter", types=["no.such-event"], ref=2)
        await client.send(type="filter", novel_id="n1", ref=3)
        await client.send(type="hello", ref=4)
        await client.send(type="refresh", ref=5)
        await client.send(type="auth", token=token(), ref=6)
        await client.ws.send_message("{not json")
        await client.ws.send_message(b"\x00binary")
        await client.ws.send_message("[1, 2]")
        errors = [await client.until(lambda f: f["type"] == "error") for _ in range(9)]
        await router.publish(content("n1", 5))
        await client.until(lambda f: f["type"] == "event")
    assert [(e["ref"], e["code"]) for e in errors] == [
        (1, "forbidden"),
        (2, "bad-request"),
        (3, "bad-message"),
        (4, "unknown-type"),
        (5, "bad-message"),
        (6, "bad-message"),
        (None, "bad-json"),
        (None, "bad-message"),
        (None, "bad-message"),
    ]
    assert client.contents() == [("n1", 5)]


# -- heartbeats ----------------------------------------------------------------------------------


async def test_heartbeats_are_pings_and_the_client_s_own_pings_are_answered() -> None:
    """hypercorn pings every --heartbeat-seconds (read here with wsproto itself: trio-websocket
    answers pings without showing them) and answers a client's ping."""
    async with running_router(heartbeat_seconds=0.05) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            protocol = WSConnection(ConnectionType.CLIENT)
            target = f"{WS_PATH}?token={token(novels=['n1'])}"
            await stream.send_all(protocol.send(Request(host=host, target=target)))
            pings = 0
            with trio.fail_after(HANG_GUARD_SECONDS):
                while pings < 3:
                    protocol.receive_data(await stream.receive_some())
                    for event in protocol.events():
                        if isinstance(event, Ping):
                            pings += 1
                            await stream.send_all(protocol.send(event.response()))
        async with connect(router) as client:
            await hello(client)
            with trio.fail_after(HANG_GUARD_SECONDS):
                await client.ws.ping(b"are you there")  # returns when the pong came


# -- close codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params", "close", "code"),
    [
        (None, {"novel_id": "n1", "colour": "red"}, 4000, "bad-request"),
        (None, {"last_event_id": "not-a-cursor"}, 4000, "bad-request"),
        ({"Authorization": "Bearer not-a-token"}, None, 4001, "malformed"),
        ({"Authorization": f"Bearer {token(ttl_seconds=-10)}"}, None, 4001, "expired"),
        (None, {"novel_id": "n9"}, 4003, "forbidden"),
    ],
)
async def test_a_refused_socket_hears_why_then_its_close_code(
    headers: dict[str, str] | None, params: dict[str, str] | None, close: int, code: str
) -> None:
    async with running_router() as router, connect(router, headers, params) as client:
        assert await client.closed() == (close, code)
    (error,) = client.frames
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    assert "retry_ms" not in error


async def test_no_token_and_no_auth_message_in_time_closes_as_unauthorized() -> None:
    async with running_router(ws_auth_timeout_seconds=0.2) as router:
        async with connect(router, {}) as silent:
            assert await silent.closed() == (4001, "missing")
        async with connect(router, {}) as wrong_first:
            await wrong_first.send(type="filter", novel_id=[])
            assert await wrong_first.closed() == (4001, "missing")


async def test_too_many_streams_and_shutting_down_close_with_a_retry() -> None:
    async with running_router(max_streams_per_user=1) as router, connect(router) as first:
        await hello(first)
        async with connect(router) as second:
            assert await second.closed() == (4029, "too-many-streams")
        assert second.frames[0]["retry_ms"] > 0
        router.running.hub.closing = True
        async with connect(router, auth("u2")) as third:
            assert await third.closed() == (4503, "shutting-down")
        assert third.frames[0]["retry_ms"] > 0


async def test_a_message_too_large_closes_the_socket_before_it_is_read() -> None:
    async with running_router() as router, connect(router) as client:
        await hello(client)
        await client.ws.send_message("x" * (64 * 1024 + 1))
        assert (await client.closed())[0] == 1009


async def test_a_flood_of_client_messages_closes_as_rate_limited() -> None:
    async with running_router(ws_messages_per_second=0.1) as router, connect(router) as client:
        await hello(client)
        for n in range(12):
            await client.send(type="ping", ref=n)
        assert await client.closed() == (4029, "rate-limited")
    errors = [f for f in client.frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["unknown-type"] * 10 + ["rate-limited"]


async def test_a_refresh_with_a_bad_or_foreign_token_closes_the_socket() -> None:
    async with running_router() as router:
        async with connect(router) as client:
            await hello(client)
            await client.send(type="refresh", token="not-a-token", ref=1)
            assert await client.closed() == (4001, "malformed")
        async with connect(router) as client:
            await hello(client)
            await client.send(type="refresh", token=token("someone-else"), ref=2)
            assert await client.closed() == (4003, "forbidden")
        assert client.frames[-1]["code"] == "forbidden"


async def test_an_expiring_token_ends_the_socket_with_token_expired() -> None:
    async with running_router() as router:
        # Made once the router stands: a busy machine may take longer than the token's life
        # to start one.
        headers = auth(novels=["n1"], ttl_seconds=2)
        async with connect(router, headers) as client:
            await hello(client)
            assert await client.closed() == (4002, "token-expired")
    assert client.events("sse.error")[-1]["data"]["code"] == "token-expired"


async def test_shutdown_says_server_shutdown_then_closes_going_away() -> None:
    async with running_router() as router, connect(router) as client:
        await hello(client)
        router.shutdown.set()
        assert await client.closed() == (1001, "server-shutdown")
    (goodbye,) = client.events("sse.error")
    assert goodbye["data"]["code"] == "server-shutdown"
    assert goodbye["data"]["retryable"]
    assert 1000 <= goodbye["retry"] <= 1000 + 5000  # --shutdown-retry-spread-ms


async def test_a_reader_that_stalls_is_cut_as_lagged_while_others_keep_receiving() -> None:
    async with (
        running_router(session_buffer=16) as router,
        connect(router, receive_buffer=4096) as stalled,
    ):
        await hello(stalled)  # from now on nobody reads it
        (stalled_session,) = router.running.hub.registry
        async with connect(router) as reader:
            await hello(reader)
            batch = [content("n1", n, summary="x" * 2000) for n in range(8)]
            sent = 0
            while stalled_session.close_reason is None:
                await router.publish(*batch)
                sent += len(batch)
                while len(reader.contents()) < sent:
                    await reader.next()
        assert [v for _, v in reader.contents()] == list(range(8)) * (sent // 8)
        assert await stalled.closed() == (4004, "lagged")
    assert stalled_session.close_reason is CloseReason.LAGGED
    assert stalled.events("sse.error")[-1]["data"]["code"] == "lagged"
