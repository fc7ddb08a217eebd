"""A WebSocket after Quart has handed it over (router/http/ws_handover.py), on a real router.

The client here is wsproto on a raw socket, so that its first messages can be written the moment
the handshake is answered, in one write: they reach the router while it is still in its request
phase (admitting the socket, opening its stream), and are answered after the hand-over. (Sent
with the handshake itself, before its answer, hypercorn's h11 refuses them.)
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from actors.session import CloseReason
from router.http.ws_handover import PENDING_MESSAGES, ClientMessages, in_context
from tests.e2e_helpers import HANG_GUARD_SECONDS, RouterUnderTest, content, running_router, token

WS_PATH = "/api/v1/events/ws"


class RawClient:
    def __init__(self, stream: trio.SocketStream, protocol: WSConnection) -> None:
        self.stream, self.protocol = stream, protocol
        self.frames: list[dict[str, Any]] = []
        self.close: CloseConnection | None = None

    async def next(self) -> dict[str, Any]:
        with trio.fail_after(HANG_GUARD_SECONDS):  # a hang guard, never a measurement
            while not self.frames:
                data = await self.stream.receive_some(65536)
                assert data, "the router closed the connection"
                self.protocol.receive_data(data)
                for event in self.protocol.events():
                    if isinstance(event, TextMessage):
                        self.frames.append(json.loads(event.data))
                    elif isinstance(event, CloseConnection):
                        self.close = event
                        return {"type": "closed", "code": event.code}
        return self.frames.pop(0)


@asynccontextmanager
async def raw_socket(
    router: RouterUnderTest, query: str, messages: list[dict[str, Any]]
) -> AsyncIterator[RawClient]:
    """A WebSocket whose ``messages`` go in one write as soon as its handshake is answered."""
    host, port = router.url.removeprefix("http://").rsplit(":", 1)
    protocol = WSConnection(ConnectionType.CLIENT)
    handshake = protocol.send(Request(host=host, target=WS_PATH + query))
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(handshake)
        with trio.fail_after(HANG_GUARD_SECONDS):
            accepted = False
            while not accepted:
                protocol.receive_data(await stream.receive_some(65536))
                accepted = any(isinstance(e, AcceptConnection) for e in protocol.events())
        if messages:
            frames = (protocol.send(TextMessage(json.dumps(m))) for m in messages)
            await stream.send_all(b"".join(frames))
        yield RawClient(stream, protocol)


@pytest.mark.parametrize("credentials", ["query", "auth-message"])
async def test_messages_sent_with_the_handshake_are_answered_after_the_hand_over(
    credentials: str,
) -> None:
    """The client's messages that reach the router before its stream is open wait for the
    conversation: none is lost to Quart's reader, which is let go at the hand-over."""
    first: list[dict[str, Any]] = []
    query = f"?token={token(novels=['n1'])}"
    if credentials == "auth-message":
        first, query = [{"type": "auth", "token": token(novels=["n1"])}], ""
    messages = [
        *first,
        {"type": "filter", "novel_id": ["n9"], "ref": 1},  # beyond the grants: answered
        {"type": "filter", "types": ["no.such-event"], "ref": 2},
        {"type": "ping", "ref": 3},
    ]
    async with running_router() as router, raw_socket(router, query, messages) as client:
        assert (await client.next())["type"] == "hello"
        answers = [await client.next() for _ in range(3)]
        await router.publish(content("n1", 7))
        event = await client.next()
    assert [(a["type"], a["ref"], a["code"]) for a in answers] == [
        ("error", 1, "forbidden"),
        ("error", 2, "bad-request"),
        ("error", 3, "unknown-type"),
    ]
    assert event["type"] == "event"
    assert event["data"]["content_version"] == 7


async def test_a_socket_handed_over_stays_open_and_its_client_leaving_stops_its_session() -> None:
    """Quart's own close, once its handler returned, is not sent: the socket is served on, and
    when its client goes, its session is stopped as the client's."""
    query = f"?token={token(novels=['n1'])}"
    async with running_router() as router:
        async with raw_socket(router, query, []) as client:
            assert (await client.next())["type"] == "hello"
            await router.publish(content("n1", 1))
            assert (await client.next())["type"] == "event"
            (session,) = router.running.hub.registry
        with trio.fail_after(HANG_GUARD_SECONDS):
            await session.finished.wait()
        assert client.close is None
    assert session.close_reason is CloseReason.CLIENT


async def test_a_client_s_close_frame_after_the_hand_over_is_answered_and_ends_its_session() -> (
    None
):
    query = f"?token={token(novels=['n1'])}"
    async with running_router() as router, raw_socket(router, query, []) as client:
        assert (await client.next())["type"] == "hello"
        (session,) = router.running.hub.registry
        await client.stream.send_all(client.protocol.send(CloseConnection(code=1000)))
        closed = await client.next()
        with trio.fail_after(HANG_GUARD_SECONDS):
            await session.finished.wait()
    assert closed == {"type": "closed", "code": 1000}
    assert session.close_reason is CloseReason.CLIENT


REQUEST_VARIABLE: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


async def test_a_task_started_in_context_copies_that_context_and_results_and_cancels_pass() -> None:
    """What keeps Quart's websocket context out of hypercorn's pinger (router/http/asgi.py)."""
    arrival = contextvars.copy_context()
    seen: list[str] = []

    async def start_a_task(nursery: trio.Nursery) -> int:
        await trio.lowlevel.checkpoint()
        nursery.start_soon(lambda: _record(seen))
        return 7

    async with trio.open_nursery() as nursery:
        REQUEST_VARIABLE.set("quart's")
        assert await in_context(arrival, start_a_task(nursery)) == 7
        assert REQUEST_VARIABLE.get() == "quart's"  # the caller's own is untouched
        with trio.CancelScope() as scope:
            scope.cancel()
            await in_context(arrival.copy(), trio.sleep_forever())
        assert scope.cancelled_caught
    assert seen == ["none"]


async def _record(seen: list[str]) -> None:
    seen.append(REQUEST_VARIABLE.get())


async def test_client_messages_are_kept_from_quart_bounded_in_order_and_then_read_directly() -> (
    None
):
    events, receive = trio.open_memory_channel[Any](100)
    messages = ClientMessages(receive.receive)
    got_by_quart: list[Any] = []

    async def quart_reader() -> None:
        while True:
            got_by_quart.append(await messages.for_quart())

    await events.send({"type": "websocket.connect"})
    for n in range(PENDING_MESSAGES + 3):
        await events.send({"type": "websocket.receive", "text": f"m{n}", "bytes": None})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(quart_reader)
        await trio.testing.wait_all_tasks_blocked()
        # Quart saw the connect only; ten kept, and the reader waits before reading more.
        assert got_by_quart == [{"type": "websocket.connect"}]
        assert receive.statistics().current_buffer_used == 3
        assert await messages.next() == "m0"
        await trio.testing.wait_all_tasks_blocked()
        assert receive.statistics().current_buffer_used == 2  # room for one more: read
        nursery.cancel_scope.cancel()  # the handler returned: quart-trio cancels its reader
    messages.hold()
    read = [await messages.next() for _ in range(PENDING_MESSAGES + 2)]
    assert read == [f"m{n}" for n in range(1, PENDING_MESSAGES + 3)]
    await events.send({"type": "websocket.receive", "text": None, "bytes": b"\x00"})
    await events.send({"type": "websocket.disconnect", "code": 1000})
    assert await messages.next() == b"\x00"
    assert await messages.next() is None
    assert messages.left
    assert got_by_quart == [{"type": "websocket.connect"}]
