"""The cyclic collector during connect storms: the rule (router/core/collector.py) and the task
applying it to this process's collector (router/collector.py), on trio's mock clock."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import trio

from router import collector
from router.core.collector import FreezePolicy


class Cycle:
    """What a stream may leave behind: an object only a reference cycle keeps alive."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def router_thresholds() -> Iterator[tuple[int, ...]]:
    """The collector's thresholds as router/cli.py sets them, for the test's length."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_a_fast_growing_young_generation_is_frozen_and_thawed_after_a_quiet_while() -> None:
    policy = FreezePolicy(storm_young=10_000, thaw_after_seconds=10.0)
    assert policy.tick(500, 0.0) == "wait"  # a router going about its business
    assert policy.tick(30_000, 0.05) == "freeze"
    assert policy.tick(12_000, 0.10) == "freeze"
    assert policy.frozen
    assert policy.tick(800, 5.0) == "wait"
    assert policy.tick(800, 10.1) == "thaw"
    assert not policy.frozen
    assert policy.tick(800, 20.0) == "wait"  # nothing frozen: nothing to thaw


def test_an_endless_storm_is_thawed_every_so_many_objects_and_waits_for_a_full_pass() -> None:
    policy = FreezePolicy(storm_young=10_000, thaw_every_objects=100_000)
    actions = [policy.tick(40_000, 0.05 * step) for step in range(1, 5)]
    assert actions == ["freeze", "freeze", "thaw", "wait"]  # 120,000 frozen: thawed
    assert policy.tick(40_000, 0.25) == "wait"  # still storming: nothing frozen until a full pass
    policy.full_pass_done()
    assert policy.tick(40_000, 0.30) == "freeze"


async def test_a_cycle_left_by_each_stream_of_a_storm_is_collected_once_it_is_over(
    autojump_clock: trio.abc.Clock, router_thresholds: tuple[int, ...]
) -> None:
    left_behind: list[weakref.ref[Cycle]] = []
    held: list[list[object]] = []  # what the open streams hold: the young generation gains it
    thresholds = router_thresholds
    policy = FreezePolicy(storm_young=1_000, thaw_after_seconds=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run, policy)
        await trio.sleep(collector.PERIOD_SECONDS / 2)  # between its ticks
        for _ in range(20):  # a tick each: 50 streams opened, each leaving a cycle
            held.extend([[] for _ in range(100)] for _ in range(50))
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
    autojump_clock: trio.abc.Clock, router_thresholds: tuple[int, ...]
) -> None:
    thresholds = router_thresholds
    with trio.move_on_after(1.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector.run)
            await trio.sleep(0.5)
            assert gc.get_freeze_count() > 0  # its start's freeze
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
    cycle = weakref.ref(Cycle())
    gc.collect()
    assert cycle() is None
