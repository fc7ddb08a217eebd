"""`python -m bench.trio_wake`: what trio alone costs to wake one task per stream.

A broadcast wakes every session once per round of writes: the adapter puts a batch in its inbox
(``send_nowait``), trio schedules the task, and the task waits on its inbox again. This measures
that cycle with nothing else in it (tasks that only receive), so ``docs/performance.md`` can say
how much of a session's cost per round is the runtime's floor and how much is the router's.
"""

from __future__ import annotations

import argparse
import time

import trio
import trio.testing


async def _receive_forever(inbox: trio.MemoryReceiveChannel[int]) -> None:
    while True:
        await inbox.receive()


async def measure(tasks: int, rounds: int) -> float:
    """Microseconds per task and round: one ``send_nowait`` and one wake-up each."""
    inboxes = []
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            send, receive = trio.open_memory_channel[int](1)
            inboxes.append(send)
            nursery.start_soon(_receive_forever, receive)
        await trio.testing.wait_all_tasks_blocked()
        started = time.perf_counter()
        for _ in range(rounds):
            for inbox in inboxes:
                inbox.send_nowait(1)
            await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return 1e6 * elapsed / (tasks * rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    cost = trio.run(measure, args.tasks, args.rounds)
    print(f"{args.tasks} tasks: {cost:.1f} us per task and round (send_nowait + wake + receive)")


if __name__ == "__main__":
    main()
