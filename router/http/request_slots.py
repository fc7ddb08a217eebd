"""At most so many requests in their request phase at once: a connect storm's peak is bounded.

The accept loops take every queued connection at once (router/http/accept.py), so in a storm of
10,000 clients all their requests were in flight together: hypercorn's stream, Quart's request,
context objects and tasks, for each, until its stream's headers were out. The streams then cost
what they did before, but pymalloc keeps the arenas of that peak, and the router's resident set
stayed ~45 KiB per stream where it had been ~27 (docs/performance.md, "Memory").

A request takes a slot once hypercorn has read its head whole (the ASGI app is called then; a
connection idle between requests, or one sending its head slowly, holds none: hypercorn's
keep-alive timer closes those) and gives it back when its phase ends: an event stream's headers
are out, a WebSocket is accepted or refused, any other response has ended. A request waiting for
a slot costs its socket, hypercorn's stream and one parked task; the kernel's queue is still
emptied, so no connect fails. The probes (``/healthz``, ``/readyz``) and ``/metrics`` take no
slot: they answer through a storm.

Opening a stream (an event stream's ``GET``, a WebSocket) and everything else (a publish, a
control, the connections listing) take slots of their own, ``limit`` of each. A resume waits in
its request phase for the bus and for its replay turn (``Hub.open``), so a storm of resumes fills
the stream slots and new streams wait behind them; with one pool, the back end's publishes waited
behind them too, and during a deploy's replay storm the live streams heard nothing new for as long
as the storm lasted (a publish unanswered for 30 s and more). The storm cannot deadlock: a replay
turn is given back after the replay is written, which is after the stream's headers are out and
its slot given back.
"""

from __future__ import annotations

from enum import Enum

import trio
from hypercorn.typing import Scope

from router.http.admission import STREAM_PATH

UNSLOTTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Requests that take no slot: cheap, and an orchestrator (or a scraper) must not see a storm as a
dead router."""


class RequestKind(Enum):
    """Which slots a request takes."""

    STREAM = "stream"
    """Opening a stream: the requests a deploy's reconnect storm is made of."""
    OTHER = "other"
    """A publish, a control, anything else: short, and the back end's way in."""


def request_kind(scope: Scope) -> RequestKind:
    if scope["type"] == "websocket":
        return RequestKind.STREAM
    if scope["type"] == "http" and scope["path"] == STREAM_PATH:
        return RequestKind.STREAM
    return RequestKind.OTHER


class RequestSlots:
    """``limit`` slots (``--requests-in-flight``) of each :class:`RequestKind`, or no bound with
    ``None`` (the neutral value of a wrapper built alone, as in a test)."""

    def __init__(self, limit: int | None) -> None:
        self._pools = (
            None if limit is None else {kind: trio.Semaphore(limit) for kind in RequestKind}
        )
        self.limit = limit
        self.most_taken = 0
        """The most slots taken at once so far, of both kinds together (for tests and figures)."""

    @property
    def taken(self) -> int:
        """The slots taken now, of both kinds together."""
        if self._pools is None or self.limit is None:
            return 0
        return sum(self.limit - pool.value for pool in self._pools.values())

    def taken_by(self, kind: RequestKind) -> int:
        if self._pools is None or self.limit is None:
            return 0
        return self.limit - self._pools[kind].value

    def slot(self, scope: Scope) -> Slot:
        """A slot for the request of ``scope``, not yet taken (:meth:`Slot.take`)."""
        if self._pools is None or scope["type"] not in ("http", "websocket"):
            return Slot(None)
        if scope["type"] == "http" and scope["path"] in UNSLOTTED_PATHS:
            return Slot(None)
        return Slot(self, self._pools[request_kind(scope)])

    def note_taken(self) -> None:
        self.most_taken = max(self.most_taken, self.taken)


class Slot:
    """One request's slot: taken once, given back once (:meth:`give_back` is idempotent)."""

    __slots__ = ("_held", "_pool", "_slots")

    def __init__(self, slots: RequestSlots | None, pool: trio.Semaphore | None = None) -> None:
        self._slots = slots
        self._pool = pool
        self._held = False

    async def take(self) -> None:
        """Wait for a slot. Cancelled while waiting (the client left), it holds none."""
        if self._slots is None or self._pool is None:
            return
        await self._pool.acquire()
        self._held = True
        self._slots.note_taken()

    def give_back(self) -> None:
        if self._held and self._pool is not None:
            self._held = False
            self._pool.release()
