"""The session writer's one-slot wake-up call (actors/wakeup.py)."""

from __future__ import annotations

import trio
import trio.testing

from actors.wakeup import Wakeup


async def test_wake_wakes_the_task_asleep_and_only_once() -> None:
    wakeup, woken = Wakeup(), []

    async def sleeper() -> None:
        await wakeup.wait()
        woken.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        wakeup.wake()
        wakeup.wake()  # nobody asleep any more: lost, and harmless
    assert len(woken) == 1


async def test_a_wake_with_nobody_asleep_is_lost(autojump_clock: trio.testing.MockClock) -> None:
    wakeup = Wakeup()
    wakeup.wake()
    with trio.move_on_after(5) as waited:
        await wakeup.wait()
    assert waited.cancelled_caught


async def test_a_sleeper_cancelled_leaves_the_slot_free(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wakeup = Wakeup()
    with trio.move_on_after(1):
        await wakeup.wait()
    wakeup.wake()  # nobody to wake: the cancelled sleeper is not rescheduled twice
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wakeup.wait)  # a new sleeper may take the slot
        await trio.testing.wait_all_tasks_blocked()
        wakeup.wake()
