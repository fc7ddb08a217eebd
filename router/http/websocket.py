"""``GET /api/v1/events/ws``: a client's event stream as WebSocket JSON frames (docs/websocket.md).

It only translates: the handshake's credentials, query and peer become an :class:`Ask` for the same
front door as the event stream, the admitted stream is the same session actor (``hub.open``) with
the JSON wire format, and the client's ``refresh`` and ``filter`` become :meth:`Hub.rescope`. The
socket is always accepted; a refusal is an ``error`` frame and a close code
(:mod:`router.core.ws_close`). Who cancels whom: the session runs in the hub's nursery and ends on
its own (lagged, expired, shutdown) or is stopped here when the client leaves (Quart cancels this
handler on the disconnect); this handler waits for it to finish, then closes with its code.
"""

from __future__ import annotations

import logging
import math
import secrets

import trio
from quart import Quart, websocket

from actors.hub import Hub, ReplayUnavailableError
from actors.session import CloseReason, Session
from router import __version__
from router.admission import Admission, Ask
from router.config import Settings
from router.core.admission import Credentials, Reason, Refused, stream_request
from router.core.token_bucket import TokenBucket
from router.core.ws_client import Auth, BadMessage, Filter, Refresh, parse_client_message
from router.core.ws_close import CloseCode, ending_close, refusal_close
from router.core.ws_wire import Frames, JSONFrames, error, filtered, refreshed

WS_PATH = "/api/v1/events/ws"
MESSAGE_BURST = 10
"""Client messages a WebSocket may send at once, before ``--ws-messages-per-second`` applies."""
log = logging.getLogger(__name__)
Verdict = tuple[CloseCode, str]
"""How the conversation ends the connection: its close code and reason."""


class WebSocketOutput:
    """A session's output onto the socket. ``send`` waits while hypercorn writes the frame to
    the socket (a write that does not drain holds back this session only: its inbox fills and
    the session is cut as lagged)."""

    def __init__(self) -> None:
        self._closed = False

    async def send(self, frames: Frames, /) -> None:
        if self._closed:
            raise trio.BrokenResourceError("the WebSocket has closed")
        for frame in frames:
            await websocket.send(frame)

    def close(self) -> None:
        self._closed = True


def add_websocket_route(app: Quart, hub: Hub, admission: Admission, settings: Settings) -> None:
    wire = JSONFrames(__version__)

    @app.websocket(WS_PATH)
    async def events_ws() -> None:
        await websocket.accept()
        admitted = admission.admit(await _ask(settings.ws_auth_timeout_seconds))
        if isinstance(admitted, Refused):
            return await _close(*_refuse(admitted, admission))
        connection_id = secrets.token_hex(8)
        try:
            opened = await hub.open(
                admitted.principal,
                admitted.stream_filter,
                expires_at=admitted.expires_at,
                resume_from=admitted.resume_from,
                output=WebSocketOutput(),
                connection_id=connection_id,
                wire=wire,
            )
        except ReplayUnavailableError as failure:
            retry = Refused(Reason.REPLAY_UNAVAILABLE, str(failure), retry_after=failure.wait)
            return await _close(*_refuse(retry, admission))
        log.info("websocket opened", extra={"connection_id": connection_id})
        session = opened.session
        bucket = TokenBucket(MESSAGE_BURST, settings.ws_messages_per_second)
        try:
            verdict: Verdict | None = None
            async with trio.open_nursery() as nursery:

                async def converse() -> None:
                    nonlocal verdict
                    verdict = await _converse(hub, admission, session, bucket)
                    session.stop(CloseReason.CLIENT)

                nursery.start_soon(converse)
                await session.finished.wait()
                nursery.cancel_scope.cancel()
            reason = session.close_reason
            await _close(None, *(verdict or (ending_close(reason), _reason_text(reason))))
        finally:
            session.stop(CloseReason.CLIENT)  # the client left: Quart cancelled this handler


