"""One worker of ``serve --workers N``, started by :mod:`router.supervisor`, never by hand.

``python -m router.worker INDEX LISTENING READY OWN_PORT serve FLAGS...``: ``serve()`` on the
listening socket the supervisor passed down (descriptor ``LISTENING``) and, unless ``OWN_PORT``
is ``-``, also on a port of this worker alone; once it accepts connections it writes one JSON line
(its addresses) to descriptor ``READY`` and closes it. Its log lines carry ``"worker": INDEX``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from router.cli import build_parser, run_router
from router.config import Settings
from router.logs import configure_logging
from router.server import Listening, Running, serve

PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal this process gets when its parent dies."""


class _WorkerField(logging.Filter):
    """Stamps every log record with the worker's index."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _stop_with_the_supervisor() -> None:
    """A supervisor that is killed cannot drain its workers: have the kernel send each SIGTERM,
    so that they drain themselves instead of holding the port as orphans. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def run_worker(settings: Settings, listening: Listening, ready: int) -> None:
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(partial(serve, settings, listening=listening))
        os.write(ready, json.dumps({"addresses": running.addresses}).encode() + b"\n")
        os.close(ready)


def main(argv: Sequence[str] | None = None) -> int:
    index, listening, ready, own_port, *serve_argv = list(argv or sys.argv[1:])
    _stop_with_the_supervisor()
    settings = Settings.from_args(build_parser().parse_args(serve_argv))
    configure_logging(settings.log_level, settings.log_format)  # type: ignore[arg-type]
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(int(index)))
    where = Listening(int(listening), None if own_port == "-" else int(own_port))
    return run_router(partial(run_worker, settings, where, int(ready)))


if __name__ == "__main__":
    sys.exit(main())
