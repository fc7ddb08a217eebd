"""``serve()``: the one function that builds the router's nursery tree and runs it.

::

    root nursery
    ├── signal watcher          SIGINT / SIGTERM -> shutdown requested
    ├── hub                      (see actors/hub.py: consumer, adapter, sessions nursery)
    ├── outbox relay             with --outbox-dsn: outbox rows -> the bus
    └── HTTP server              hypercorn's trio worker serving the Quart-Trio app

Shutdown, when a signal arrives: every session sends ``server-shutdown`` (with a ``retry:`` hint)
and ends its response; the HTTP server stops accepting and lets in-flight requests finish; after
``shutdown_grace_seconds`` at most, the root is cancelled and with it everything still running.
``serve()`` then returns normally, so the process exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio
import trio_asyncio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from actors.hub import CursorBoundError, Hub, HubSettings
from actors.relay import Relay, RelaySettings
from actors.session import CloseReason, SessionSettings
from router.admission import Admission, AdmissionSettings
from router.auth import TokenVerifier
from router.bus.base import EventBus
from router.bus.kafka import KafkaBus, KafkaSettings
from router.bus.memory import MemoryBus
from router.bus.redis import RedisBusSettings, RedisStreamBus
from router.cache.base import ReplayCache
from router.cache.memory import MemoryReplayCache
from router.cache.redis import RedisReplayCache
from router.config import Settings
from router.core.cursor import MAX_CURSOR_LENGTH
from router.http.app import create_app
from router.http.asgi import RequestLifecycle
from router.metrics import Metrics
from router.outbox.base import OutboxStore
from router.outbox.postgres import PostgresOutbox
from router.outbox.sqlite import SqliteOutbox

log = logging.getLogger(__name__)


class ConfigurationError(Exception):
    """A setting that cannot work; the message is for the operator."""


def listening_socket(settings: Settings) -> int:
    """A bound TCP socket for hypercorn (``fd://``), returned as a file descriptor it will own.

    Accepted connections inherit ``TCP_USER_TIMEOUT``: the kernel aborts a connection whose data
    has gone unacknowledged, or unsent behind a zero window, for ``stalled_client_seconds``. That
    is the only thing that can end hypercorn's socket writes to a client that stopped reading
    (they are shielded from cancellation), so it is what bounds shutdown with such a client.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(
            socket.IPPROTO_TCP,
            socket.TCP_USER_TIMEOUT,
            round(settings.stalled_client_seconds * 1000),
        )
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {settings.host}:{settings.port}: {error}"
        ) from None
    return sock.detach()


ORDINARY_HEAD_BYTES = 16 * 1024
"""What a request head holds besides a resume cursor: request line, headers, cookies, a token
(hypercorn's own default for the whole head)."""
REQUEST_HEAD_LIMIT = 2 * MAX_CURSOR_LENGTH + ORDINARY_HEAD_BYTES
"""The longest request head read: a maximal cursor in ``Last-Event-ID`` and again in
``last_event_id`` (a client may send both), and the ordinary rest; a longer one is refused by
hypercorn before the app sees it."""

ACCEPTORS = 8
"""Tasks accepting connections, each on its own descriptor of the one listening socket."""


def hypercorn_config(settings: Settings, listening: Listening | None = None) -> Config:
    """hypercorn's configuration, bound to :func:`listening_socket` (or, in a worker, to the
    socket its supervisor bound, and to the worker's own port, see :class:`Listening`).

    The socket is handed over ``ACCEPTORS`` times, as duplicates of one descriptor: hypercorn runs
    an accept loop for each, and trio's accept loop takes one connection per scheduling round.
    When thousands of browsers reconnect at once, one loop could not empty the accept queue while
    every round also served the connections already in: the queue overflowed, the kernel dropped
    handshakes and clients waited out TCP's retransmission backoff. Duplicates share one queue
    (unlike SO_REUSEPORT, a second router cannot bind the port by mistake).
    """
    config = Config()
    descriptor = listening_socket(settings) if listening is None else listening.descriptor
    duplicates = [os.dup(descriptor) for _ in range(ACCEPTORS - 1)]
    config.bind = [f"fd://{fd}" for fd in (descriptor, *duplicates)]
    if listening is not None and listening.own_port is not None:
        own = listening_socket(dataclasses.replace(settings, port=listening.own_port))
        config.bind.append(f"fd://{own}")
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.keep_alive_timeout = settings.keep_alive_seconds
    config.h11_max_incomplete_size = REQUEST_HEAD_LIMIT
    config.backlog = 65535  # thousands of browsers reconnect at once (capped by net.core.somaxconn)
    config.accesslog = None  # the query string may hold a token: never log it raw
    config.errorlog = None
    return config


