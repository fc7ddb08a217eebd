"""``serve()``: the one function that builds the router's nursery tree and runs it.

::

    root nursery
    ├── signal watcher          SIGINT / SIGTERM -> shutdown requested
    ├── reload watcher          SIGHUP -> the --address-rules file read again
    ├── hub                      (see actors/hub.py: consumer, adapter, sessions nursery)
    ├── health monitor           measures load, walks the overload ladder (actors/overload.py)
    ├── outbox relay             with --outbox-dsn: outbox rows -> the bus (through its breaker)
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
import resource
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio
import trio_asyncio
from hypercorn.config import Config
from quart_trio import QuartTrio

from actors.hub import CursorBoundError, Hub, HubSettings
from actors.overload import OverloadMonitor, OverloadSettings
from actors.relay import Relay, RelaySettings
from actors.session import CloseReason, SessionSettings
from router import collector, heap_probe
from router.address_gate import AddressGate
from router.admission import Admission, AdmissionSettings
from router.auth import CachedVerifier, TokenVerifier
from router.bus.base import EventBus
from router.bus.kafka import KafkaBus, KafkaSettings
from router.bus.memory import MemoryBus
from router.bus.redis import RedisBusSettings, RedisStreamBus
from router.cache.base import ReplayCache
from router.cache.controls import ControlStore, ProcessControls
from router.cache.memory import MemoryReplayCache
from router.cache.redis import RedisReplayCache
from router.cache.redis_controls import RedisControls
from router.config import ConfigurationError, Settings
from router.core.address_rules import AddressRulesError
from router.core.admission import StreamCaps
from router.core.control import DEFAULT_HOLD_SECONDS, AccessRules
from router.core.request_bounds import HARD_HEAD_LIMIT
from router.http.accept import serve_http
from router.http.app import create_app
from router.http.asgi import RequestLifecycle
from router.http.settings import HTTPSettings
from router.listener import listening_socket
from router.metrics import Metrics
from router.outbox.base import OutboxStore
from router.outbox.postgres import PostgresOutbox
from router.outbox.sqlite import SqliteOutbox
from router.resident import resident_bytes

log = logging.getLogger(__name__)


ACCEPTORS = 8
"""Tasks accepting connections, each on its own descriptor of the one listening socket."""


WS_MAX_MESSAGE_BYTES = 64 * 1024
"""The largest WebSocket message hypercorn takes from a client."""


def hypercorn_config(settings: Settings, listening: Listening | None = None) -> Config:
    """hypercorn's configuration, bound to :func:`listening_socket` (or, in a worker, to the
    socket its supervisor bound, and to the worker's own port, see :class:`Listening`).

    The socket is handed over ``ACCEPTORS`` times, as duplicates of one descriptor, each with an
    accept loop of its own. Each loop empties the queue when it runs (router/http/accept.py);
    with hypercorn's own loop (its fallback), which takes one connection per scheduling round,
    one loop could not empty the queue while every round also served the connections already in,
    and the kernel dropped handshakes past ``somaxconn``. Duplicates share one queue (unlike
    SO_REUSEPORT, a second router cannot bind the port by mistake).
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
    # A WebSocket's heartbeat is a ping from hypercorn; hypercorn answers the client's pings too.
    config.websocket_ping_interval = settings.heartbeat_seconds
    # A client message is small (router/core/ws_client.py): hypercorn closes the socket (1009)
    # before it buffers more, where its default would hold 16 MiB per socket.
    config.websocket_max_message_size = WS_MAX_MESSAGE_BYTES
    # Past this hypercorn answers a bare 431; below it, the app's 431 says why (request_bounds).
    config.h11_max_incomplete_size = HARD_HEAD_LIMIT
    # No read_timeout: it would end an event stream whose client, rightly, sends nothing. A
    # connection that never completes a request head (slowloris) is closed by keep_alive_timeout,
    # which runs from the connection's start until its first request head is read whole.
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
            max_age_seconds=settings.max_token_age,
        )
    except ValueError as error:
        raise ConfigurationError(
            f"{error} (--jwt-secret / SSE_ROUTER_JWT_SECRET or "
            "--jwt-public-key-file / SSE_ROUTER_JWT_PUBLIC_KEY_FILE)"
        ) from None


