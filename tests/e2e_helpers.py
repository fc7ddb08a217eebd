"""A router on a loopback port, real HTTP clients, and an event-stream reader for end-to-end tests.

Waiting is always for something to happen (bytes, a closed stream); the ``fail_after`` guards only
turn a hang into a failure, they never measure anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import trio

from router.auth import mint_token
from router.config import Settings
from router.http.admission import STREAM_PATH as STREAM_PATH  # the tests take it from here
from router.server import Running, serve
from tests.sse_http_client import StreamResponse, open_stream
from tests.sse_spec_parser import MARKER_PREFIX, ParsedEvent, ReceivedStream

SECRET = "end-to-end-tests-secret-0123456789abcdef"
HANG_GUARD_SECONDS = 20


def token(sub: str = "u1", **claims: Any) -> str:
    return mint_token(SECRET, sub=sub, **claims)


def auth(sub: str = "u1", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


def signed_token(claims_json: str) -> str:
    """A token signed with :data:`SECRET` over claims written as JSON text, so they can hold what
    json.dumps would not write: integers of any length, NaN, infinities, lone surrogates."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{b64(claims_json.encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


PUBLISHER = auth("backend", roles=["publisher"])


def envelope(
    event_type: str = "Content.Updated",
    scope: dict[str, Any] | None = None,
    **payload: Any,
) -> dict[str, Any]:
    if not payload:
        payload = {"novel_id": "n1", "content_version": 1}
    return {
        "event_type": event_type,
        "occurred_at": "2026-11-28T10:00:00Z",
        "scope": scope if scope is not None else {"novel_id": payload.get("novel_id", "n1")},
        "payload": payload,
    }


def content(
    novel_id: str = "n1", version: int = 1, *, user_id: str | None = None, summary: str = ""
) -> dict[str, Any]:
    scope = {"novel_id": novel_id, **({"user_id": user_id} if user_id else {})}
    payload: dict[str, Any] = {"novel_id": novel_id, "content_version": version}
    if summary:
        payload["summary"] = summary
    return envelope("Content.Updated", scope, **payload)


def progress(user_id: str, task_id: str, percent: float) -> dict[str, Any]:
    return envelope("Task.ProgressUpdated", {"user_id": user_id}, task_id=task_id, progress=percent)


@dataclass
class EventStream(ReceivedStream):
    """An open ``text/event-stream`` response, read like a browser would."""

    response: StreamResponse | None = None
    chunks: AsyncIterator[bytes] | None = None
    ended: bool = False

    async def read_until(self, done: Callable[[EventStream], bool]) -> None:
        with trio.fail_after(HANG_GUARD_SECONDS):
            while not done(self) and not self.ended:
                assert self.chunks is not None
                try:
                    self.raw += await anext(self.chunks)
                except StopAsyncIteration:
                    self.ended = True
                    return

    async def events_count(self, count: int) -> list[ParsedEvent]:
        await self.read_until(lambda s: len(s.events) >= count)
        return self.events

    async def to_the_end(self) -> None:
        await self.read_until(lambda s: False)

    async def read_through(self, marker: str) -> None:
        await self.read_until(lambda s: marker.encode() in s.raw)


@dataclass
class RouterUnderTest:
    running: Running
    client: httpx.AsyncClient
    shutdown: trio.Event
    """Set it to stop the router the way SIGTERM does."""
    stopped: trio.Event
    """Set when ``serve()`` has returned."""

    @property
    def url(self) -> str:
        return self.running.addresses[0]

    async def flush(self, *streams: EventStream) -> None:
        """Read ``streams`` through everything routed to them so far.

        A broadcast marker is published and each stream read until it arrives: a session writes
        in the order the adapter routed, so whatever was routed before the marker has been read.
        ``data()`` leaves the markers out.
        """
        marker = f"{MARKER_PREFIX}{secrets.token_hex(4)}"
        await self.publish(
            envelope(
                "System.NotificationSent",
                {"broadcast": True},
                level="info",
                title=marker,
                message="flush",
            )
        )
        for stream in streams:
            await stream.read_through(marker)

    async def fall_behind(self, headers: dict[str, str], missed: list[dict[str, Any]]) -> str:
        """A client that saw one event, then was away while ``missed`` were published and
        routed: its ``Last-Event-ID``."""
        async with self.stream(headers) as first:
            await self.publish(content("n1", 0))
            await first.events_count(1)
        await self.publish(*missed)
        await self.running.hub.adapter.wait_consumed(1 + len(missed))
        return first.events[0].last_event_id

    async def publish(self, *envelopes: dict[str, Any]) -> list[str]:
        body: Any = list(envelopes) if len(envelopes) != 1 else envelopes[0]
        response = await self.client.post("/api/v1/events", json=body, headers=PUBLISHER)
        assert response.status_code == 202, response.text
        ids: list[str] = response.json()["event_ids"]
        return ids

    @asynccontextmanager
    async def stream(
        self,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | list[tuple[str, str]] | None = None,
    ) -> AsyncIterator[EventStream]:
        async with (
            open_stream(
                self.url,
                STREAM_PATH,
                headers=auth(novels=["n1"]) if headers is None else headers,
                params=params,
            ) as response,
            aclosing(response.chunks()) as chunks,
        ):
            stream = EventStream(response=response, chunks=chunks)
            if response.status_code == 200:
                await stream.read_until(lambda s: b"\n\n" in s.raw)  # the retry hint
            yield stream


@asynccontextmanager
async def running_router(**overrides: Any) -> AsyncIterator[RouterUnderTest]:
    settings = Settings(port=0, jwt_secret=SECRET, **overrides)
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[Running]) -> None:
        try:
            await serve(settings, shutdown_requested=shutdown, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(run)
        async with httpx.AsyncClient(base_url=running.addresses[0], timeout=30) as client:
            yield RouterUnderTest(running, client, shutdown, stopped)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def slow_reader_stream(
    router: RouterUnderTest, novels: list[str]
) -> AsyncIterator[tuple[trio.socket.SocketType, h11.Connection]]:
    """A stream of ``novels`` over a raw socket with a 4 KiB receive window, read up to its
    first bytes (the retry hint) and then left for the test to read, or not: a client whose
    socket fills after a few events."""
    host, port = router.url.removeprefix("http://").rsplit(":", 1)
    with trio.socket.socket() as client:
        client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await client.connect((host, int(port)))
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=f"{STREAM_PATH}?token={token(novels=novels)}",
            headers=[("Host", "x")],
        )
        await client.send(connection.send(request) + connection.send(h11.EndOfMessage()))
        while not isinstance(connection.next_event(), h11.Data):  # up to the retry hint
            connection.receive_data(await client.recv(65536))
        yield client, connection
