"""At most ``--requests-in-flight`` requests in their request phase at once
(router/http/request_slots.py), and nothing waits on a slot that is never given back.

The bound itself is checked on :class:`~router.http.asgi.RequestLifecycle` with a fake app that
counts the requests inside it; the hand-backs (an event stream's headers out, a keep-alive
connection between requests, a head sent slowly, a WebSocket accepted) on a served router with
one or two slots, where a slot kept would hang the test (the ``fail_after`` guards only that).
Nothing here is timed.
"""

from __future__ import annotations

from typing import Any, cast

import trio
import trio.testing
from hypercorn.typing import ASGIReceiveEvent, ASGISendEvent, Scope

from router.http.asgi import RequestLifecycle
from router.http.publish import PUBLISH_PATH
from router.http.request_slots import RequestKind, RequestSlots, request_kind
from tests.e2e_helpers import HANG_GUARD_SECONDS, STREAM_PATH, running_router, token
from tests.test_websocket import connect, hello

LIMITS = {
    "max_streams_per_user": 1000,
    "max_streams_per_address": 1000,
    "connects_per_minute": 100_000,
}


def _scope(kind: str = "http", path: str = "/", method: str = "GET") -> Scope:
    scope: dict[str, Any] = {"type": kind, "path": path, "raw_path": path.encode()}
    scope.update(method=method, query_string=b"", headers=[], client=("127.0.0.1", 1))
    return cast(Scope, scope)


