"""When the cyclic collector's view of a connect storm is frozen, and when it is thawed: pure.

Every stream opened holds a few hundred container objects for as long as it lives. Left to the
collector, each is scanned once in generation 0 and again in generation 1 before it settles in
generation 2: measured on a 10,000-stream storm (docs/performance.md, "Opening streams"), about
60 young passes and 2 middle ones (each stalling the loop 0.5-0.7 s) took 2.3-2.9 s, 230-290 us
per stream, a quarter of the router's CPU. ``gc.freeze()`` (constant time) moves everything
alive into a generation the collector never scans, so what the storm's streams hold is not
scanned at all; ``gc.unfreeze()`` hands it back to the oldest generation, where a cycle left by
a closed stream is collected by the collector's next full pass, as anything long-lived is anyway.

The signal is what the collector itself counts: the objects the young generation gained since
it was last collected or frozen (``gc.get_count()[0]``), read every tick of
:func:`router.collector.run`. Streams that are being opened hold thousands of them between two
ticks well before they reach the registry (a storm's first second builds thousands of
connections in step), so the open-stream count would say "storm" seconds too late.

- while the young generation gains at least ``storm_young`` objects a tick, freeze;
- once it has not for ``thaw_after_seconds``, or after ``thaw_every_objects`` were frozen (an
  endless storm), thaw, and freeze no more until the collector has made a full pass: a cycle
  frozen meanwhile is then collected before it could be frozen again, so what freezing keeps
  from the collector is bounded by ``thaw_every_objects``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FreezeAction = Literal["freeze", "thaw", "wait"]
"""What :meth:`FreezePolicy.tick` asks for: ``gc.freeze()``, ``gc.unfreeze()``, or nothing."""


@dataclass
class FreezePolicy:
    """The rule above, fed the young generation's count at each tick and the clock."""

    storm_young: int = 10_000
    """Objects gained within one 50 ms tick that make a storm (200,000 a second: about 800
    streams' worth; a router broadcasting to 10,000 idle streams gains far fewer). Below the
    young generation's threshold (50,000, router/cli.py), or the count never reaches it."""
    thaw_after_seconds: float = 10.0
    thaw_every_objects: int = 4_000_000
    """About 16,000 streams' worth (a 10,000-stream storm freezes 2.3 million objects)."""
    _frozen_objects: int = 0
    _last_storm_at: float | None = None
    _awaiting_full_pass: bool = False

    def tick(self, young: int, now: float) -> FreezeAction:
        if self._awaiting_full_pass:
            return "wait"
        if young >= self.storm_young:
            self._last_storm_at = now
            self._frozen_objects += young
            if self._frozen_objects >= self.thaw_every_objects:
                return self._thaw()
            return "freeze"
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
        self._last_storm_at, self._frozen_objects, self._awaiting_full_pass = None, 0, True
        return "thaw"