SPARE_DESCRIPTORS = 256
"""Descriptors besides the streams': the listening socket and its duplicates, the bus's and the
cache's connections, requests that are not streams."""


def _warn_of_too_few_descriptors(max_streams: int) -> None:
    """Every stream is a socket: an open-files limit below ``--max-streams`` makes the kernel,
    not the front door, refuse the streams past it (accept fails; no client is told why)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_streams + SPARE_DESCRIPTORS:
        log.warning(
            "the open-files limit is below --max-streams: raise it (ulimit -n, LimitNOFILE=)"
            " or lower --max-streams",
            extra={"open_files_limit": soft, "max_streams": max_streams},
        )


def address_gate(settings: Settings) -> AddressGate:
    try:
        return AddressGate(settings.address_rules)
    except AddressRulesError as error:
        raise ConfigurationError(f"{error} (--address-rules / SSE_ROUTER_ADDRESS_RULES)") from None


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
    overload: OverloadMonitor


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
    gate = address_gate(settings)
    if heap_probe.requested_path() is not None:  # debug only: see router/heap_probe.py
        heap_probe.start()
    log.info("router starting", extra={"settings": settings.redacted()})
    _warn_of_too_few_descriptors(settings.max_streams)
    async with AsyncExitStack() as resources:
        if settings.bus != "memory" or settings.cache != "memory":
            # aiokafka and redis-py run on asyncio: in a trio-asyncio loop around the tree.
            await resources.enter_async_context(trio_asyncio.open_loop())
        bus = event_bus(settings)
        resources.push_async_callback(bus.aclose)
        cache = replay_cache(settings, bus.source)
        resources.push_async_callback(cache.aclose)
        controls = control_store(settings)
        resources.push_async_callback(controls.aclose)
        try:
            await _serve(
                settings,
                verifier,
                gate,
                bus,
                cache,
                controls,
                shutdown_requested,
                listening,
                task_status,
            )
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
    return MemoryBus(
        partitions=settings.memory_partitions,
        capacity=settings.memory_bus_capacity,
        max_bytes=settings.memory_bus_max_bytes,
    )


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
            max_bytes=settings.cache_max_bytes,
        )
    return MemoryReplayCache(
        max_events=settings.cache_max_events,
        max_bytes=settings.cache_max_bytes,
        max_age=settings.cache_max_age_seconds,
        source=source,
    )


def control_store(settings: Settings) -> ControlStore:
    """Where controls are kept beyond the process: beside the replay cache."""
    if settings.cache == "redis":
        return RedisControls(settings.redis_url, key_prefix=settings.redis_key_prefix)
    return ProcessControls()


async def _serve(
    settings: Settings,
    verifier: TokenVerifier,
    gate: AddressGate,
    bus: EventBus,
    cache: ReplayCache,
    controls: ControlStore,
    shutdown_requested: trio.Event | None,
    listening: Listening | None,
    task_status: trio.TaskStatus[Running],
) -> None:
    metrics = Metrics()
    gate.observer = metrics
    hub = Hub(
        bus,
        cache,
        HubSettings(
            records_buffer=settings.records_buffer,
            bus_replay_limit=settings.bus_replay_limit,
            replay_concurrency=settings.replay_concurrency,
            heartbeat_seconds=settings.heartbeat_seconds,
            fanout_pause_seconds=settings.fanout_pause_ms / 1000,
            session=SessionSettings(
                session_buffer=settings.session_buffer,
                session_buffer_bytes=settings.session_buffer_bytes or None,
                retry_ms=settings.retry_ms,
                shutdown_retry_spread_ms=settings.shutdown_retry_spread_ms,
                log_sample_rate=settings.log_sample_rate,
            ),
            bus_breaker=settings.bus_breaker,
        ),
        observer=metrics,
        access=AccessRules(settings.max_token_age or DEFAULT_HOLD_SECONDS),
        controls=controls,
    )
    overload = OverloadMonitor(
        lambda: hub.registry,
        lambda: hub.replays_in_flight,
        OverloadSettings(thresholds=settings.overload_thresholds, ladder=settings.overload_ladder),
        metrics,
        resident_bytes=resident_bytes,
    )
    metrics.watch(bus, cache, hub.records_waiting)
    metrics.watch_controls(lambda: hub.access.held(hub.wall_clock()), lambda: controls.errors)
    tokens = CachedVerifier(verifier, settings.token_cache_size)
    metrics.watch_token_cache(tokens.cache)
    admission = Admission(
        tokens,
        AdmissionSettings(
            caps=StreamCaps(
                per_instance=settings.max_streams,
                per_address=settings.max_streams_per_address,
                per_user=settings.max_streams_per_user,
            ),
            connects_per_minute=settings.connects_per_minute,
            bad_tokens_per_minute=settings.bad_tokens_per_minute,
            trusted_proxies=settings.trusted_proxies,
        ),
        metrics,
        streams_open=hub.registry.open_streams,
        closing=lambda: hub.closing,
        access=hub.access,
        wall_clock=lambda: hub.wall_clock(),  # read each time: the hub's is the one clock
        address_rules=lambda: gate.rules,
        overloaded=lambda: overload.refusing,
    )
    http = HTTPSettings(
        cors_origins=settings.cors_origins,
        publish_max_bytes=settings.publish_max_bytes,
        publish_max_batch=settings.publish_max_batch,
        ws_auth_timeout_seconds=settings.ws_auth_timeout_seconds,
        ws_messages_per_second=settings.ws_messages_per_second,
        ws_pong_timeout_seconds=settings.ws_pong_timeout_seconds,
    )
    app = create_app(hub, admission, http, metrics, overload)
    if shutdown_requested is None:
        shutdown_requested = trio.Event()
    stop_http = trio.Event()
    http_stopped = trio.Event()

    async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve_http(
                RequestLifecycle(app, metrics),
                hypercorn_config(settings, listening),
                shutdown_trigger=stop_http.wait,
                observer=metrics,
                task_status=task_status,
            )
        finally:
            http_stopped.set()

    async with trio.open_nursery() as root:
        root.start_soon(_watch_signals, shutdown_requested)
        root.start_soon(_reload_on_hangup, gate)
        probe = heap_probe.requested_path()
        if probe is not None:
            root.start_soon(heap_probe.dump_on_signal, probe)
        await root.start(hub.run)
        root.start_soon(overload.run)
        open_outbox = outbox_opener(settings)
        if open_outbox is not None:
            relay_settings = RelaySettings(
                parts=settings.outbox_parts, poll_seconds=settings.outbox_poll_seconds
            )
            root.start_soon(Relay(open_outbox, hub.publisher, relay_settings, metrics).run)
        if listening is not None:
            # A worker shares its port with workers that may be serving already: it accepts
            # once it stands somewhere in the bus, since until then it would answer every resume
            # as truncated (see Hub.run), where the others could resume it exactly.
            await _first_of(hub.reading, shutdown_requested)
        bound: list[str] = await root.start(run_http)
        root.start_soon(collector.run)  # once every start-up object is built
        addresses = list(dict.fromkeys(bound))  # one address per acceptor: the same one
        task_status.started(Running(addresses, hub, app, overload))
        log.info("router listening", extra={"addresses": addresses})
        await shutdown_requested.wait()
        log.info("router stopping", extra={"open_streams": len(hub.registry)})

        stop_http.set()  # no new connections from here on
        hub.close_sessions(CloseReason.SERVER_SHUTDOWN)  # and no new streams on open ones
        with trio.move_on_after(settings.shutdown_grace_seconds + 1):
            await http_stopped.wait()
        root.cancel_scope.cancel()


async def _reload_on_hangup(gate: AddressGate) -> None:
    """SIGHUP: read the address rules again; open streams are not touched."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            gate.reload()


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
