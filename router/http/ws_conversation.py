"""What a WebSocket client says once its stream is open: ``refresh`` and ``filter``, answered.

Each message is parsed by :mod:`router.core.ws_client` and taken from a token bucket; a token is
verified by the same front door as the handshake's, a filter checked by the same rules as the
query's; the change itself is :meth:`actors.hub.Hub.rescope`, and its answer is written by the
session once the change took effect, so nothing before it is of the new scope and nothing after
it of the old. A bad message is answered and the stream goes on; what must end the connection
(a flood, a bad refresh) is returned as a :data:`Verdict`.

It runs after the hand-over (:mod:`router.http.ws_handover`), on the raw ASGI ``send`` and the
socket's :class:`~router.http.ws_handover.ClientMessages`, with no Quart object.
"""

from __future__ import annotations

import math

import trio
from hypercorn.typing import ASGISendCallable

from actors.hub import Hub
from actors.session import Session
from router.admission import Admission
from router.core.admission import Credentials, Refused, stream_request
from router.core.token_bucket import TokenBucket
from router.core.ws_client import (
    MESSAGE_BURST,
    Auth,
    BadMessage,
    Filter,
    Refresh,
    parse_client_message,
    refresh_problem,
)
from router.core.ws_close import CloseCode
from router.core.ws_wire import error, filtered, refreshed
from router.http.ws_handover import ClientMessages, send_text

Verdict = tuple[CloseCode, str]
"""How the connection is to end: its close code and reason."""


class Conversation:
    __slots__ = ("_admission", "_bucket", "_hub", "_send", "_session")

    def __init__(
        self,
        hub: Hub,
        admission: Admission,
        session: Session,
        messages_per_second: float,
        send: ASGISendCallable,
    ) -> None:
        """``send`` is the socket's ASGI send, which the answers go through."""
        self._hub = hub
        self._admission = admission
        self._session = session
        self._bucket = TokenBucket(MESSAGE_BURST, messages_per_second)
        self._send = send

    async def run(self, messages: ClientMessages) -> Verdict | None:
        """Answer the client's messages, one at a time, until one must end the connection
        (``None``: the client left)."""
        while True:
            text = await messages.next()
            if text is None:
                return None
            message = parse_client_message(text)
            now = trio.current_time()
            if not self._bucket.take(now):
                wait_ms = math.ceil(self._bucket.wait(now) * 1000)
                await self._say(error("rate-limited", "too many messages", retry_ms=wait_ms))
                return CloseCode.RATE_LIMITED, "rate-limited"
            if isinstance(message, BadMessage):
                await self._say(error(message.problem.value, message.message, ref=message.ref))
            elif isinstance(message, Auth):
                text = "'auth' comes first, and only when the handshake carried no token"
                await self._say(error("bad-message", text, ref=message.ref))
            elif isinstance(message, Refresh):
                verdict = await self._refresh(message)
                if verdict is not None:
                    return verdict
            else:
                await self._filter(message)

    async def _refresh(self, message: Refresh) -> Verdict | None:
        """The new token replaces the old one: its grants (narrowed ones stop at once), its
        expiry. A token that does not verify, or is another user's or session's, ends it."""
        session = self._session
        verified = self._admission.authenticate(
            Credentials(f"Bearer {message.token}"), session.address
        )
        if isinstance(verified, Refused):
            await self._say(error(verified.reason.value, verified.message, ref=message.ref))
            return CloseCode.UNAUTHORIZED, verified.reason.value
        problem = refresh_problem(session.principal, verified.principal)
        if problem is not None:
            await self._say(error("forbidden", problem, ref=message.ref))
            return CloseCode.FORBIDDEN, "forbidden"
        session.issued_at = verified.issued_at  # what a later control is compared with
        await self._hub.rescope(
            session,
            verified.principal,
            session.stream_filter,
            expires_at=verified.expires_at,
            then=refreshed(message.ref, verified.expires_at),
        )
        return None

    async def _filter(self, message: Filter) -> None:
        session = self._session
        asked = stream_request(message.query, None, session.principal)
        if isinstance(asked, Refused):
            await self._say(error(asked.reason.value, asked.message, ref=message.ref))
            return
        await self._hub.rescope(
            session,
            session.principal,
            asked.stream_filter,
            expires_at=session.expires_at,
            then=filtered(message.ref, asked.stream_filter),
        )

    async def _say(self, frame: str) -> None:
        await send_text(self._send, frame)