async def _ask(auth_timeout: float) -> Ask:
    """The handshake as the front door's question; without a token in it, the first message
    must be ``auth`` (within ``auth_timeout``), else the ask has no credentials."""
    credentials = Credentials(
        authorization=websocket.headers.get("Authorization"),
        cookie=websocket.cookies.get("access_token"),
        query=websocket.args.get("token"),
    )
    if credentials == Credentials():
        with trio.move_on_after(auth_timeout):
            first = parse_client_message(await websocket.receive())
            if isinstance(first, Auth):
                credentials = Credentials(authorization=f"Bearer {first.token}")
    query = [(k, v) for k, v in websocket.args.items(multi=True)]
    peer, forwarded = websocket.remote_addr, websocket.headers.get("X-Forwarded-For")
    return Ask(credentials, query, None, peer, forwarded)


def _refuse(refused: Refused, admission: Admission) -> tuple[str, CloseCode, str]:
    remote = admission.address(websocket.remote_addr, websocket.headers.get("X-Forwarded-For"))
    code = refusal_close(refused.reason)
    log.info(
        "request refused",
        extra={
            "path": WS_PATH,
            "code": refused.reason.value,
            "close_code": int(code),
            "parameter": refused.parameter,
            "remote": remote,
        },
    )
    wait = refused.retry_after
    retry_ms = None if wait is None else math.ceil(wait * 1000)
    frame = error(refused.reason.value, refused.message, retry_ms=retry_ms)
    return frame, code, refused.reason.value


async def _close(frame: str | None, code: CloseCode, reason: str) -> None:
    if frame is not None:
        await websocket.send(frame)
    await websocket.close(int(code), reason)


def _reason_text(reason: CloseReason | None) -> str:
    return (
        ""
        if reason is CloseReason.CLIENT
        else "internal"
        if reason is CloseReason.ERROR
        else (reason or CloseReason.SERVER_SHUTDOWN).value
    )


async def _converse(
    hub: Hub, admission: Admission, session: Session, bucket: TokenBucket
) -> Verdict:
    """Answer the client's messages until one must end the connection; return how."""
    while True:
        message = parse_client_message(await websocket.receive())
        if not bucket.take(trio.current_time()):
            wait_ms = math.ceil(bucket.wait(trio.current_time()) * 1000)
            await websocket.send(
                error("rate-limited", "too many client messages", retry_ms=wait_ms)
            )
            return CloseCode.RATE_LIMITED, "rate-limited"
        if isinstance(message, BadMessage):
            await websocket.send(error(message.problem.value, message.message, ref=message.ref))
        elif isinstance(message, Auth):
            await websocket.send(
                error(
                    "bad-message",
                    "'auth' only comes first, and only without a token",
                    ref=message.ref,
                )
            )
        elif isinstance(message, Refresh):
            verified = admission.authenticate(Credentials(authorization=f"Bearer {message.token}"))
            if isinstance(verified, Refused):
                await websocket.send(
                    error(verified.reason.value, verified.message, ref=message.ref)
                )
                return CloseCode.UNAUTHORIZED, "unauthorized"
            new, old = verified.principal, session.principal
            if (new.user_id, new.session_id) != (old.user_id, old.session_id):
                await websocket.send(
                    error("forbidden", "a refresh keeps the user and session", ref=message.ref)
                )
                return CloseCode.FORBIDDEN, "forbidden"
            then = refreshed(message.ref, verified.expires_at)
            await hub.rescope(
                session, new, session.stream_filter, expires_at=verified.expires_at, then=then
            )
        elif isinstance(message, Filter):
            asked = stream_request(message.query, None, session.principal)
            if isinstance(asked, Refused):
                await websocket.send(error(asked.reason.value, asked.message, ref=message.ref))
                continue
            then = filtered(message.ref, asked.stream_filter)
            await hub.rescope(
                session,
                session.principal,
                asked.stream_filter,
                expires_at=session.expires_at,
                then=then,
            )
