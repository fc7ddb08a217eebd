"""One task's wake-up call: what a session's writer sleeps on until there is something to write.

A memory channel of capacity 1 did the job, at about 2 KB per session (its state, both ends,
and what a waiting ``receive`` allocates), at 10,000 sessions 20 MB for a flag. A :class:`Wakeup`
is one slot: the sleeping task, or ``None``.
"""

from __future__ import annotations

import trio


class Wakeup:
    """:meth:`wait` sleeps until :meth:`wake`; one waiter at a time.

    A :meth:`wake` with no task asleep is lost: the caller knows whether one sleeps (a session's
    ``_writer_waiting`` says so), as with the channel it replaces, which was only sent to then.
    """

    __slots__ = ("_sleeper",)

    def __init__(self) -> None:
        self._sleeper: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        """Sleep until :meth:`wake`. Cancelled while asleep, it raises ``Cancelled`` and leaves
        nothing behind (a later :meth:`wake` is then lost). Always a checkpoint."""
        assert self._sleeper is None, "a Wakeup has one waiter at a time"
        self._sleeper = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._sleeper = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        """Wake the task asleep in :meth:`wait`, if any. Never blocks; not a checkpoint."""
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)
