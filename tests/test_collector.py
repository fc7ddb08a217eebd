"""The cyclic collector during connect storms: the rule (router/core/collector.py) and the task
applying it to this process's collector (router/collector.py), on trio's mock clock."""

from __future__ import annotations

import gc
import weakref

import trio

from router import collector
from router.core.collector import FreezePolicy


class Cycle:
    """What a stream may leave behind: an object only a reference cycle keeps alive."""

    def __init__(self) -> None:
        self.me = self


def test_opening_fast_freezes_and_quiet_thaws_after_a_while() -> None:
    policy = FreezePolicy(storm_opens=20, thaw_after_seconds=10.0, thaw_every_opens=1_000)
    assert policy.tick(5, 0.0) == "wait"  # a few streams: not a storm
    assert policy.tick(30, 0.05) == "freeze"
    assert policy.tick(60, 0.10) == "freeze"
    assert policy.frozen
    assert policy.tick(61, 5.0) == "wait"
    assert policy.tick(61, 10.1) == "thaw"
    assert not policy.frozen


def test_an_endless_storm_is_thawed_every_so_many_opens_and_waits_for_a_full_pass() -> None:
    policy = FreezePolicy(storm_opens=20, thaw_after_seconds=10.0, thaw_every_opens=100)
    actions = [policy.tick(50 * step, 0.05 * step) for step in range(1, 4)]
    assert actions == ["freeze", "thaw", "wait"]  # 100 opened while frozen: thawed
    assert policy.tick(200, 0.20) == "wait"  # still opening: nothing frozen before a full pass
    policy.full_pass_done()
    assert policy.tick(250, 0.25) == "freeze"


def test_streams_closing_while_open_streams_shrink_are_no_storm() -> None:
    policy = FreezePolicy(storm_opens=20)
    assert policy.tick(10_000, 0.0) == "freeze"
    assert policy.tick(0, 0.05) == "wait"


async def test_a_cycle_left_by_each_stream_of_a_storm_is_collected_once_it_is_over(
    autojump_clock: trio.abc.Clock,
) -> None:
    open_streams = 0
    left_behind: list[weakref.ref[Cycle]] = []
    thresholds = gc.get_threshold()
    policy = FreezePolicy(storm_opens=20, thaw_after_seconds=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run, lambda: open_streams, policy)
        await trio.sleep(collector.PERIOD_SECONDS / 2)  # between its ticks
        for _ in range(20):  # one tick each: 50 streams opened, each leaving a cycle
            open_streams += 50
            left_behind.extend(weakref.ref(Cycle()) for _ in range(50))
            await trio.sleep(collector.PERIOD_SECONDS)
        assert gc.get_threshold()[0] == collector.STORM_YOUNG_THRESHOLD
        gc.collect()
        assert all(ref() is not None for ref in left_behind)  # frozen: not scanned
        await trio.sleep(11.0)  # the storm is over
        assert gc.get_threshold() == thresholds
        gc.collect()  # the collector's next full pass, as it comes under these settings
        assert all(ref() is None for ref in left_behind)
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0


async def test_what_it_froze_is_thawed_when_it_is_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    open_streams = 0
    thresholds = gc.get_threshold()
    with trio.move_on_after(1.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector.run, lambda: open_streams)
            open_streams = 1_000
            await trio.sleep(0.5)
            assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
    cycle = weakref.ref(Cycle())
    gc.collect()
    assert cycle() is None
