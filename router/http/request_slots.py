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

A resume waits in its request phase for the bus and for its replay turn (``Hub.open``), so a
storm of resumes fills the slots and new requests wait behind them; it cannot deadlock: a
replay turn is given back after the replay is written, which is after the stream's headers
are out and its slot given back.
"""

from __future__ import annotations

import trio
from hypercorn.typing import Scope

UNSLOTTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Requests that take no slot: cheap, and an orchestrator (or a scraper) must not see a storm as a
dead router."""


class RequestSlots:
    """``limit`` slots (``--requests-in-flight``), or no bound with ``None`` (the neutral value of a
    wrapper built alone, as in a test)."""

    def __init__(self, limit: int | None) -> None:
        self._slots = None if limit is None else trio.Semaphore(limit)
        self.limit = limit
        self.most_taken = 0
        """The most slots taken at once so far (for tests and figures)."""

    @property
    def taken(self) -> int:
        if self._slots is None or self.limit is None:
            return 0
        return self.limit - self._slots.value

    def slot(self, scope: Scope) -> Slot:
        """A slot for the request of ``scope``, not yet taken (:meth:`Slot.take`)."""
        needed = self._slots is not None and scope["type"] in ("http", "websocket")
        if needed and scope["type"] == "http" and scope["path"] in UNSLOTTED_PATHS:
            needed = False
        return Slot(self if needed else None)

    async def acquire(self) -> None:
        assert self._slots is not None
        await self._slots.acquire()
        self.most_taken = max(self.most_taken, self.taken)

    def release(self) -> None:
        assert self._slots is not None
        self._slots.release()


class Slot:
    """One request's slot: taken once, given back once (:meth:`give_back` is idempotent)."""

    __slots__ = ("_held", "_slots")

    def __init__(self, slots: RequestSlots | None) -> None:
        self._slots = slots
        self._held = False

    async def take(self) -> None:
        """Wait for a slot. Cancelled while waiting (the client left), it holds none."""
        if self._slots is None:
            return
        await self._slots.acquire()
        self._held = True

    def give_back(self) -> None:
        if self._held and self._slots is not None:
            self._held = False
            self._slots.release()
