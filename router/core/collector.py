"""When the cyclic collector's view of a connect storm is frozen, and when it is thawed: pure.

Every stream opened holds a few hundred container objects for as long as it lives. Left to the
collector, each is scanned once in generation 0 and again in generation 1 before it settles in
generation 2: measured on a 10,000-stream storm (docs/performance.md, "Opening streams"), 60
young passes and 2 middle ones (each stalling the loop about 0.6 s) took 2.8 s, 280 us per
stream, a quarter of the router's CPU. ``gc.freeze()`` (constant time) moves everything alive
into a generation the collector never scans, so what the storm's streams hold is not scanned at
all; ``gc.unfreeze()`` hands it back to the oldest generation, where a cycle left by a closed
stream is collected by the collector's next full pass, as anything long-lived is anyway.

The rule, one decision per tick of :func:`router.collector.run`:

- while streams open fast (at least ``storm_opens`` more open than at the last tick), freeze;
- once they have stopped for ``thaw_after_seconds``, or after ``thaw_every_opens`` streams
  opened while freezing (an endless storm), thaw, and freeze no more until the collector has made
  a full pass: a cycle frozen meanwhile is then collected before it could be frozen again, so
  what freezing keeps from the collector is bounded by ``thaw_every_opens`` streams' worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FreezeAction = Literal["freeze", "thaw", "wait"]
"""What :meth:`FreezePolicy.tick` asks for: ``gc.freeze()``, ``gc.unfreeze()``, or nothing."""


@dataclass
class FreezePolicy:
    """The rule above, fed the number of open streams at each tick and the clock."""

    storm_opens: int = 20
    """Streams opened within one tick that make a storm (20 per 50 ms tick: 400 a second)."""
    thaw_after_seconds: float = 10.0
    thaw_every_opens: int = 50_000
    _open_streams: int = 0
    _frozen_opens: int = 0
    _last_storm_at: float | None = None
    _awaiting_full_pass: bool = False

    def tick(self, open_streams: int, now: float) -> FreezeAction:
        opened, self._open_streams = open_streams - self._open_streams, open_streams
        if self._awaiting_full_pass:
            return "wait"
        if opened >= self.storm_opens:
            self._last_storm_at = now
            self._frozen_opens += opened
            return self._thaw() if self._frozen_opens >= self.thaw_every_opens else "freeze"
        if self._last_storm_at is not None and now - self._last_storm_at >= self.thaw_after_seconds:
            return self._thaw()
        return "wait"

    def full_pass_done(self) -> None:
        """The collector has scanned every generation since the last thaw: freezing may resume."""
        self._awaiting_full_pass = False

    @property
    def frozen(self) -> bool:
        """Whether something frozen by this rule waits to be thawed."""
        return self._last_storm_at is not None

    def _thaw(self) -> FreezeAction:
        self._last_storm_at, self._frozen_opens, self._awaiting_full_pass = None, 0, True
        return "thaw"
