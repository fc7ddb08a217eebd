"""An ASGI wrapper that makes a request's end final, for the session and for the connection.

1. Quart closes a streaming body when the response ends, but not when the request task is
   cancelled before the body was first iterated (a client that leaves while the headers are being
   sent). The ``finally`` here runs however the request ends, so no session outlives its client.

2. With QuartTrio on hypercorn's trio worker, a connection that must close after its response
   (``Connection: close``, HTTP/1.0) stayed open: sending the last body chunk makes hypercorn end
   the stream and deliver ``http.disconnect`` to the app, QuartTrio reacts by cancelling the very
   task that is still inside that ``send``, and hypercorn's close of the socket, which comes next
   in the same call, is cancelled with it (cf. pgjones/hypercorn#330). Shielding that one last
   ``send`` lets the close finish. It cannot block for long: hypercorn already shields its socket
   writes, and the last chunk of a body is at most one write.

3. A request with both ``Content-Length`` and ``Transfer-Encoding`` is refused here, before the
   app: h11 frames it by ``Transfer-Encoding`` and keeps the connection open, so a proxy in front
   that framed it by ``Content-Length`` (or the reverse) could smuggle a second request inside its
   body, and that request was answered. It gets ``400``, and the connection is closed after it,
   so nothing after it is read (RFC 9112, 6.1); see :func:`refuse_ambiguous_framing` for how.

4. A request whose query string or head is larger than the router serves is refused here, before
   the app parses it, with ``414`` or ``431`` and a JSON body (:mod:`router.core.request_bounds`).

5. A stream whose body cannot be written straight onto its socket falls back to hypercorn's send,
   at about half the broadcast throughput: each such stream is reported to the router's observer
   (``sse_direct_write_fallbacks_total``), and each reason is logged once per process.

6. An event stream outlives Quart's part of its request: once its headers are out, Quart's body
   ends and its last body message is held back, Quart's tasks, request and context objects are
   let go, and the response is held open here, in hypercorn's task, until the session ends it
   (:func:`_hold_stream`). That is plain ASGI, no reach into Quart: the app has sent a start and
   no end, and the end comes later from this wrapper.

7. A WebSocket is handed over the same way once its stream is open: Quart's handler returns, its
   close is dropped, and the conversation runs here on the raw ASGI ``receive`` and ``send``
   until the session ends (:mod:`router.http.ws_handover`). The client's messages never go to
   Quart, so none is lost at the hand-over.

8. At most ``--requests-in-flight`` requests are in their request phase at once (from their head
   read until a stream's headers are out, a WebSocket is accepted or refused, or any other
   response has ended), so a connect storm's peak memory is bounded
   (:mod:`router.http.request_slots`).
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)

from actors.session import CloseReason, Session
from router.core.observer import NO_OBSERVER, Observer, Transport, WriteFallback
from router.core.request_bounds import Oversized, oversized
from router.http.direct_body import ChunkedSocketWriter, direct_writer, fallback_reason
from router.http.errors import error_document
from router.http.request_slots import RequestSlots
from router.http.socket_backlog import SocketBacklog
from router.http.ws_handover import HANDED_OVER_KEY, MESSAGES_KEY, ClientMessages, in_context
from router.logs import warn_once

SESSION_KEY = "sse_router.session"
WRITER_KEY = "sse_router.writer"
SEND_KEY = "sse_router.send"
SERVER_SEND_KEY = "sse_router.server_send"
OBSERVER_KEY = "sse_router.observer"
AMBIGUOUS_FRAMING = "ambiguous-framing"
log = logging.getLogger(__name__)
_fallbacks_logged: set[WriteFallback] = set()
"""The fallback reasons logged so far in this process: each once, however many streams meet it."""


_WEBSOCKET_ANSWERS = frozenset(
    {"websocket.accept", "websocket.close", "websocket.http.response.start"}
)
"""What ends a WebSocket's handshake, and with it its request phase."""


def remember_session(scope: object, session: Session) -> None:
    cast(dict[str, Any], scope)[SESSION_KEY] = session


