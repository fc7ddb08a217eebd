"""A WebSocket's frames written straight onto its socket (router/http/direct_websocket.py): the
path taken on the hypercorn and wsproto that pyproject.toml admits, whole frames in order even for
a slow reader, under permessage-deflate and between hypercorn's own pings; the fallback to
``websocket.send`` works, counted and logged once; nothing is written once the socket closes."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, Ping, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

import router.http.websocket
from router.core.observer import WriteFallback
from router.http.direct_websocket import WebSocketSocketWriter, websocket_writer
from tests.e2e_helpers import HANG_GUARD_SECONDS, auth, content, running_router, token
from tests.test_metrics import scrape, value
from tests.test_websocket import WS_PATH, connect, hello

Found = WebSocketSocketWriter | WriteFallback


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[Found]:
    """What :func:`websocket_writer` found for each socket the router accepted."""
    found: list[Found] = []

    def recording(asgi_send: Any) -> Found:
        found.append(websocket_writer(asgi_send))
        return found[-1]

    monkeypatch.setattr(router.http.websocket, "websocket_writer", recording)
    return found


async def test_an_http11_websocket_is_written_straight_to_its_socket(writers: list[Found]) -> None:
    async with running_router() as served, connect(served) as client:
        await hello(client)
        await served.publish(*(content("n1", n) for n in range(5)))
        while len(client.contents()) < 5:
            await client.next()
        fallbacks = value(await scrape(served), "sse_direct_write_fallbacks_total")
    assert client.contents() == [("n1", n) for n in range(5)]
    assert len(writers) == 1
    assert isinstance(writers[0], WebSocketSocketWriter)
    assert fallbacks == 0


async def test_a_websocket_the_direct_writer_cannot_take_is_counted_logged_once_and_served(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(router.http.websocket, "_fallbacks_logged", set())
    monkeypatch.setattr(
        router.http.websocket, "websocket_writer", lambda _: WriteFallback.NOT_PLAIN_TCP
    )
    caplog.set_level(logging.WARNING, logger="router.http.websocket")
    async with (
        running_router() as served,
        connect(served, auth("u1", novels=["n1"])) as one,
        connect(served, auth("u2", novels=["n1"])) as two,
    ):
        await hello(one), await hello(two)
        await served.publish(content("n1", 1), content("n1", 2))
        for client in (one, two):
            while len(client.contents()) < 2:
                await client.next()
        samples = await scrape(served)
    assert one.contents() == two.contents() == [("n1", 1), ("n1", 2)]
    assert value(samples, "sse_direct_write_fallbacks_total", reason="not-plain-tcp") == 2
    logged = [r for r in caplog.records if "not straight to its socket" in r.getMessage()]
    assert [getattr(r, "reason", None) for r in logged] == ["not-plain-tcp"]


async def test_a_slow_reader_gets_every_frame_whole_and_in_order(writers: list[Found]) -> None:
    """More than the socket buffers hold: writes are cut short and finish under the send lock.
    The inbox holds all 2.4 MB (no byte bound): what is tested is the socket's writes."""
    async with (
        running_router(session_buffer=512, session_buffer_bytes=0) as served,
        connect(served, receive_buffer=4096) as client,
    ):
        await hello(client)
        (writer,) = writers
        assert isinstance(writer, WebSocketSocketWriter)
        big = [content("n1", n, summary="x" * 8000) for n in range(300)]
        for start in range(0, len(big), 50):
            await served.publish(*big[start : start + 50])
        await served.running.hub.adapter.wait_consumed(len(big))
        while len(client.contents()) < len(big):
            await client.next()
    assert writer.waits > 0
    assert client.contents() == [("n1", n) for n in range(len(big))]


async def test_under_permessage_deflate_and_between_pings_every_frame_reads_whole() -> None:
    """A browser offers permessage-deflate and hypercorn accepts it: the direct frames go
    uncompressed (RFC 7692 allows it), hypercorn's own messages compressed, pings between them,
    and wsproto, which refuses any broken frame, reads them all."""
    async with running_router(heartbeat_seconds=0.01) as served:
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            protocol = WSConnection(ConnectionType.CLIENT)
            target = f"{WS_PATH}?token={token(novels=['n1'])}"
            offer = Request(host=host, target=target, extensions=[PerMessageDeflate()])
            await stream.send_all(protocol.send(offer))
            frames: list[dict[str, Any]] = []
            accepted: list[AcceptConnection] = []
            pings = 0

            async def read_until(done: Any) -> None:
                nonlocal pings
                with trio.fail_after(HANG_GUARD_SECONDS):
                    while not done():
                        protocol.receive_data(await stream.receive_some())
                        for event in protocol.events():
                            if isinstance(event, AcceptConnection):
                                accepted.append(event)
                            elif isinstance(event, TextMessage):
                                frames.append(json.loads(event.data))
                            elif isinstance(event, Ping):
                                pings += 1
                                await stream.send_all(protocol.send(event.response()))

            def events() -> list[int]:
                return [f["data"]["content_version"] for f in frames if f["type"] == "event"]

            await read_until(lambda: any(f["type"] == "hello" for f in frames))
            await stream.send_all(protocol.send(TextMessage(data="{not json")))
            for round_ in range(10):
                await served.publish(*(content("n1", round_ * 20 + n) for n in range(20)))
                await trio.sleep(0.01)  # let hypercorn's pings fall between the batches
            await read_until(lambda: len(events()) == 200 and pings >= 3)
    (accept,) = accepted
    assert any(isinstance(e, PerMessageDeflate) for e in accept.extensions)
    assert [f["code"] for f in frames if f["type"] == "error"] == ["bad-json"]
    assert events() == list(range(200))


def closing_stream(connection_state: ConnectionState) -> WSStream:
    """As much of hypercorn's stream as the writer reads."""
    return cast(
        WSStream,
        SimpleNamespace(
            closed=False,
            state=ASGIWebsocketState.CONNECTED,
            connection=SimpleNamespace(state=connection_state),
        ),
    )


async def test_nothing_is_written_once_the_websocket_is_closing() -> None:
    """Not even a frame that waited for the send lock while hypercorn wrote its close."""
    left, right = trio.socket.socketpair()
    stream = closing_stream(ConnectionState.OPEN)
    lock = trio.Lock()
    writer = WebSocketSocketWriter(stream, trio.SocketStream(left), lock)
    await writer.write(b"first")
    assert await right.recv(100) == b"first"

    async def write_after_close() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await writer.write(b"after the close")

    async with trio.open_nursery() as nursery:
        await lock.acquire()  # hypercorn is writing its close
        nursery.start_soon(write_after_close)
        await trio.testing.wait_all_tasks_blocked()
        cast(Any, stream).connection.state = ConnectionState.LOCAL_CLOSING
        lock.release()
    with pytest.raises(trio.BrokenResourceError):
        await writer.write(b"later still")
    left.close()
    with right:
        assert await right.recv(100) == b""
