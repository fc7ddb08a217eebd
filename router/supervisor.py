"""``serve --workers N``: one supervisor process above N worker processes on one port.

::

    supervisor (trio, this module)           binds the port once, listens, holds the socket
    ├── signal watcher                       SIGINT / SIGTERM -> stop every worker
    └── one slot per worker                  starts, watches, restarts its worker
          worker process (router/worker.py)  serve(): its own root nursery, hub, HTTP server,
                                             accepting from the supervisor's socket

Every worker is a router of its own, as a separate instance on the same host would be: it reads
the shared bus, appends to the shared replay cache, and accepts connections from the one listening
socket it inherited (the kernel hands each connection to whichever worker accepts it first). The
supervisor keeps that socket open while a worker restarts, so a connection that arrives meanwhile
waits in the accept queue for another worker instead of being refused.

A worker that dies is started again after a backoff. One that dies before it is ready, three
times in a row (or once with the exit code of a bad setting, 2), stops the supervisor: the other
workers are drained and the supervisor exits with that worker's code. On SIGTERM every worker is
sent SIGTERM and drains as a single router does (``server-shutdown`` to each stream, with a spread
``retry:``); one still running after its grace is killed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from router.config import ConfigurationError, Settings
from router.core.backoff import Backoff
from router.listener import listening_socket

log = logging.getLogger(__name__)

START_FAILURES_TOLERATED = 3
"""Deaths before ready, in a row, after which a worker is taken to be unable to start."""
CONFIGURATION_EXIT_CODE = 2
"""What a router exits with when a setting cannot work: starting it again cannot help."""
STEADY_SECONDS = 30.0
"""A worker up this long has started well: its next death restarts it after the shortest delay."""
KILL_MARGIN_SECONDS = 5.0
"""After SIGTERM a worker gets what a single router may take to stop (its shutdown grace, its last
second, and ``--stalled-client-seconds`` for a write to a client that stopped reading) plus this,
before it is killed."""
ACCEPT_BACKLOG = 65535
"""Of the shared socket (capped by ``net.core.somaxconn``), as a single router's."""


def workers_refusal(settings: Settings) -> str | None:
    """Why ``settings`` cannot run as several workers, or ``None`` when they can."""
    if settings.workers == 1:
        return None
    if settings.bus == "memory" or settings.cache == "memory":
        return (
            f"--workers {settings.workers} needs a bus and a replay cache the workers share: "
            "use --bus redis or --bus kafka, and --cache redis (the memory bus and the memory "
            "cache live inside one process, and each worker is a process of its own)"
        )
    if settings.worker_ports and settings.worker_ports + settings.workers - 1 > 65535:
        return f"--worker-ports {settings.worker_ports} leaves no port for every worker"
    return None


class WorkerStartError(Exception):
    """A worker died before it was ready too often; ``code`` is its last exit code."""

    def __init__(self, index: int, code: int, attempts: int) -> None:
        super().__init__(
            f"worker {index} exited with code {code} before it was ready"
            + (f", {attempts} times in a row" if attempts > 1 else "")
        )
        self.code = code


WorkerCommand = Callable[[int, int], Sequence[str]]
"""``(index, ready descriptor)`` -> the worker's command line."""


def router_worker_command(
    settings: Settings, serve_argv: Sequence[str], listening: int, lifeline: int
) -> WorkerCommand:
    """The command of worker ``index``: ``python -m router.worker`` with the ``serve`` flags the
    supervisor was given (the same environment too), as one worker, on the ``listening`` socket,
    watching the ``lifeline`` (see :mod:`router.worker`)."""

    def command(index: int, ready: int) -> list[str]:
        own = "-" if settings.worker_ports is None else str(_own_port(settings, index))
        worker = [str(index), str(listening), str(ready), str(lifeline), own]
        return [sys.executable, "-m", "router.worker", *worker, *serve_argv, "--workers", "1"]

    return command


def _own_port(settings: Settings, index: int) -> int:
    first = settings.worker_ports or 0
    return first + index if first else 0


@dataclass(frozen=True, slots=True)
class SlotSettings:
    grace_seconds: float
    """How long a worker may take to drain after SIGTERM before it is killed."""
    backoff_initial: float = 0.5
    backoff_maximum: float = 10.0


