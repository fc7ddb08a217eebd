"""A rate limit per key (a user, an address): at most ``limit`` events in any ``period`` seconds.

A sliding log: each key keeps the times of its last ``limit`` accepted events, so the limit holds in
every window, not just on average. Keys with nothing left in the window are pruned, so memory
follows the keys active within one period. Time is passed in, never read, so tests drive it.

Several limits on one event (per user and per address) are taken together with
:func:`acquire_all`: from every limiter when all allow, from none when one refuses, so a refusal by
one limit never spends another's allowance.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Name = TypeVar("Name")


@dataclass(slots=True)
class RateLimiter:
    limit: int
    period: float
    _accepted: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    _checks_since_prune: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.period > 0:
            raise ValueError("a rate limit needs limit >= 1 and period > 0")

    def wait(self, key: str, now: float) -> float:
        """The seconds ``key`` must wait at ``now`` before an event is allowed (0.0: allowed now).

        Takes nothing.
        """
        self._maybe_prune(now)
        accepted = self._accepted.get(key)
        if accepted is None or len(accepted) < self.limit:
            return 0.0
        return max(0.0, accepted[0] + self.period - now)

    def take(self, key: str, now: float) -> None:
        """Record one event for ``key`` at ``now``; call it only when :meth:`wait` said 0.0."""
        accepted = self._accepted.setdefault(key, deque(maxlen=self.limit))
        if len(accepted) == self.limit and accepted[0] + self.period > now:
            raise ValueError(f"{key!r} has no allowance left at {now}")
        accepted.append(now)

    def acquire(self, key: str, now: float) -> float:
        """Take one event for ``key`` at ``now``: 0.0 if allowed, else the seconds to wait.

        A refused event takes nothing, so a client that keeps retrying too early does not push its
        own allowance further away.
        """
        wait = self.wait(key, now)
        if wait == 0.0:
            self.take(key, now)
        return wait

    def _maybe_prune(self, now: float) -> None:
        self._checks_since_prune += 1
        if self._checks_since_prune < max(1024, len(self._accepted)):
            return
        self._checks_since_prune = 0
        horizon = now - self.period
        self._accepted = {key: log for key, log in self._accepted.items() if log[-1] > horizon}

    def __len__(self) -> int:
        return len(self._accepted)


@dataclass(frozen=True, slots=True)
class Refused(Generic[Name]):
    """Which limit refused (the one that asks for the longest wait), and how long to wait."""

    limit: Name
    wait: float


def acquire_all(
    claims: Mapping[Name, tuple[RateLimiter, str]], now: float, *, take: bool = True
) -> Refused[Name] | None:
    """One event against every ``name: (limiter, key)`` at ``now``: ``None`` when every limiter
    allows it (and then, with ``take``, it is taken from each), else the refusal, and nothing is
    taken from any limiter. ``take=False`` only asks."""
    waits = {name: limiter.wait(key, now) for name, (limiter, key) in claims.items()}
    refusing = {name: wait for name, wait in waits.items() if wait > 0}
    if refusing:
        limit = max(refusing, key=lambda name: refusing[name])
        return Refused(limit, refusing[limit])
    if take:
        for limiter, key in claims.values():
            limiter.take(key, now)
    return None
