"""A token bucket: a burst of ``capacity``, refilled at ``rate`` a second. Pure: time is passed in.

Used for what one connection may send (a WebSocket's client messages), where a sliding log per key
(:mod:`router.core.ratelimit`) would be more than needed: one bucket, two floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    rate: float
    """Tokens added per second, up to ``capacity``."""
    _tokens: float = field(init=False)
    _last: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.capacity >= 1 or not self.rate > 0:
            raise ValueError("a token bucket needs capacity >= 1 and rate > 0")
        self._tokens = self.capacity

    def take(self, now: float) -> bool:
        """Take one token at ``now`` if there is one; a refusal takes nothing."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0.0: one is)."""
        self._refill(now)
        return max(0.0, (1 - self._tokens) / self.rate)

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
