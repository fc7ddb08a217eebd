"""``GET /api/v1/events/ws``: a client's event stream as WebSocket JSON frames (docs/websocket.md).

It only translates. The handshake's credentials, query and peer become an :class:`Ask` for the
same front door as the event stream; the admitted stream is the same session actor
(:meth:`Hub.open`) with the JSON wire format; the client's messages are a
:class:`~router.http.ws_conversation.Conversation`. The socket is always accepted (a browser
cannot read a refused handshake's status): a refusal is an ``error`` frame, then a close code.

Quart's handler does the request phase only: once the stream is open it hands the socket over
(:mod:`router.http.ws_handover`) and returns, so Quart's tasks and objects for it are let go, and
:meth:`OpenSocket.hold` runs the rest in hypercorn's task for the socket, on the raw ASGI
``receive`` and ``send``.

Who cancels whom: the session runs in the hub's sessions nursery and ends by itself (lagged, token
expired, server shutdown: its goodbye is its last frame), or is stopped here when the conversation
ends the connection or the client leaves (its ``websocket.disconnect``; in the request phase Quart
cancels the handler on it). :meth:`OpenSocket.hold` reads the conversation until the session
closes its output (which cancels that read: no task of its own watches for it), waits for the
session to finish, and closes with the code of how it ended (:mod:`router.core.ws_close`).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any, cast

import trio
from hypercorn.typing import ASGISendCallable
from quart import Quart, websocket

from actors.hub import Hub, ReplayUnavailableError
from actors.session import CloseReason, Session
from router import __version__
from router.admission import Admission, Ask
from router.core.admission import Credentials, Reason, Refused
from router.core.observer import (
    NO_OBSERVER,
    Observer,
    PongWatchFallback,
    Transport,
    WriteFallback,
)
from router.core.ws_client import Auth, parse_client_message
from router.core.ws_close import ending_close, refusal_close
from router.core.ws_frame import text_frames
from router.core.ws_wire import Frames, JSONFrames, access_changed, error
from router.http.asgi import OBSERVER_KEY, SEND_KEY, SERVER_SEND_KEY, remember_session
from router.http.direct_websocket import WebSocketSocketWriter, websocket_writer
from router.http.pong_watch import PongWatch, watch_pongs
from router.http.socket_backlog import SocketBacklog
from router.http.ws_conversation import Conversation, Verdict
from router.http.ws_handover import ClientMessages, client_messages, hand_over, send_text
from router.logs import warn_once

WS_PATH = "/api/v1/events/ws"
log = logging.getLogger(__name__)
_fallbacks_logged: set[WriteFallback | PongWatchFallback] = set()
"""The fallback reasons logged so far in this process: each once, however many sockets meet it."""


class WebSocketOutput:
    """A session's output onto the socket: ``send`` returns once the frames are on the socket, so
    a reader that does not drain holds back its own session only (whose inbox fills, and which
    is cut as lagged).

    On hypercorn's HTTP/1.1 the frames go straight onto the socket as one write
    (:mod:`router.http.direct_websocket`); on any other shape through the ASGI ``send``, frame
    by frame, counted and logged once per reason like the event stream's fallback. It holds no
    Quart object: it outlives Quart's part of the request."""

    __slots__ = ("_backlog", "_closed", "_direct", "_send", "ended")

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self._closed = False
        self._send: ASGISendCallable = scope[SEND_KEY]
        self.ended = trio.CancelScope()
        """Cancelled when the session closes its output: what the client's messages are read in,
        so the handler needs no task of its own to watch for the end."""
        observer: Observer = scope.get(OBSERVER_KEY, NO_OBSERVER)
        found = websocket_writer(scope.get(SERVER_SEND_KEY))
        self._direct = found if isinstance(found, WebSocketSocketWriter) else None
        if isinstance(found, WriteFallback):
            _fell_back(found, observer)
        self._backlog = SocketBacklog(observer, Transport.WEBSOCKET)

    def unsent_bytes(self) -> int | None:
        """The bytes written that the socket has not sent yet, or ``None`` when that cannot be
        told (:class:`~router.http.socket_backlog.SocketBacklog`)."""
        return self._backlog.read(self._direct)

    async def send(self, frames: Frames | tuple[str, ...], /) -> None:
        if self._closed:
            raise trio.BrokenResourceError("the WebSocket has closed")
        if self._direct is not None:
            wire = frames.on_the_wire if isinstance(frames, Frames) else text_frames(frames)
            await self._direct.write(wire)
            return
        for frame in frames:
            await send_text(self._send, frame)

    def close(self) -> None:
        self._closed = True
        self.ended.cancel()


