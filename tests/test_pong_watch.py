"""A WebSocket peer that stops answering pings is closed 4008 (router/http/pong_watch.py).

The first tests run hypercorn's own ping loop and event handling (``WSStream._send_pings`` and
``WSStream.handle``) under trio's mock clock against a wsproto client, so they prove the hook on
the hypercorn installed: run them on each version ``pyproject.toml`` admits. The last ones serve
a real router to a raw wsproto client that never answers a ping and to trio-websocket, which
does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio
from hypercorn.config import Config
from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, Handshake, WSStream
from hypercorn.trio.worker_context import WorkerContext
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Ping, Request, TextMessage

import router.http.pong_watch
import router.http.websocket
from router.core.observer import PongWatchFallback
from router.http.pong_watch import PongWatch, watch_pongs
from tests.e2e_helpers import HANG_GUARD_SECONDS, RouterUnderTest, content, running_router, token
from tests.test_metrics import scrape, value
from tests.test_websocket import WS_PATH, connect, hello

HEARTBEAT, TIMEOUT = 15.0, 30.0
CLIENT_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def accepted_stream(outgoing: trio.MemorySendChannel[bytes]) -> WSStream:
    config = Config()
    config.websocket_ping_interval = HEARTBEAT

    async def send(event: object) -> None:
        if isinstance(event, Data):
            await outgoing.send(event.data)

    ws_stream = WSStream(None, config, WorkerContext(None), None, False, None, None, send, 1)  # type: ignore[arg-type]
    headers = [
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", CLIENT_KEY),
        (b"sec-websocket-version", b"13"),
    ]
    ws_stream.handshake = Handshake(headers, "1.1")
    _, _, ws_stream.connection = ws_stream.handshake.accept(None, [])
    ws_stream.state = ASGIWebsocketState.CONNECTED
    return ws_stream


class Silence:
    """The watch's ``on_silent``: when it was called, in seconds from :attr:`start`."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(trio.current_time() - self.start)


async def ping_for(seconds: float, answers: Callable[[int], bool], silence: Silence) -> int:
    """hypercorn's ping loop, for ``seconds``, on an accepted stream watched from its first
    ping; its client answers the n-th ping (from 1) when ``answers(n)``. How many pings came."""
    outgoing, incoming = trio.open_memory_channel[bytes](16)
    ws_stream = accepted_stream(outgoing)
    assert isinstance(watch_pongs(ws_stream.app_send, TIMEOUT, silence), PongWatch)
    client, pings = Connection(ConnectionType.CLIENT), 0

    async def read_and_answer() -> None:
        nonlocal pings
        async for data in incoming:
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, Ping):
                    pings += 1
                    if answers(pings):
                        pong = client.send(event.response())
                        await ws_stream.handle(Data(stream_id=1, data=pong))

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_and_answer)
            nursery.start_soon(ws_stream._send_pings)  # hypercorn's own loop
    return pings


async def test_hypercorn_s_pings_to_a_silent_peer_end_it_at_the_first_ping_past_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silence = Silence()
    pings = await ping_for(10 * HEARTBEAT - 1, lambda _: False, silence)
    # Pings at 0, 15 and 30 s: the one at 30 finds the first unanswered for 30 s; said once.
    assert silence.at == [TIMEOUT]
    assert pings == 10


async def test_a_peer_that_answers_every_ping_is_never_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silence = Silence()
    assert await ping_for(20 * HEARTBEAT - 1, lambda _: True, silence) == 20
    assert silence.at == []


async def test_a_peer_that_stops_answering_is_ended_the_timeout_after_the_first_ping_it_missed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silence = Silence()
    await ping_for(10 * HEARTBEAT - 1, lambda n: n <= 4, silence)
    # Answered the pings at 0, 15, 30 and 45 s; missed the one at 60; ended by the one at 90.
    assert silence.at == [4 * HEARTBEAT + TIMEOUT]


