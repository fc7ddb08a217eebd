"""A circuit breaker for calls to a backend that may stop answering (the bus, for publishing).

Three states, in the usual way:

- ``closed``: calls go through; ``failure_threshold`` failures in a row open it.
- ``open``: calls are refused at once, with how long until the breaker probes again, so a caller
  answers its own client (``503`` with ``Retry-After``) instead of waiting on a dead backend.
- ``half-open``: the wait is over; exactly one call, the probe, goes through, and the others
  are still refused. The probe's success closes the breaker; its failure opens it again for
  twice as long as before (at most ``max_open_seconds``), so a backend that stays down is
  probed less and less often.

Pure: no clock and no I/O, the caller passes ``now`` (seconds, any monotonic clock) to every
call, and reports each call's outcome with :meth:`CircuitBreaker.succeeded` or
:meth:`CircuitBreaker.failed` (or :meth:`CircuitBreaker.abandoned` for a call that ended with
neither, a cancelled one).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BreakerSettings", "BreakerState", "CircuitBreaker", "Ticket"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 3
    """Failures in a row that open a closed breaker."""
    open_seconds: float = 1.0
    """How long the breaker first stays open before it probes."""
    max_open_seconds: float = 30.0
    """The longest it stays open, however many probes failed in a row."""
    probe_wait_seconds: float = 1.0
    """What a call refused while the probe is out is told to wait."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("a breaker opens after at least one failure")
        if not 0 < self.open_seconds <= self.max_open_seconds or self.probe_wait_seconds <= 0:
            raise ValueError("a breaker needs 0 < open_seconds <= max_open_seconds")


class Ticket(enum.Enum):
    """What :meth:`CircuitBreaker.ask` granted: an ordinary call, or the one probe."""

    CALL = "call"
    PROBE = "probe"


class CircuitBreaker:
    """One breaker; see the module's docstring for its rules."""

    def __init__(self, settings: BreakerSettings = BreakerSettings()) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.failures = 0
        """Failures in a row while closed."""
        self.opened = 0
        """Times the breaker opened (from closed or from a failed probe), for the metrics."""
        self._open_for = settings.open_seconds
        self._probe_at = 0.0
        self._probing = False

    def ask(self, now: float) -> Ticket | float:
        """May a call start now? A :class:`Ticket` if so; else how many seconds to wait."""
        if self.state is BreakerState.CLOSED:
            return Ticket.CALL
        if self.state is BreakerState.OPEN:
            if now < self._probe_at:
                return self._probe_at - now
            self.state = BreakerState.HALF_OPEN
        if self._probing:
            return self.settings.probe_wait_seconds
        self._probing = True
        return Ticket.PROBE

    def wait(self, now: float) -> float:
        """How long a call would be refused for now (0 when it would go through); asks nothing."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        if self.state is BreakerState.OPEN and now < self._probe_at:
            return self._probe_at - now
        return self.settings.probe_wait_seconds if self._probing else 0.0

    def succeeded(self, ticket: Ticket) -> None:
        """A call granted ``ticket`` went through: a probe's success closes the breaker."""
        if ticket is Ticket.PROBE:
            self._probing = False
            self.state = BreakerState.CLOSED
            self._open_for = self.settings.open_seconds
        if self.state is BreakerState.CLOSED:
            self.failures = 0

    def failed(self, ticket: Ticket, now: float) -> None:
        """A call granted ``ticket`` failed: the probe's failure, or the threshold's, opens it."""
        if ticket is Ticket.PROBE:
            self._probing = False
            self._open_for = min(self._open_for * 2, self.settings.max_open_seconds)
            self._open(now)
            return
        if self.state is not BreakerState.CLOSED:
            return  # a call from before the breaker opened: it already knows
        self.failures += 1
        if self.failures >= self.settings.failure_threshold:
            self._open(now)

    def abandoned(self, ticket: Ticket) -> None:
        """A call granted ``ticket`` ended with no answer (cancelled): a probe may go again."""
        if ticket is Ticket.PROBE:
            self._probing = False

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.failures = 0
        self.opened += 1
        self._probe_at = now + self._open_for
