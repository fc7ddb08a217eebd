"""A WebSocket handed over from Quart to the ASGI wrapper once its stream is open, as an event
stream is (router/http/asgi.py, 6).

Quart does the request phase (the handshake, the front door, ``hub.open``); then its handler
leaves a :class:`HandedOver` in the scope and returns, so quart-trio's nursery, its reader task
and its channel, the ``Websocket`` and its context are let go, and the wrapper runs the rest of
the conversation on the raw ASGI ``receive`` and ``send``, in hypercorn's task for the socket.

The client's messages never go to Quart: :meth:`ClientMessages.for_quart` is the receive Quart is
given, and it keeps every ``websocket.receive`` for the router's handler (the ``auth`` message)
and, after the hand-over, its conversation; Quart sees the connect and the disconnect only (the
disconnect still cancels the handler in its request phase). So a message that arrives while the
handler is handing over is not in a channel of Quart's that is about to be dropped: it waits here,
and the conversation answers it. Plain ASGI, no reach into Quart's objects.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Awaitable, Generator
from typing import Any, Protocol, TypeVar, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable

T = TypeVar("T")
MESSAGES_KEY = "sse_router.client_messages"
HANDED_OVER_KEY = "sse_router.handed_over"
PENDING_MESSAGES = 10
"""The client's messages kept unread at most, as many as quart-trio's own channel held: then the
reading waits, and hypercorn's queue and the socket's buffers hold back the client."""


class HandedOver(Protocol):
    async def hold(self, messages: ClientMessages, send: ASGISendCallable) -> None:
        """Run the socket until it ends, closing it as it ended (not when the client left)."""


def hand_over(scope: object, socket: HandedOver) -> None:
    """Have the wrapper hold ``socket`` once the handler returns (Quart's close then dropped)."""
    cast(dict[str, Any], scope)[HANDED_OVER_KEY] = socket


def client_messages(scope: object) -> ClientMessages:
    """The messages of the socket ``scope`` is for (served through
    :class:`~router.http.asgi.RequestLifecycle`, which puts them there)."""
    found = cast(dict[str, Any], scope).get(MESSAGES_KEY)
    if not isinstance(found, ClientMessages):
        raise RuntimeError("a WebSocket served without router.http.asgi.RequestLifecycle")
    return found


class ClientMessages:
    """One WebSocket's messages from the client, read off the ASGI ``receive`` and kept for the
    router.

    Before the hand-over Quart's reader task pulls the events (:meth:`for_quart`) and the handler
    reads messages with :meth:`next`; after it (:meth:`hold`) :meth:`next` reads the receive
    itself. An event read is kept before the next checkpoint, so a cancelled reader loses none
    (hypercorn's receive, a trio channel's, gives nothing away when it is cancelled)."""

    __slots__ = ("_arrived", "_held", "_pending", "_receive", "_room", "left")

    def __init__(self, receive: ASGIReceiveCallable) -> None:
        self._receive = receive
        self._pending: list[str | bytes] = []
        self._arrived: trio.Event | None = None
        self._room: trio.Event | None = None
        self._held = False
        self.left = False
        """Whether the client has gone (``websocket.disconnect`` read)."""

    async def for_quart(self) -> ASGIReceiveEvent:
        """The receive Quart is given: the next event that is not a client's message; those are
        kept (waiting while :data:`PENDING_MESSAGES` are)."""
        while True:
            while len(self._pending) >= PENDING_MESSAGES:
                self._room = trio.Event()
                await self._room.wait()
            event = await self._receive()
            if event["type"] == "websocket.receive":
                self._keep(event)
                continue
            if event["type"] == "websocket.disconnect":
                self.left = True
                self._wake()
            return event

    async def next(self) -> str | bytes | None:
        """The client's next message, or ``None`` once it has left. Cancelled, it loses none."""
        while not self._pending:
            if self.left:
                return None
            if self._held:
                event = await self._receive()
                if event["type"] == "websocket.receive":
                    self._keep(event)
                elif event["type"] == "websocket.disconnect":
                    self.left = True
            else:
                self._arrived = trio.Event()
                await self._arrived.wait()
        message = self._pending.pop(0)
        if self._room is not None:
            self._room.set()
            self._room = None
        return message

    def hold(self) -> None:
        """Quart's reader is gone (its handler returned): :meth:`next` reads the receive."""
        self._held = True

    def _keep(self, event: ASGIReceiveEvent) -> None:
        values = cast(dict[str, Any], event)
        text = values.get("text")
        self._pending.append(text if text is not None else values.get("bytes") or b"")
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None


async def send_text(send: ASGISendCallable, text: str) -> None:
    """One text frame through the ASGI ``send``."""
    await send({"type": "websocket.send", "bytes": None, "text": text})


@types.coroutine
def in_context(context: contextvars.Context, awaitable: Awaitable[T]) -> Generator[Any, Any, T]:
    """Await ``awaitable`` with each of its steps run in ``context``, not the task's.

    A task trio starts copies its starter's context: hypercorn starts a socket's pinger in the
    ``websocket.accept`` it is sent, and sent from Quart's handler, the pinger would hold
    Quart's websocket context (the ``Websocket``, its headers) for the socket's life. Sent in
    the context the request came with, it holds nothing of Quart's. Whatever the task is sent
    or thrown (trio's outcomes, a cancellation) goes to ``awaitable`` unchanged; no checkpoint
    is added or removed."""
    steps = awaitable.__await__()
    value: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            if thrown is None:
                step = context.run(steps.send, value)
            else:
                step = context.run(steps.throw, thrown)
        except StopIteration as done:
            return cast(T, done.value)
        try:
            value, thrown = (yield step), None
        except BaseException as error:  # handed on, as trio would
            value, thrown = None, error