async def test_messages_and_the_client_s_own_pings_still_reach_hypercorn_through_the_watch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The watch only looks: hypercorn still hands the app the client's messages and answers
    its pings."""
    silence = Silence()
    outgoing, incoming = trio.open_memory_channel[bytes](16)
    ws_stream = accepted_stream(outgoing)
    received: list[object] = []

    async def app_put(message: object) -> None:
        received.append(message)

    ws_stream.app_put = app_put
    watch_pongs(ws_stream.app_send, TIMEOUT, silence)
    client = Connection(ConnectionType.CLIENT)
    await ws_stream.handle(Data(stream_id=1, data=client.send(TextMessage("hi"))))
    await ws_stream.handle(Data(stream_id=1, data=client.send(Ping(b"there?"))))
    client.receive_data(incoming.receive_nowait())
    assert [type(e).__name__ for e in client.events()] == ["Pong"]
    assert received == [{"type": "websocket.receive", "bytes": None, "text": "hi"}]


def test_anything_but_an_accepted_hypercorn_stream_is_left_unwatched() -> None:
    def nothing() -> None:
        pass

    assert watch_pongs(None, TIMEOUT, nothing) is PongWatchFallback.NOT_HYPERCORN
    assert watch_pongs(lambda _: None, TIMEOUT, nothing) is PongWatchFallback.NOT_HYPERCORN
    outgoing, _ = trio.open_memory_channel[bytes](1)
    ws_stream = accepted_stream(outgoing)
    ws_stream.state = ASGIWebsocketState.HANDSHAKE
    assert watch_pongs(ws_stream.app_send, TIMEOUT, nothing) is PongWatchFallback.NOT_WSPROTO
    ws_stream.state = ASGIWebsocketState.CONNECTED
    first = watch_pongs(ws_stream.app_send, TIMEOUT, nothing)
    assert isinstance(first, PongWatch)
    # Never twice on one connection; and removed, the connection has its own methods back.
    assert watch_pongs(ws_stream.app_send, TIMEOUT, nothing) is PongWatchFallback.NOT_WSPROTO
    first.remove()
    assert not vars(ws_stream.connection).keys() & {"events", "send"}


def test_a_wsproto_connection_without_an_instance_dict_is_left_unwatched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should wsproto's connection take ``__slots__``, its methods could not be shadowed: the
    socket is served unwatched rather than failing."""

    class Slotted:
        __slots__ = ("state",)

        def __init__(self) -> None:
            self.state = ConnectionState.OPEN

    monkeypatch.setattr(router.http.pong_watch, "Connection", Slotted)
    outgoing, _ = trio.open_memory_channel[bytes](1)
    ws_stream = accepted_stream(outgoing)
    ws_stream.connection = Slotted()  # type: ignore[assignment]
    found = watch_pongs(ws_stream.app_send, TIMEOUT, lambda: None)
    assert found is PongWatchFallback.NOT_WSPROTO


# -- a served router -----------------------------------------------------------------------------


@dataclass
class SilentClient:
    """A raw wsproto client that reads every frame and answers no ping."""

    pings: int = 0
    texts: list[str] = field(default_factory=list)

    async def until_closed(self, router: RouterUnderTest) -> CloseConnection:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            protocol = WSConnection(ConnectionType.CLIENT)
            target = f"{WS_PATH}?token={token(novels=['n1'])}"
            await stream.send_all(protocol.send(Request(host=f"{host}:{port}", target=target)))
            with trio.fail_after(HANG_GUARD_SECONDS):
                while data := await stream.receive_some():
                    protocol.receive_data(data)
                    for event in protocol.events():
                        if isinstance(event, Ping):
                            self.pings += 1
                        elif isinstance(event, TextMessage):
                            self.texts.append(event.data)
                        elif isinstance(event, CloseConnection):
                            return event
        raise AssertionError("the connection ended without a close frame")


async def test_a_client_that_answers_no_ping_is_closed_4008_and_one_that_does_stays_up() -> None:
    async with (
        running_router(heartbeat_seconds=0.05, ws_pong_timeout_seconds=0.2) as served,
        connect(served) as answering,
    ):
        await hello(answering)
        silent = SilentClient()
        close = await silent.until_closed(served)
        assert (close.code, close.reason) == (4008, "no-pong")
        # The close came after several pings (the timeout is four heartbeats): the client
        # that answers them, connected before, is still served.
        assert silent.pings >= 4
        assert '"type":"hello"' in silent.texts[0]
        await served.publish(content("n1", 1))
        while not answering.contents():
            await answering.next()
        samples = await scrape(served)
    assert answering.contents() == [("n1", 1)]
    assert (
        value(
            samples,
            "sse_connection_duration_seconds_count",
            reason="no-pong",
            transport="websocket",
        )
        == 1
    )
    assert value(samples, "sse_ws_pong_watch_fallbacks_total") == 0


async def test_a_socket_whose_pongs_cannot_be_watched_is_counted_logged_once_and_served(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(router.http.websocket, "_fallbacks_logged", set())
    monkeypatch.setattr(
        router.http.websocket, "watch_pongs", lambda *_: PongWatchFallback.NOT_HYPERCORN
    )
    caplog.set_level(logging.WARNING, logger="router.http.websocket")
    async with running_router() as served:
        for _ in range(2):
            async with connect(served) as client:
                await hello(client)
                await served.publish(content("n1", 1))
                while not client.contents():
                    await client.next()
        samples = await scrape(served)
    fallbacks = value(samples, "sse_ws_pong_watch_fallbacks_total", reason="not-hypercorn")
    assert fallbacks == 2
    logged = [r for r in caplog.records if "pongs not watched" in r.getMessage()]
    assert [getattr(r, "reason", None) for r in logged] == ["not-hypercorn"]
