"""``serve()``: the one function that builds the router's nursery tree and runs it.

The root nursery holds the HTTP server and a signal watcher. SIGINT or SIGTERM asks the HTTP server
to shut down gracefully; if it has not finished within the grace period the root is cancelled.
Either way ``serve()`` returns normally, so the process exits 0.
"""

from __future__ import annotations

import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from router.config import Settings
from router.http.app import create_app


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.accesslog = None
    return config


async def serve(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the router until SIGINT/SIGTERM. ``task_status`` reports the bound addresses."""
    shutdown_requested = trio.Event()

    async with trio.open_nursery() as root:
        root.start_soon(_watch_signals, shutdown_requested)
        addresses = await root.start(
            lambda task_status: hypercorn_serve(
                create_app(),
                hypercorn_config(settings),
                shutdown_trigger=shutdown_requested.wait,
                task_status=task_status,
            )
        )
        task_status.started(addresses)
        await shutdown_requested.wait()
        # hypercorn drains for up to graceful_timeout; past a little more, stop waiting for it.
        root.cancel_scope.deadline = trio.current_time() + settings.shutdown_grace_seconds + 1


async def _watch_signals(shutdown_requested: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            shutdown_requested.set()
            return
