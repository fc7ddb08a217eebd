"""Accepting in bulk (router/http/accept.py): the queue emptied each turn, on the installed
hypercorn, and hypercorn's own loop, counted, when its parts are not in the shape known."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config

from router.config import Settings
from router.core.observer import AcceptFallback, NoObserver
from router.http import accept
from router.http.accept import DrainingListener, fallback_reason, serve_http
from router.server import hypercorn_config
from tests.e2e_helpers import SECRET


@contextmanager
def listening(backlog: int = 128) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def clients(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections the kernel has completed and queued, none accepted yet."""
    with ExitStack() as stack:
        connected = []
        for _ in range(count):
            client = stack.enter_context(socket.socket())
            client.connect(address)
            connected.append(client)
        yield connected


async def test_the_connections_queued_come_out_in_one_turn() -> None:
    with listening() as sock, clients(sock.getsockname(), 50) as connected:
        listener = DrainingListener(sock)
        first = await listener.accept()
        with trio.testing.assert_no_checkpoints():
            rest = [await listener.accept() for _ in range(49)]
        streams = [first, *rest]
        peers = {stream.socket.getpeername() for stream in streams}
        assert peers == {client.getsockname() for client in connected}
        assert listener.batched == 49
        assert not any(os.get_blocking(stream.socket.fileno()) for stream in streams)
        for stream in streams:
            await stream.aclose()
        await listener.aclose()


async def test_a_turn_takes_at_most_a_batch() -> None:
    with listening() as sock, clients(sock.getsockname(), 10):
        listener = DrainingListener(sock, batch=4)
        for _ in range(4):
            await (await listener.accept()).aclose()
        assert listener.batched == 3
        with trio.testing.assert_checkpoints():
            await (await listener.accept()).aclose()  # the next turn waits (checkpoints) again
        await listener.aclose()


async def test_closing_closes_the_connections_taken_but_not_handed_out() -> None:
    with listening() as sock, clients(sock.getsockname(), 3) as connected:
        listener = DrainingListener(sock)
        first = await listener.accept()
        await listener.aclose()
        await first.aclose()
        for client in connected:
            client.settimeout(5)
            assert client.recv(1) == b""  # the router's end is closed: end of stream


async def test_with_nothing_queued_it_waits_for_a_connection_and_is_cancellable() -> None:
    with listening() as sock:
        listener = DrainingListener(sock)
        with trio.move_on_after(0.05) as waited:
            await listener.accept()
        assert waited.cancelled_caught
        await listener.aclose()


def test_the_installed_hypercorn_is_served_by_the_draining_loop() -> None:
    config = hypercorn_config(Settings(port=0, jwt_secret=SECRET))
    try:
        assert fallback_reason(config) is None
    finally:
        for bind in config.bind:
            socket.socket(fileno=int(bind.removeprefix("fd://"))).close()


def test_tls_is_served_by_hypercorn_s_own_loop() -> None:
    config = Config()
    config.certfile, config.keyfile = "cert.pem", "key.pem"
    assert fallback_reason(config) is AcceptFallback.NOT_PLAIN_HTTP


class FallbackCounter(NoObserver):
    def __init__(self) -> None:
        self.fallbacks: list[AcceptFallback] = []

    def accept_fell_back(self, reason: AcceptFallback) -> None:
        self.fallbacks.append(reason)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers ``hello``, and goes through the lifespan as Quart does."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            phase = message["type"].removeprefix("lifespan.")
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("shape_known", [True, False])
async def test_both_loops_serve_and_only_the_fallback_is_counted(
    shape_known: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not shape_known:  # a hypercorn whose TCPServer takes other arguments
        monkeypatch.setitem(accept._KNOWN_PARAMETERS, "TCPServer", ["app", "stream"])
        monkeypatch.setattr(accept, "_fallbacks_logged", set())
    observer = FallbackCounter()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_http(
                hello,  # type: ignore[arg-type]
                config,
                shutdown_trigger=stop.wait,
                observer=observer,
                task_status=task_status,
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        answer = await trio.to_thread.run_sync(
            lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        )
        assert answer.text == "hello"
        stop.set()
    expected = [] if shape_known else [AcceptFallback.NOT_HYPERCORN]
    assert observer.fallbacks == expected
    logged = [r for r in caplog.records if "hypercorn's loop" in r.getMessage()]
    assert len(logged) == (0 if shape_known else 1)