def _fell_back(reason: WriteFallback, observer: Observer) -> None:
    observer.body_fell_back(reason)
    warn_once(
        log,
        _fallbacks_logged,
        reason,
        "websocket frames written through the server's send, not straight to its socket",
    )


def _watch_pongs(scope: Mapping[str, Any], timeout: float, session: Session) -> PongWatch | None:
    """Watch the socket's pongs, so that a silent peer's session ends ``no-pong``; where they
    cannot be watched, say so (counted, and logged once per reason) and serve it unwatched."""
    found = watch_pongs(
        scope.get(SERVER_SEND_KEY), timeout, lambda: session.stop(CloseReason.NO_PONG)
    )
    if isinstance(found, PongWatch):
        return found
    scope.get(OBSERVER_KEY, NO_OBSERVER).pong_watch_fell_back(found)
    warn_once(
        log,
        _fallbacks_logged,
        found,
        "websocket pongs not watched: a peer that stops answering pings is not closed 4008",
    )
    return None


def add_websocket_route(
    app: Quart,
    hub: Hub,
    admission: Admission,
    *,
    cors_origins: tuple[str, ...],
    auth_timeout_seconds: float,
    messages_per_second: float,
    pong_timeout_seconds: float,
) -> None:
    """``cors_origins`` (besides the router's own) may open a socket; a handshake without a
    token has ``auth_timeout_seconds`` for its ``auth`` message; a client sends at most
    ``messages_per_second`` (a token bucket) before it is closed as rate limited; one that
    leaves a ping unanswered for ``pong_timeout_seconds`` is closed ``4008``."""
    wire = JSONFrames(__version__)

    @app.websocket(WS_PATH)
    async def events_ws() -> None:
        scope = cast(Mapping[str, Any], websocket.scope)
        messages = client_messages(scope)  # refused unless the wrapper can hold it
        await websocket.accept()
        peer, forwarded = websocket.remote_addr, websocket.headers.get("X-Forwarded-For")
        blocked = admission.screen(peer, forwarded)  # before_request does not run for a websocket
        if blocked is not None:
            return await _refuse(blocked, admission)
        origin = websocket.headers.get("Origin")
        foreign = admission.screen_origin(origin, websocket.headers.get("Host"), cors_origins)
        if foreign is not None:  # before any credential is read: see router.core.origin
            log.info("websocket origin refused", extra={"origin": origin[:200] if origin else None})
            return await _refuse(foreign, admission)
        admitted = admission.admit(await _ask(messages, auth_timeout_seconds))
        if isinstance(admitted, Refused):
            return await _refuse(admitted, admission)
        connection_id = secrets.token_hex(8)
        output = WebSocketOutput(scope)
        try:
            opened = await hub.open(
                admitted.principal,
                admitted.stream_filter,
                expires_at=admitted.expires_at,
                resume_from=admitted.resume_from,
                output=output,
                issued_at=admitted.issued_at,
                address=admission.address(peer, forwarded),
                connection_id=connection_id,
                wire=wire,
                narrow_notice=access_changed,  # a revocation narrows the socket in place
            )
        except ReplayUnavailableError as failure:
            retry = Refused(Reason.REPLAY_UNAVAILABLE, str(failure), retry_after=failure.wait)
            return await _refuse(retry, admission)
        log.info("websocket opened", extra={"connection_id": connection_id})
        session = opened.session
        del opened  # its replay's entries are freed once the session has written them
        remember_session(scope, session)  # stopped however the request ends
        conversation = Conversation(hub, admission, session, messages_per_second, scope[SEND_KEY])
        pongs = _watch_pongs(scope, pong_timeout_seconds, session)
        hand_over(scope, OpenSocket(session, output, conversation, pongs))
        return None  # Quart's part is over: the wrapper holds the socket