class WorkerSlot:
    """Worker ``index``: started, watched, restarted; stopped when the slot is cancelled."""

    def __init__(
        self,
        index: int,
        command: WorkerCommand,
        inherited: Sequence[int],
        settings: SlotSettings,
    ) -> None:
        self.index = index
        self._inherited = tuple(inherited)
        self._command = command
        self._settings = settings
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_maximum)
        self.starts = 0
        self.readies = 0
        self.process: trio.Process | None = None
        """The worker's latest process."""

    async def run(self) -> None:
        """Keep the worker running; raises :class:`WorkerStartError` when it cannot start."""
        failures_at_start = 0
        ready_at = -math.inf
        while True:
            process, ready = await self._start()
            try:
                if ready is not None:
                    log.info(
                        "worker ready",
                        extra={"worker": self.index, "pid": process.pid, **ready},
                    )
                    failures_at_start = 0
                    ready_at = trio.current_time()
                    self.readies += 1
                code = await process.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(process)
            if ready is None:
                failures_at_start += 1
                if code == CONFIGURATION_EXIT_CODE or failures_at_start >= START_FAILURES_TOLERATED:
                    raise WorkerStartError(self.index, code, failures_at_start)
            elif trio.current_time() - ready_at >= STEADY_SECONDS:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.warning(
                "worker exited",
                extra={
                    "worker": self.index,
                    "pid": process.pid,
                    "code": code,
                    "was_ready": ready is not None,
                    "restart_in_seconds": round(delay, 3),
                },
            )
            await trio.sleep(delay)

    async def _start(self) -> tuple[trio.Process, dict[str, object] | None]:
        """Start the worker and wait until it says it is ready (what it reported) or dies
        first (``None``)."""
        reading, writing = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                list(self._command(self.index, writing)),
                pass_fds=(*self._inherited, writing),
                # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
                # stops every worker once, with SIGTERM.
                start_new_session=True,
            )
        except BaseException:
            os.close(reading)
            raise
        finally:
            os.close(writing)
        self.starts += 1
        self.process = process
        try:
            report = await _read_line(reading)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop(process)
            raise
        if not report:
            return process, None
        try:
            reported = json.loads(report)
        except ValueError:
            reported = {}
        return process, reported if isinstance(reported, dict) else {}

    async def _stop(self, process: trio.Process) -> None:
        """SIGTERM, the worker's grace to drain, then SIGKILL."""
        if process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(self._settings.grace_seconds):
            await process.wait()
        if process.returncode is None:
            log.warning("worker killed after its grace", extra={"worker": self.index})
            process.kill()
            await process.wait()


async def _read_line(descriptor: int) -> bytes:
    """One line from a pipe, or what came before the writer closed it."""
    received = b""
    async with trio.lowlevel.FdStream(descriptor) as stream:
        while not received.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            received += chunk
    return received.strip()


def shared_listening_socket(settings: Settings) -> int:
    """The port every worker accepts from, listening before any worker runs."""
    descriptor = listening_socket(settings)
    listener = socket.socket(fileno=descriptor)
    listener.listen(ACCEPT_BACKLOG)
    return listener.detach()


async def supervise(
    settings: Settings,
    command: WorkerCommand,
    inherited: Sequence[int],
    *,
    slot_settings: SlotSettings | None = None,
    task_status: trio.TaskStatus[list[WorkerSlot]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``settings.workers`` workers (each given the ``inherited`` descriptors) until SIGINT or
    SIGTERM, then stop them all. Raises :class:`WorkerStartError` (after stopping the rest)
    when a worker cannot start."""
    slot_settings = slot_settings or SlotSettings(
        grace_seconds=settings.shutdown_grace_seconds
        + 1
        + settings.stalled_client_seconds
        + KILL_MARGIN_SECONDS
    )
    slots = [
        WorkerSlot(index, command, inherited, slot_settings) for index in range(settings.workers)
    ]
    failure: list[WorkerStartError] = []
    async with trio.open_nursery() as nursery:

        async def keep(slot: WorkerSlot) -> None:
            try:
                await slot.run()
            except WorkerStartError as error:
                failure.append(error)
                nursery.cancel_scope.cancel()

        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        for slot in slots:
            nursery.start_soon(keep, slot)
        task_status.started(slots)
    if failure:
        raise failure[0]


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            log.info("supervisor stopping", extra={"signal": signal.Signals(received).name})
            scope.cancel()
            return


def main(settings: Settings, serve_argv: Sequence[str]) -> int:
    """``sse-router serve --workers N``: the process's exit code."""
    refusal = workers_refusal(settings)
    if refusal is not None:
        print(f"sse-router: {refusal}", file=sys.stderr)
        return CONFIGURATION_EXIT_CODE
    try:
        descriptor = shared_listening_socket(settings)
    except ConfigurationError as error:
        print(f"sse-router: {error}", file=sys.stderr)
        return CONFIGURATION_EXIT_CODE
    log.info("supervisor starting", extra={"workers": settings.workers, "port": _port(descriptor)})
    # Never written to: its other end reads end-of-file when this process is gone, however it
    # went, and the workers then stop by themselves instead of holding the port as orphans.
    lifeline, lifeline_held = os.pipe()
    command = router_worker_command(settings, serve_argv, descriptor, lifeline)
    try:
        trio.run(supervise, settings, command, (descriptor, lifeline))
    except WorkerStartError as error:
        print(f"sse-router: {error}; stopped every worker", file=sys.stderr)
        return error.code if error.code > 0 else 1
    finally:
        for fd in (descriptor, lifeline, lifeline_held):
            os.close(fd)
    return 0


def _port(descriptor: int) -> int:
    probe = socket.socket(fileno=os.dup(descriptor))
    try:
        return int(probe.getsockname()[1])
    finally:
        probe.close()
