"""Whether a WebSocket peer still answers its pings: the rule behind close code ``4008``.

RFC 6455 §5.5.3 lets a peer answer only the most recent of several pings, and hypercorn's pings
carry no payload to tell them apart, so a pong is taken to answer every ping sent before it. A
peer is *silent* once a ping has stayed unanswered for ``timeout`` seconds: from the first ping
sent after its last pong (or since it opened), to now. The verdict is asked when the next ping
goes out (:meth:`PongDeadline.ping_sent`), so a silent peer is found by the first ping at least
``timeout`` after the one it missed, and no timer runs per connection to find it.

A pong that was never asked for (RFC 6455 allows one, as a one-way heartbeat) also counts: the
peer is there and speaks the protocol, which is all this rule can know. A peer that is there but
does not read is the session's to cut (``lagged``); one that is gone altogether is also the
kernel's (``TCP_USER_TIMEOUT``, ``--stalled-client-seconds``).

Pure: time is passed in, nothing here waits. ``tests/test_pong.py`` tests it directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Liveness(enum.Enum):
    ANSWERING = "answering"
    SILENT = "silent"
    """A ping has gone unanswered for the timeout: close the connection (``4008``)."""


@dataclass(slots=True)
class PongDeadline:
    """One connection's pings and pongs, and the verdict on them."""

    timeout: float
    """How long a ping may stay unanswered (``--ws-pong-timeout-seconds``)."""
    unanswered_since: float | None = None
    """When the oldest ping not yet answered went out; ``None`` while every ping is answered."""

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"a pong timeout must be positive, not {self.timeout!r}")

    def ping_sent(self, now: float) -> Liveness:
        """A ping goes out at ``now``: the verdict on the pings before it."""
        verdict = self.liveness(now)
        if self.unanswered_since is None:
            self.unanswered_since = now
        return verdict

    def pong_received(self) -> None:
        """A pong came: every ping sent so far is answered."""
        self.unanswered_since = None

    def liveness(self, now: float) -> Liveness:
        """:attr:`Liveness.SILENT` once a ping sent before ``now`` has waited ``timeout`` for
        its answer."""
        since = self.unanswered_since
        if since is not None and now - since >= self.timeout:
            return Liveness.SILENT
        return Liveness.ANSWERING
