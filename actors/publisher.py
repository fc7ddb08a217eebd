"""Publishing to the bus through a circuit breaker (rules in :mod:`router.core.breaker`).

``POST /api/v1/events`` and the outbox relay both publish through one :class:`GuardedPublisher`:
while the bus keeps failing, a publish is refused at once with :class:`CircuitOpenError` (the
endpoint answers ``503`` with ``Retry-After``, the relay gives its rows back and waits that long)
instead of every caller waiting out the broker's own timeout; after the wait one publish probes
the bus, and its success closes the breaker for everyone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from router.bus.base import BusUnavailableError
from router.core.breaker import BreakerSettings, BreakerState, CircuitBreaker, Ticket
from router.core.cursor import EventIdentity
from router.core.envelope import Publishable
from router.core.observer import NO_OBSERVER, Observer

log = logging.getLogger(__name__)
_DEFAULT_BREAKER = BreakerSettings()


class Publisher(Protocol):
    """What publishes envelopes: a bus, or a bus behind a breaker."""

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        """Where each envelope landed; raises :class:`BusUnavailableError` if not taken."""
        ...


class CircuitOpenError(BusUnavailableError):
    """Refused without asking the bus: it has been failing. Try again after ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the bus has been failing; publishing again in {wait:.1f} s")
        self.wait = wait


class GuardedPublisher:
    """``bus.publish`` behind a :class:`CircuitBreaker`; state changes are logged and observed."""

    def __init__(
        self,
        bus: Publisher,
        settings: BreakerSettings = _DEFAULT_BREAKER,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.bus = bus
        self.breaker = CircuitBreaker(settings)
        self.observer = observer

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        """Publish ``envelopes``; raises :class:`CircuitOpenError` at once while the breaker is
        open (and while another publish probes), :class:`BusUnavailableError` when the bus
        failed to take them."""
        before = self.breaker.state
        ticket = self.breaker.ask(trio.current_time())
        if not isinstance(ticket, Ticket):
            self._changed(before)
            self.observer.breaker_refused()
            raise CircuitOpenError(ticket)
        self._changed(before)
        try:
            identities = await self.bus.publish(envelopes)
        except BusUnavailableError:
            before = self.breaker.state
            self.breaker.failed(ticket, trio.current_time())
            self._changed(before)
            raise
        except BaseException:  # cancelled, or a bug: says nothing of the bus
            self.breaker.abandoned(ticket)
            raise
        before = self.breaker.state
        self.breaker.succeeded(ticket)
        self._changed(before)
        return identities

    def _changed(self, before: BreakerState) -> None:
        after = self.breaker.state
        if after is before:
            return
        self.observer.breaker_changed(after)
        if after is BreakerState.OPEN:
            wait = self.breaker.wait(trio.current_time())
            log.warning("bus breaker open", extra={"probe_in_seconds": round(wait, 3)})
        else:
            log.info(f"bus breaker {after.value}")
