"""What the HTTP layer is built with: only the knobs its routes use, one frozen value made in
``serve()`` from the command line's settings, as the hub's settings are. The HTTP layer never
reads those settings itself. The defaults are the command line's: every field here is given."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HTTPSettings"]


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    cors_origins: tuple[str, ...]
    """Origins a browser page may call the router from (``--cors-origins``); a WebSocket's
    ``Origin`` is checked against them too."""
    publish_max_bytes: int
    """The largest publish body (``--publish-max-bytes``): ``413`` past it, unread."""
    publish_max_batch: int
    """The most envelopes in one publish or control request (``--publish-max-batch``)."""
    ws_auth_timeout_seconds: float
    """How long a WebSocket without a token in its handshake has to send its ``auth`` message."""
    ws_messages_per_second: float
    """A WebSocket client's message rate (a token bucket) before it is closed as rate limited."""
    ws_pong_timeout_seconds: float
    """How long a WebSocket may leave a ping unanswered before it is closed ``4008``."""
