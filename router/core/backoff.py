"""Capped exponential backoff with jitter, for reconnecting to a bus or a cache.

Pure: the random source is passed in, so tests get exact delays.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays of ``initial * factor**n`` seconds, capped at ``maximum``, each scaled by a random
    factor in [0.5, 1] so that many routers do not retry in step."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    random: Callable[[], float] = field(default=random.random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return ceiling * (0.5 + self.random() / 2)

    def reset(self) -> None:
        self.attempts = 0