class OpenSocket:
    """An admitted socket, once Quart's handler has handed it over: what
    :class:`~router.http.asgi.RequestLifecycle` holds until the session ends."""

    __slots__ = ("_conversation", "_output", "_pongs", "_session")

    def __init__(
        self,
        session: Session,
        output: WebSocketOutput,
        conversation: Conversation,
        pongs: PongWatch | None,
    ) -> None:
        self._session = session
        self._output = output
        self._conversation = conversation
        self._pongs = pongs

    async def hold(self, messages: ClientMessages, send: ASGISendCallable) -> None:
        """Answer the client's messages until the session ends (then close with its code), the
        conversation ends it (then close with the verdict's), or the client leaves (then return:
        the session is stopped). Cancelled (the server's root), it stops the session and returns
        through the cancellation without a close."""
        session = self._session
        verdict: Verdict | None = None
        try:
            with self._output.ended:  # the session ended: the conversation with it
                verdict = await self._conversation.run(messages)
                session.stop(CloseReason.CLIENT)
            if messages.left:
                return
            await session.finished.wait()
            ended = session.close_reason
            code, reason = verdict or (ending_close(ended), _reason_text(ended))
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
        finally:
            session.stop(CloseReason.CLIENT)
            if self._pongs is not None:
                self._pongs.remove()


async def _ask(messages: ClientMessages, auth_timeout: float) -> Ask:
    """The handshake as the front door's question. Without a token in it the first message
    must be ``auth``, within ``auth_timeout``; else the ask carries no credentials. A message
    after it stays for the conversation (:class:`~router.http.ws_handover.ClientMessages`)."""
    credentials = Credentials(
        authorization=websocket.headers.get("Authorization"),
        cookie=websocket.cookies.get("access_token"),
        query=websocket.args.get("token"),
    )
    if credentials == Credentials():
        with trio.move_on_after(auth_timeout):
            text = await messages.next()
            first = None if text is None else parse_client_message(text)
            if isinstance(first, Auth):
                credentials = Credentials(authorization=f"Bearer {first.token}")
    query = list(websocket.args.items(multi=True))
    peer, forwarded = websocket.remote_addr, websocket.headers.get("X-Forwarded-For")
    return Ask(credentials, query, None, peer, forwarded)


async def _refuse(refused: Refused, admission: Admission) -> None:
    """Say why (the refusal's code and message, and its wait when it is to be retried), then
    close with the refusal's code; logged as every refusal is."""
    code = refusal_close(refused.reason)
    remote = admission.address(websocket.remote_addr, websocket.headers.get("X-Forwarded-For"))
    log.info(
        "request refused",
        extra={
            "path": WS_PATH,  # never the query string: it may hold a token
            "code": refused.reason.value,
            "close_code": int(code),
            "parameter": refused.parameter,
            "remote": remote,
            "limit": None if refused.limit is None else refused.limit.value,
        },
    )
    wait = refused.retry_after
    retry_ms = None if wait is None else math.ceil(wait * 1000)
    await websocket.send(error(refused.reason.value, refused.message, retry_ms=retry_ms))
    await websocket.close(int(code), refused.reason.value)


def _reason_text(ended: CloseReason | None) -> str:
    """The close reason of a session that ended so: its error code, or nothing for a client's
    own close."""
    if ended is CloseReason.CLIENT:
        return ""
    if ended is CloseReason.ERROR:
        return "internal"
    return (ended or CloseReason.SERVER_SHUTDOWN).value
