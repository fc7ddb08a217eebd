"""hypercorn's trio server, with accept loops that empty the listening socket's queue each turn.

trio's accept loop (``trio.serve_listeners``) takes one connection per scheduling round, and a
round lasts as long as every task that is ready takes: in a connect storm, every connection
already in. So the loop accepted about as fast as the router admitted streams, the kernel's
accept queue (``somaxconn``, 4,096 by default) filled, and the handshakes past it were dropped:
those clients waited out TCP's retransmissions (1 s, 3 s, 7 s...), and the unlucky ones failed.
On 10,000 clients connecting at once here, with the default backlog: 40,803 dropped handshakes,
14 failed connections and 29 s, where a loop that empties the queue each turn saw 148 and 0, in
16 s (docs/performance.md, "Opening streams"). An accepted connection costs a descriptor and a
waiting task; one left in the queue costs its client seconds.

:class:`DrainingListener` accepts the first connection the way trio does (waiting, with trio's
handling of errors), then takes whatever else is queued without waiting, up to
:data:`ACCEPT_BATCH`, and hands those out next without a checkpoint: the loop spawns the whole
batch's handlers in one step.

:func:`serve_http` is ``hypercorn.trio.serve`` with these listeners. hypercorn has no public way
to give it listeners, so this builds its server from its own parts (``TCPServer``,
``WorkerContext``, ``Lifespan``), the way ``hypercorn.trio.run.worker_serve`` does: a reach into
its private modules, checked at start (:func:`fallback_reason`). When they are not in the shape
this knows, or the server is TLS or QUIC, it serves with hypercorn's own ``serve`` instead,
which works as before and accepts one connection per round: the fallback is counted
(``sse_accept_fallbacks_total``) and logged once. ``tests/test_accept.py`` proves the draining
path is the one taken on the installed hypercorn.
"""

from __future__ import annotations

import inspect
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from router.core.observer import NO_OBSERVER, AcceptFallback, Observer

log = logging.getLogger(__name__)

ACCEPT_BATCH = 1024
"""Connections one listener takes from the queue in one turn, whose handlers then start in one
step (spawning 1,024 bare trio tasks took 5 ms of CPU here): a quarter of a default-sized
queue. Handing them out a few per round instead, so that the loop came back to the kernel's
queue every round, did no better on a busy machine (docs/performance.md)."""

_KNOWN_PARAMETERS = {
    "TCPServer": ["app", "config", "context", "state", "stream"],
    "WorkerContext": ["max_requests"],
    "Lifespan": ["app", "config", "state"],
}
"""The hypercorn parts :func:`serve_http` builds on, with the parameters it passes them
(hypercorn 0.17 and 0.18)."""


class DrainingListener(trio.abc.Listener[trio.SocketStream]):
    """A listener on ``sock`` (bound and listening) whose :meth:`accept` waits only when
    nothing is queued; the connections it took along the way come out without a checkpoint.

    On cancellation while waiting, nothing is lost: the connections stay in the kernel's queue.
    Closing it closes the connections it holds but has not handed out.
    """

    def __init__(self, sock: socket.socket, batch: int = ACCEPT_BATCH) -> None:
        self._socket = sock
        self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self._batch = batch
        self._ready: deque[trio.SocketStream] = deque()
        self.batched = 0
        """Connections taken without waiting, after a first one (for tests and figures)."""

    async def accept(self) -> trio.SocketStream:
        if self._ready:
            return self._ready.popleft()
        stream = await self._listener.accept()
        self._take_queued()
        return stream

    def _take_queued(self) -> None:
        for _ in range(self._batch - 1):
            try:
                connection, _ = self._socket.accept()  # the socket is non-blocking (trio's)
            except OSError:
                # The queue is empty (BlockingIOError), or an error the next waiting accept
                # meets with trio's handling of it (a connection aborted, descriptors run out).
                return
            self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(connection)))
            self.batched += 1

    async def aclose(self) -> None:
        while self._ready:
            self._ready.popleft().socket.close()
        await self._listener.aclose()


def fallback_reason(config: Config) -> AcceptFallback | None:
    """Why :func:`serve_http` would serve with hypercorn's own loop, or ``None``."""
    if config.ssl_enabled or config.quic_bind or config.max_requests is not None:
        return AcceptFallback.NOT_PLAIN_HTTP
    parts = _hypercorn_parts()
    if parts is None:
        return AcceptFallback.NOT_HYPERCORN
    for name, expected in _KNOWN_PARAMETERS.items():
        if list(inspect.signature(parts[name]).parameters) != expected:
            return AcceptFallback.NOT_HYPERCORN
    return None


def _hypercorn_parts() -> dict[str, Any] | None:
    try:
        from hypercorn.trio.lifespan import Lifespan
        from hypercorn.trio.tcp_server import TCPServer
        from hypercorn.trio.worker_context import WorkerContext
    except ImportError:
        return None
    return {"TCPServer": TCPServer, "WorkerContext": WorkerContext, "Lifespan": Lifespan}


_fallbacks_logged: set[AcceptFallback] = set()


async def serve_http(
    app: ASGIFramework,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    observer: Observer = NO_OBSERVER,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` as ``hypercorn.trio.serve`` does, until ``shutdown_trigger`` returns, then
    let requests in flight finish for ``config.graceful_timeout`` at most; ``task_status`` gets
    the bound addresses. Cancelled, it stops at once, like hypercorn's."""
    reason = fallback_reason(config)
    if reason is not None:
        observer.accept_fell_back(reason)
        if reason not in _fallbacks_logged:
            _fallbacks_logged.add(reason)
            log.warning(
                "connections accepted one per scheduling round (hypercorn's loop)",
                extra={"reason": reason.value},
            )
        await hypercorn_serve(
            app, config, shutdown_trigger=shutdown_trigger, task_status=task_status
        )
        return
    await _serve_draining(app, config, shutdown_trigger, task_status)


async def _serve_draining(
    app: ASGIFramework,
    config: Config,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """hypercorn 0.17/0.18's ``worker_serve`` for plain HTTP, with :class:`DrainingListener`."""
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.statsd import StatsdLogger
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners, binds = [], []
            for sock in config.create_sockets().insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(DrainingListener(sock))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            handler = partial(
                TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())
            )
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners, handler, listeners, handler_nursery=server_nursery
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
