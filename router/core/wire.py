"""What a session says to its client, independent of the transport's framing.

A session's stream is a few kinds of things: a hello (the retry hint and where the client stands),
events, the router's own ``sse.error`` events, an id-only cursor move, and a heartbeat. A
:class:`WireFormat` turns each into the chunk its transport writes: bytes of a
``text/event-stream`` (:data:`SSE`, here), or the text frames of a WebSocket
(:mod:`router.core.ws_wire`). The session actor only decides *what* to say; the format says *how*.

Pure: no I/O, nothing but encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from router.core.cursor import Cursor
from router.core.sse import SSEMessage, encode_comment, encode_id, encode_retry

ReplayState = Literal["complete", "truncated", "none"]
"""What a stream's resume gave: everything missed, not all of it, or no resume was asked."""

Chunk = TypeVar("Chunk", covariant=True)


@dataclass(frozen=True, slots=True)
class Hello:
    """What a stream says first, before any event."""

    retry_ms: int
    position: Cursor | None
    """Where the client stands: what it resumes from if cut now (``None`` before the bus
    answered, for a stream that did not resume)."""
    replay: ReplayState
    connection_id: str
    expires_at: float
    """When the token expires, in seconds since the epoch."""


class WireFormat(Protocol[Chunk]):
    """How a session's stream is framed. Every method is pure and cheap to call again; ``name``
    keys the encodings a :class:`~router.core.inbox.SharedBatch` caches, one per format."""

    @property
    def name(self) -> str: ...

    def hello(self, hello: Hello, /) -> Chunk: ...

    def events(self, messages: Sequence[SSEMessage], /) -> Chunk:
        """``messages`` (not empty; each with the id the client is to store), as one write."""
        ...

    def cursor(self, cursor: Cursor, /) -> Chunk:
        """The client's cursor moved with no event for it: it stores ``cursor`` as its last id."""
        ...

    def heartbeat(self) -> Chunk | None:
        """A keep-alive, or ``None`` when the transport keeps the connection alive itself."""
        ...


class SSEWire:
    """The ``text/event-stream`` format: each event its own block, as the bytes it was made with
    (:meth:`SSEMessage.to_sse_format`), so a broadcast is encoded once for every stream."""

    name = "sse"

    def hello(self, hello: Hello, /) -> bytes:
        # The replay outcome travels in the response's SSE-Replay header; the retry hint and the
        # position are the stream's first bytes.
        first = encode_retry(hello.retry_ms) + encode_comment("ok")
        if hello.position is not None:
            first += encode_id(str(hello.position))
        return first

    def events(self, messages: Sequence[SSEMessage], /) -> bytes:
        if len(messages) == 1:
            return messages[0].to_sse_format()
        return b"".join(message.to_sse_format() for message in messages)

    def cursor(self, cursor: Cursor, /) -> bytes:
        return encode_id(str(cursor))

    def heartbeat(self) -> bytes:
        return _COMMENT


_COMMENT = encode_comment()
SSE = SSEWire()
"""The event-stream format, the one every session speaks unless told otherwise."""