class ResponseBodyWriter:
    """A session's :class:`~actors.session.Output` that writes straight to the ASGI ``send``.

    Quart sends the status and headers, then iterates :meth:`body`; from that moment the session's
    chunks go to hypercorn with no channel, generator or framework loop in between (each of those
    cost a task switch per event and stream), and, on plain HTTP/1.1, straight onto the socket
    (:mod:`router.http.direct_body`). :meth:`body` ends at once: Quart's part of the request is
    over once the headers are out, and :class:`RequestLifecycle` holds the response open, in
    hypercorn's task for it, until the session closes its output (:attr:`ended`) or the client
    leaves.
    """

    __slots__ = (
        "_backlog",
        "_closed",
        "_direct",
        "_headers_sent",
        "_observer",
        "_send",
        "_server_send",
        "_wrote",
        "ended",
    )

    def __init__(self, scope: object) -> None:
        values = cast(dict[str, Any], scope)
        self._send: ASGISendCallable = values[SEND_KEY]
        self._server_send: object = values.get(SERVER_SEND_KEY)
        self._observer: Observer = values.get(OBSERVER_KEY, NO_OBSERVER)
        self._direct: ChunkedSocketWriter | None = None
        self._headers_sent = trio.Event()
        self._wrote = False
        """Whether the first write came (and the direct writer was looked for)."""
        self._backlog = SocketBacklog(self._observer, Transport.SSE)
        self._closed = False
        self.ended = trio.CancelScope()
        """Cancelled when the session closes its output: :class:`RequestLifecycle` then ends the
        response."""
        values[WRITER_KEY] = self

    @property
    def headers_sent(self) -> bool:
        return self._headers_sent.is_set()

    def unsent_bytes(self) -> int | None:
        """The bytes written that the socket has not sent yet (0 before the first write), or
        ``None`` when that cannot be told (:class:`~router.http.socket_backlog.SocketBacklog`)."""
        if self._direct is None and not self._wrote:
            return 0
        return self._backlog.read(self._direct)

    async def send(self, chunk: bytes, /) -> None:
        if self._closed:
            raise trio.BrokenResourceError("the response has ended")
        if self._direct is None and not self._wrote:
            await self._headers_sent.wait()
            self._direct = direct_writer(self._server_send)
            self._wrote = True
            if self._direct is None:
                self._fell_back()
        if self._direct is not None:
            await self._direct.send(chunk)
        else:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    def _fell_back(self) -> None:
        reason = fallback_reason(self._server_send)
        if reason is None:
            return  # a writer was there (the direct path was declined, as a test may)
        self._observer.body_fell_back(reason)
        warn_once(
            log,
            _fallbacks_logged,
            reason,
            "stream body written through the server's send, not straight to its socket",
        )

    def close(self) -> None:
        self._closed = True
        self.ended.cancel()

    async def body(self) -> AsyncIterator[bytes]:
        """The response body as Quart sees it: nothing. Its end is not the response's: the last
        body message Quart sends after it is held back (:class:`RequestLifecycle`)."""
        self._headers_sent.set()
        return
        yield b""  # an async generator that yields nothing


class RequestLifecycle:
    """The ASGI app hypercorn serves: the checks above (see the module's docstring), then the
    Quart app, then, for an event stream whose headers are out, the response held open without
    Quart (:meth:`_hold_stream`), and for a WebSocket handed over, the socket
    (:class:`~router.http.ws_handover.HandedOver`)."""

    def __init__(
        self,
        app: ASGIFramework,
        observer: Observer = NO_OBSERVER,
        slots: RequestSlots | None = None,
    ) -> None:
        self.app = app
        self.observer = observer
        self.slots = RequestSlots(None) if slots is None else slots

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" and framed_two_ways(scope["headers"]):
            await refuse_ambiguous_framing(scope, send)
            return
        if scope["type"] == "http":
            too_large = oversized(
                scope["method"], scope["raw_path"], scope["query_string"], scope["headers"]
            )
            if too_large is not None:
                await refuse_oversized(scope, send, too_large)
                return
        values = cast(dict[str, Any], scope)
        disconnected = False
        slot = self.slots.slot(scope)

        async def receive_watched() -> ASGIReceiveEvent:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def send_to_client(message: ASGISendEvent) -> None:
            if message["type"] == "websocket.close" and HANDED_OVER_KEY in values:
                return  # Quart's, once its handler handed the socket over: it stays open
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                writer = values.get(WRITER_KEY)
                if isinstance(writer, ResponseBodyWriter) and writer.headers_sent:
                    return  # an event stream's: sent by _hold_stream when the session ends
                # Bounded by the socket's TCP_USER_TIMEOUT, like hypercorn's own shielded writes.
                with trio.CancelScope(shield=True):
                    await send(message)
            elif message["type"] == "http.response.start" and WRITER_KEY in values:
                await _send_start_and_forget_its_headers(message, send)
                slot.give_back()  # the stream's request phase is over
            elif message["type"] == "websocket.accept" and arrival is not None:
                await in_context(arrival, send(message))  # see in_context: hypercorn's pinger
                slot.give_back()
            else:
                await send(message)
                if message["type"] in _WEBSOCKET_ANSWERS:
                    slot.give_back()

        values[SEND_KEY] = send_to_client
        values[SERVER_SEND_KEY] = send
        values[OBSERVER_KEY] = self.observer
        messages, arrival = None, None
        if scope["type"] == "websocket":
            messages = values[MESSAGES_KEY] = ClientMessages(receive)
            arrival = contextvars.copy_context()  # before Quart sets any of its own
        try:
            await slot.take()
            try:
                app_receive = receive_watched if messages is None else messages.for_quart
                await self.app(scope, app_receive, send_to_client)
            finally:
                slot.give_back()
            writer = values.pop(WRITER_KEY, None)
            if isinstance(writer, ResponseBodyWriter) and writer.headers_sent and not disconnected:
                await _hold_stream(writer, receive, send)
            handed_over = values.pop(HANDED_OVER_KEY, None)
            if handed_over is not None and messages is not None:
                messages.hold()  # Quart's reader is gone; a client gone is seen at once
                await handed_over.hold(messages, send_to_client)
        finally:
            session = values.pop(SESSION_KEY, None)
            if isinstance(session, Session):
                session.stop(CloseReason.CLIENT)