class CountingApp:
    """An ASGI app whose requests wait inside it until :attr:`release` is set, counting how many
    are inside at once; a WebSocket is accepted and then waits, outside its request phase."""

    def __init__(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.answered = 0
        self.release = trio.Event()
        self.waits_on: frozenset[str] | None = None
        """The paths whose requests wait for :attr:`release` (all but the probes' when None)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            self.answered += 1
            await self.release.wait()
            return
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.waits_on is None:
                waits = scope["path"] not in ("/healthz", "/metrics")
            else:
                waits = scope["path"] in self.waits_on
            if waits:
                await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.answered += 1
        finally:
            self.inside -= 1


async def _receive() -> ASGIReceiveEvent:
    await trio.sleep_forever()
    raise AssertionError


async def _send(message: ASGISendEvent) -> None:
    pass


async def test_at_most_the_bound_are_in_their_request_phase_and_the_rest_are_all_served() -> None:
    app, slots = CountingApp(), RequestSlots(3)
    lifecycle = RequestLifecycle(app, slots=slots)
    async with trio.open_nursery() as nursery:
        for _ in range(3 + 7):
            nursery.start_soon(lifecycle, _scope(), _receive, _send)
        await trio.testing.wait_all_tasks_blocked()
        assert (app.inside, slots.taken) == (3, 3)
        app.release.set()
    assert (app.most_inside, slots.most_taken, app.answered) == (3, 3, 10)
    assert slots.taken == 0


async def test_a_storm_of_streams_in_their_request_phase_does_not_hold_a_publish_back() -> None:
    # As in a deploy's replay storm: every stream slot held by a resume waiting for its replay
    # turn. With one pool the publish below waited behind them, and the live streams with it.
    app, slots = CountingApp(), RequestSlots(2)
    app.waits_on = frozenset({STREAM_PATH})
    lifecycle = RequestLifecycle(app, slots=slots)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(lifecycle, _scope(path=STREAM_PATH), _receive, _send)
        await trio.testing.wait_all_tasks_blocked()
        assert (app.inside, slots.taken_by(RequestKind.STREAM)) == (2, 2)
        with trio.fail_after(HANG_GUARD_SECONDS):  # guards a hang only
            await lifecycle(_scope(path=PUBLISH_PATH, method="POST"), _receive, _send)
            await lifecycle(_scope(path="/api/v1/control", method="POST"), _receive, _send)
        assert app.answered == 2  # both answered while five streams wait for their slots
        assert slots.taken_by(RequestKind.OTHER) == 0
        app.release.set()
    assert app.answered == 2 + 5


async def test_streams_and_the_rest_are_told_apart_by_route_and_transport() -> None:
    assert request_kind(_scope(path=STREAM_PATH)) is RequestKind.STREAM
    assert request_kind(_scope(kind="websocket", path="/api/v1/events/ws")) is RequestKind.STREAM
    assert request_kind(_scope(path=PUBLISH_PATH, method="POST")) is RequestKind.OTHER
    assert request_kind(_scope(path="/api/v1/connections")) is RequestKind.OTHER


async def test_probes_take_no_slot_and_answer_through_a_storm() -> None:
    app, slots = CountingApp(), RequestSlots(1)
    lifecycle = RequestLifecycle(app, slots=slots)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lifecycle, _scope(), _receive, _send)
        await trio.testing.wait_all_tasks_blocked()
        await lifecycle(_scope(path="/healthz"), _receive, _send)
        await lifecycle(_scope(path="/metrics"), _receive, _send)
        assert app.answered == 2  # the probe and the scrape, while the storm waits its turn
        app.release.set()


async def test_an_accepted_websocket_gives_its_slot_back() -> None:
    app, slots = CountingApp(), RequestSlots(1)
    lifecycle = RequestLifecycle(app, slots=slots)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lifecycle, _scope("websocket"), _receive, _send)
        await trio.testing.wait_all_tasks_blocked()
        assert (app.answered, slots.taken) == (3, 0)  # all open, none holding a slot
        app.release.set()


async def test_a_request_cancelled_while_waiting_holds_no_slot() -> None:
    app, slots = CountingApp(), RequestSlots(1)
    lifecycle = RequestLifecycle(app, slots=slots)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lifecycle, _scope(), _receive, _send)
        with trio.CancelScope() as waiting:
            waiting.cancel()
            await lifecycle(_scope(), _receive, _send)
        app.release.set()
    assert (slots.taken, app.answered) == (0, 1)


def _stream_request(sub: str) -> bytes:
    return (
        f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token(sub)}\r\n\r\n"
    ).encode()


async def _head(stream: trio.SocketStream) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some()
        assert chunk, "the router closed the connection"
        received += chunk
    return received


async def test_open_streams_hold_no_slot_so_more_streams_than_slots_all_open() -> None:
    async with running_router(requests_in_flight=2, **LIMITS) as router:
        port = int(router.url.rsplit(":", 1)[1])
        streams = []
        with trio.fail_after(HANG_GUARD_SECONDS):
            for index in range(12):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(_stream_request(f"slots-{index}"))
                streams.append(stream)
            for stream in streams:
                assert (await _head(stream)).startswith(b"HTTP/1.1 200")
        await trio.testing.wait_all_tasks_blocked()
        slots = router.running.request_slots
        assert slots.taken == 0
        assert 1 <= slots.most_taken <= 2
        for stream in streams:
            await stream.aclose()


async def test_a_keep_alive_connection_between_requests_and_a_slow_head_hold_no_slot() -> None:
    async with running_router(requests_in_flight=1, **LIMITS) as router:
        port = int(router.url.rsplit(":", 1)[1])
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with trio.fail_after(HANG_GUARD_SECONDS):
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await idle.send_all(request)
            assert (await _head(idle)).startswith(b"HTTP/1.1 200")
            slow = await trio.open_tcp_stream("127.0.0.1", port)
            await slow.send_all(b"GET / HTTP/1.1\r\nHost: 127")  # and no more for now
            for _ in range(3):  # the one slot serves others meanwhile, on other connections
                response = await router.client.get("/")
                assert response.status_code == 200
            await trio.testing.wait_all_tasks_blocked()  # the last request's app has returned
            assert router.running.request_slots.taken == 0
            await slow.send_all(b".0.0.1\r\n\r\n")
            assert (await _head(slow)).startswith(b"HTTP/1.1 200")
        for connection in (idle, slow):
            await connection.aclose()


async def test_open_websockets_hold_no_slot_so_more_sockets_than_slots_all_open() -> None:
    async with running_router(requests_in_flight=1, **LIMITS) as router:
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with connect(router) as first, connect(router) as second:
                for client in (first, second):
                    assert (await hello(client))["type"] == "hello"
                response = await router.client.get("/")
                assert response.status_code == 200
