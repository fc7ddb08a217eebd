"""A rate limit per key (a user, an address): at most ``limit`` events in any ``period`` seconds.

A sliding log: each key keeps the times of its last ``limit`` accepted events, so the limit holds in
every window, not just on average. Keys with nothing left in the window are pruned, so memory
follows the keys active within one period. Time is passed in, never read, so tests drive it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class RateLimiter:
    limit: int
    period: float
    _accepted: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    _checks_since_prune: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.period > 0:
            raise ValueError("a rate limit needs limit >= 1 and period > 0")

    def acquire(self, key: str, now: float) -> float:
        """Take one event for ``key`` at ``now``: 0.0 if allowed, else the seconds to wait.

        A refused event takes nothing, so a client that keeps retrying too early does not push its
        own allowance further away.
        """
        self._maybe_prune(now)
        accepted = self._accepted.setdefault(key, deque(maxlen=self.limit))
        if len(accepted) == self.limit:
            wait = accepted[0] + self.period - now
            if wait > 0:
                return wait
        accepted.append(now)
        return 0.0

    def _maybe_prune(self, now: float) -> None:
        self._checks_since_prune += 1
        if self._checks_since_prune < max(1024, len(self._accepted)):
            return
        self._checks_since_prune = 0
        horizon = now - self.period
        self._accepted = {key: log for key, log in self._accepted.items() if log[-1] > horizon}

    def __len__(self) -> int:
        return len(self._accepted)