async def _send_start_and_forget_its_headers(
    message: ASGISendEvent, send: ASGISendCallable
) -> None:
    """Send an event stream's ``http.response.start``, then empty its header list.

    hypercorn keeps the start message as long as the response lasts, and reads only its status
    and trailers flag once the headers are written (the header list is for its access log, which
    the router turns off): about 1 KB per open stream. The message sent is a copy of our own,
    so if a server read it again, it would find no headers and the response would be unchanged
    on the wire (they went out already).
    """
    start = cast(dict[str, Any], dict(message))
    await send(cast(ASGISendEvent, start))
    start["headers"] = ()


async def _hold_stream(
    writer: ResponseBodyWriter, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    """Keep an event stream's response open once Quart is done with it, until its session closes
    its output (then end the body) or the client leaves (then return: the caller stops the
    session).

    Quart's two tasks for the request, its request and context objects and the response are gone
    by then: about 12 KB less per open stream (docs/performance.md, "Memory"), and one task, this
    one, hypercorn's own for the request, waits for the end. Cancelled (the server's root), it
    returns at once through the cancellation, without ending the body.
    """
    with writer.ended:
        while (await receive())["type"] != "http.disconnect":
            pass
        return  # the client left
    # Bounded by the socket's TCP_USER_TIMEOUT, like hypercorn's own shielded writes.
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def framed_two_ways(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request says both ``Content-Length`` and ``Transfer-Encoding``."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


async def refuse_oversized(scope: HTTPScope, send: ASGISendCallable, refusal: Oversized) -> None:
    """Answer ``refusal`` as a JSON error, without reading the request's body."""
    body = json.dumps(
        error_document(refusal.status, refusal.code, refusal.message), sort_keys=True
    ).encode()
    _log_refused(scope, refusal.status, refusal.code)
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _log_refused(scope: HTTPScope, status: int, code: str) -> None:
    client = scope.get("client")
    log.info(
        "request refused",
        extra={
            "method": scope["method"],
            "path": scope["path"][:256],  # never the query string: it may hold a token
            "status": status,
            "code": code,
            "parameter": None,
            "remote": client[0] if client else "unknown",
        },
    )


async def refuse_ambiguous_framing(scope: HTTPScope, send: ASGISendCallable) -> None:
    """Answer ``400`` and have the server close the connection after it.

    The body is sent whole, with its ``Content-Length``, but the response is not ended (no last
    body message): hypercorn, left with a response it cannot finish, closes the connection once
    the app returns, and never reads another request on it. ``Connection: close`` would say the
    same, but it makes h11 treat any further bytes from the client (the smuggled request, if it
    comes in a later segment) as an error, and hypercorn then closes the socket while the ``400``
    is still being written: the client got nothing in about 1 run of 4.
    """
    message = "a request must not have both Content-Length and Transfer-Encoding"
    body = json.dumps(error_document(400, AMBIGUOUS_FRAMING, message), sort_keys=True).encode()
    _log_refused(scope, 400, AMBIGUOUS_FRAMING)
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": True})