def token_verifier(settings: Settings) -> TokenVerifier:
    try:
        return TokenVerifier.from_key(
            secret=settings.jwt_secret,
            public_key_pem=(
                settings.jwt_public_key_file.read_bytes()
                if settings.jwt_public_key_file is not None
                else None
            ),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    except ValueError as error:
        raise ConfigurationError(
            f"{error} (--jwt-secret / SSE_ROUTER_JWT_SECRET or "
            "--jwt-public-key-file / SSE_ROUTER_JWT_PUBLIC_KEY_FILE)"
        ) from None


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a worker of ``--workers`` listens (see :mod:`router.supervisor`)."""

    descriptor: int
    """The listening socket its supervisor bound and every worker accepts from."""
    own_port: int | None = None
    """``--worker-ports``: a port of this worker alone (0: a free one), for its ``/metrics``."""


@dataclass(frozen=True, slots=True)
class Running:
    """What :func:`serve` reports once it accepts connections."""

    addresses: list[str]
    hub: Hub
    app: QuartTrio


async def serve(
    settings: Settings,
    *,
    shutdown_requested: trio.Event | None = None,
    listening: Listening | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the router until SIGINT/SIGTERM (or until ``shutdown_requested`` is set), on
    ``settings.host:port`` or, in a worker of ``--workers``, where ``listening`` says.

    ``task_status`` reports the bound addresses and the running parts. Raises
    :class:`ConfigurationError` before anything starts if the settings cannot work, or once the
    bus answers if its partitions cannot be held by a cursor.
    """
    verifier = token_verifier(settings)
    log.info("router starting", extra={"settings": settings.redacted()})
    async with AsyncExitStack() as resources:
        if settings.bus != "memory" or settings.cache != "memory":
            # aiokafka and redis-py run on asyncio: in a trio-asyncio loop around the tree.
            await resources.enter_async_context(trio_asyncio.open_loop())
        bus = event_bus(settings)
        resources.push_async_callback(bus.aclose)
        cache = replay_cache(settings, bus.source)
        resources.push_async_callback(cache.aclose)
        try:
            await _serve(settings, verifier, bus, cache, shutdown_requested, listening, task_status)
        except BaseExceptionGroup as group:
            too_wide, _ = group.split(CursorBoundError)
            if too_wide is None:
                raise
            raise ConfigurationError(_first_leaf(too_wide)) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> str:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else str(first)


def event_bus(settings: Settings) -> EventBus:
    if settings.bus == "redis":
        return RedisStreamBus(
            RedisBusSettings(
                url=settings.redis_url,
                streams=settings.redis_streams,
                key_prefix=settings.redis_key_prefix,
                max_length=settings.redis_stream_max_length,
            )
        )
    if settings.bus == "kafka":
        return KafkaBus(
            KafkaSettings(
                bootstrap=settings.kafka_bootstrap,
                topic=settings.kafka_topic,
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                request_timeout_ms=settings.kafka_request_timeout_ms,
                epoch_from_topic_name=settings.kafka_epoch == "topic-name",
            )
        )
    return MemoryBus(partitions=settings.memory_partitions, capacity=settings.memory_bus_capacity)


def outbox_opener(settings: Settings) -> Callable[[], OutboxStore] | None:
    """How to open the configured outbox (in a worker thread), or ``None`` without one."""
    dsn, table, mark = settings.outbox_dsn, settings.outbox_table, settings.outbox_mode == "mark"
    if dsn is None:
        return None
    if dsn.startswith("sqlite:///"):
        path = dsn.removeprefix("sqlite:///")
        return lambda: SqliteOutbox(path, table, mark=mark)
    return lambda: PostgresOutbox(dsn, table, parts=settings.outbox_parts, mark=mark)


def replay_cache(settings: Settings, source: str) -> ReplayCache:
    if settings.cache == "redis":
        return RedisReplayCache(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            source=source,
            max_events=settings.cache_max_events,
            max_age=settings.cache_max_age_seconds,
        )
    return MemoryReplayCache(
        max_events=settings.cache_max_events,
        max_age=settings.cache_max_age_seconds,
        source=source,
    )


async def _serve(
    settings: Settings,
    verifier: TokenVerifier,
    bus: EventBus,
    cache: ReplayCache,
    shutdown_requested: trio.Event | None,
    listening: Listening | None,
    task_status: trio.TaskStatus[Running],
) -> None:
    metrics = Metrics()
    hub = Hub(
        bus,
        cache,
        HubSettings(
            records_capacity=settings.records_buffer,
            bus_replay_limit=settings.bus_replay_limit,
            heartbeat_seconds=settings.heartbeat_seconds,
            fanout_pause_seconds=settings.fanout_pause_ms / 1000,
            session=SessionSettings(
                inbox_capacity=settings.session_buffer,
                retry_ms=settings.retry_ms,
                shutdown_retry_spread_ms=settings.shutdown_retry_spread_ms,
                log_sample_rate=settings.log_sample_rate,
            ),
        ),
        observer=metrics,
    )
    metrics.watch(bus, cache, hub.records_waiting)
    admission = Admission(
        verifier,
        AdmissionSettings(
            max_streams_per_user=settings.max_streams_per_user,
            connects_per_minute=settings.connects_per_minute,
            trusted_proxies=settings.trusted_proxies,
        ),
        metrics,
        streams_open=hub.registry.count_for_user,
        closing=lambda: hub.closing,
    )
    app = create_app(hub, admission, settings, metrics)
    if shutdown_requested is None:
        shutdown_requested = trio.Event()
    stop_http = trio.Event()
    http_stopped = trio.Event()

    async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await hypercorn_serve(
                RequestLifecycle(app, metrics),
                hypercorn_config(settings, listening),
                shutdown_trigger=stop_http.wait,
                task_status=task_status,
            )
        finally:
            http_stopped.set()

    async with trio.open_nursery() as root:
        root.start_soon(_watch_signals, shutdown_requested)
        await root.start(hub.run)
        open_outbox = outbox_opener(settings)
        if open_outbox is not None:
            relay_settings = RelaySettings(
                parts=settings.outbox_parts, poll_seconds=settings.outbox_poll_seconds
            )
            root.start_soon(Relay(open_outbox, bus, relay_settings, metrics).run)
        if listening is not None:
            # A worker shares its port with workers that may be serving already: it accepts
            # once it stands somewhere in the bus, since until then it would answer every resume
            # as truncated (see Hub.run), where the others could resume it exactly.
            await _first_of(hub.reading, shutdown_requested)
        bound: list[str] = await root.start(run_http)
        addresses = list(dict.fromkeys(bound))  # one address per acceptor: the same one
        task_status.started(Running(addresses, hub, app))
        log.info("router listening", extra={"addresses": addresses})
        await shutdown_requested.wait()
        log.info("router stopping", extra={"open_streams": len(hub.registry)})

        stop_http.set()  # no new connections from here on
        hub.close_sessions(CloseReason.SERVER_SHUTDOWN)  # and no new streams on open ones
        with trio.move_on_after(settings.shutdown_grace_seconds + 1):
            await http_stopped.wait()
        root.cancel_scope.cancel()


async def _first_of(*events: trio.Event) -> None:
    async with trio.open_nursery() as waiting:
        for event in events:
            waiting.start_soon(_set_then_cancel, event, waiting.cancel_scope)


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _watch_signals(shutdown_requested: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            shutdown_requested.set()
            return
