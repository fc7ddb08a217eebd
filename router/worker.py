"""One worker of ``serve --workers N``, started by :mod:`router.supervisor`, never by hand.

``python -m router.worker INDEX LISTENING READY LIFELINE OWN_PORT serve FLAGS...``: ``serve()``
on the listening socket the supervisor passed down (descriptor ``LISTENING``) and, unless
``OWN_PORT`` is ``-``, also on a port of this worker alone; once it accepts connections it writes
one JSON line (its addresses) to descriptor ``READY`` and closes it. It stops on SIGTERM, as any
router, or when ``LIFELINE`` (a pipe) ends: the supervisor is gone. Its log lines carry
``"worker": INDEX``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial

import trio

from router.cli import build_parser, run_router
from router.config import Settings
from router.logs import configure_logging
from router.server import Listening, Running, serve

log = logging.getLogger(__name__)


class _WorkerField(logging.Filter):
    """Stamps every log record with the worker's index."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


async def run_worker(settings: Settings, listening: Listening, ready: int, lifeline: int) -> None:
    """``serve()`` until SIGTERM, or until the supervisor is gone."""
    stop = trio.Event()

    async def serve_then_end(task_status: trio.TaskStatus[Running]) -> None:
        await serve(settings, shutdown_requested=stop, listening=listening, task_status=task_status)
        nursery.cancel_scope.cancel()  # the lifeline watcher

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_lifeline, lifeline, stop)
        running: Running = await nursery.start(serve_then_end)
        os.write(ready, json.dumps({"addresses": running.addresses}).encode() + b"\n")
        os.close(ready)


async def _watch_lifeline(lifeline: int, stop: trio.Event) -> None:
    """The supervisor never writes to the lifeline: it reads end-of-file once the supervisor is
    gone (killed, say), and nobody is left to stop this worker but itself.

    (Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that started the process ends, and trio
    starts processes from worker threads that end when idle.)"""
    async with trio.lowlevel.FdStream(lifeline) as stream:
        while await stream.receive_some():
            pass
    log.warning("supervisor gone: stopping")
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    index, listening, ready, lifeline, own_port, *serve_argv = list(argv or sys.argv[1:])
    settings = Settings.from_args(build_parser().parse_args(serve_argv))
    configure_logging(settings.log_level, settings.log_format)  # type: ignore[arg-type]
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(int(index)))
    where = Listening(int(listening), None if own_port == "-" else int(own_port))
    return run_router(partial(run_worker, settings, where, int(ready), int(lifeline)))


if __name__ == "__main__":
    sys.exit(main())
