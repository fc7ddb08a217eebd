"""The cyclic collector during connect storms: :class:`~router.core.collector.FreezePolicy`
applied to the process's collector, one task in the root nursery.

At its start (the router is listening, every start-up object built) it freezes once, as
router/cli.py did before the loop started, so start-up objects are never scanned either; then
every ``period_seconds`` it reads the young generation's count and freezes or thaws as the
policy says. It never blocks: both calls are constant time. On cancellation it thaws everything
frozen, so nothing frozen by it outlives it.
"""

from __future__ import annotations

import gc
import logging

import trio

from router.core.collector import FreezePolicy

PERIOD_SECONDS = 0.05
"""Often enough that a storm's objects are frozen before the collector's young generation
(50,000 objects, router/cli.py) fills: at 1,000 streams a second, 50 ms is about 15,000."""
STORM_YOUNG_THRESHOLD = 1_000_000
"""The young generation's threshold while a storm is frozen. A tick comes late in a storm (a
scheduling round carries a whole accepted batch: up to a second), and 50,000 young objects are
a few hundred streams' worth; at 1,000,000 the young generation is frozen before it fills, and
the cyclic garbage that may wait in it is still bounded (about as much as 4,000 streams hold)."""
OLDEST_GENERATION = 2
log = logging.getLogger(__name__)


async def run(
    policy: FreezePolicy | None = None,
    period_seconds: float = PERIOD_SECONDS,
) -> None:
    """Freeze and thaw as ``policy`` says until cancelled (then thaw, if frozen)."""
    rule = FreezePolicy() if policy is None else policy

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == OLDEST_GENERATION:
            rule.full_pass_done()

    thresholds = gc.get_threshold()
    gc.freeze()
    gc.callbacks.append(on_collection)
    try:
        while True:
            action = rule.tick(gc.get_count()[0], trio.current_time())
            if action == "freeze":
                gc.set_threshold(max(thresholds[0], STORM_YOUNG_THRESHOLD), *thresholds[1:])
                gc.freeze()
            elif action == "thaw":
                gc.unfreeze()
                gc.set_threshold(*thresholds)
                log.debug("collector thawed after a connect storm")
            await trio.sleep(period_seconds)
    finally:
        gc.callbacks.remove(on_collection)
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # the start's freeze too: in a test process, the test's own objects
