"""Router settings: command-line flags, each with an ``SSE_ROUTER_*`` environment twin.

A flag given on the command line wins over its environment variable, which wins over the default.
Every value is validated at start (argparse converts a string default exactly like a flag), so a
bad setting stops the process with a clear message instead of failing later inside an actor.

A default is written once. Where the part that uses a knob has a default of its own (a session's
inbox, the hub's heartbeat, the Kafka fetch wait...), that part owns it and :class:`Settings`
reads it from there, so a test or a benchmark that builds the part alone gets what production
gets, and ``router/core`` stays importable without this module. Where every caller passes the
value (the HTTP layer's and the front door's settings, the stream caps, the logging), the part
takes no default and the one written here is the only one. A part's neutral default (``None``:
no bound, ``0``: no spread) is not a second copy of the flag's: it is what the part does when
nobody configured it. ``tests/test_config_defaults.py`` holds every flag to one of these.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from actors.settings import FANOUT_PAUSE_ABOVE, HubSettings, RelaySettings
from router.bus import memory as memory_bus
from router.bus.settings import KafkaSettings, RedisBusSettings
from router.core.breaker import BreakerSettings
from router.core.cursor import check_partition
from router.core.inbox import TICKS_PER_HEARTBEAT
from router.core.overload import LadderSettings, Thresholds
from router.core.session_settings import SessionSettings
from router.core.ws_client import MESSAGE_BURST

ENV_PREFIX = "SSE_ROUTER_"
DEFAULT_REDIS_STREAMS = ("sse-events",)

# The parts' own defaults, which the flags below read (see the module's docstring). The Kafka and
# Redis bus settings need an address to be built: only their defaults are read from these.
_SESSION, _HUB, _RELAY = SessionSettings(), HubSettings(), RelaySettings()
_KAFKA = KafkaSettings(bootstrap="", topic="")
_REDIS_BUS = RedisBusSettings(url="", streams=DEFAULT_REDIS_STREAMS)
_THRESHOLDS, _LADDER, _BREAKER = Thresholds(), LadderSettings(), BreakerSettings()


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    worker_ports: int | None = None
    shutdown_grace_seconds: float = 5.0
    keep_alive_seconds: float = 20.0
    stalled_client_seconds: float = 20.0
    jwt_secret: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    max_token_age: float | None = None
    token_cache_size: int = 20_000
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_streams: int = 20_000
    max_streams_per_address: int = 1000
    max_streams_per_user: int = 10
    connects_per_minute: int = 20
    bad_tokens_per_minute: int = 60
    address_rules: Path | None = None
    heartbeat_seconds: float = _HUB.heartbeat_seconds
    ws_auth_timeout_seconds: float = 5.0
    ws_pong_timeout_seconds: float = 30.0
    ws_messages_per_second: float = 2.0
    retry_ms: int = _SESSION.retry_ms
    shutdown_retry_spread_ms: int = 5000
    session_buffer: int = _SESSION.session_buffer
    session_buffer_bytes: int = _SESSION.session_buffer_bytes or 0  # 0: no byte bound
    records_buffer: int = _HUB.records_buffer
    fanout_pause_ms: int = round(_HUB.fanout_pause_seconds * 1000)
    bus: str = "memory"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = "sse-events"
    kafka_fetch_max_wait_ms: int = _KAFKA.fetch_max_wait_ms
    kafka_request_timeout_ms: int = _KAFKA.request_timeout_ms
    kafka_epoch: str = "topic-name" if _KAFKA.epoch_from_topic_name else "topic-id"
    cache: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = _REDIS_BUS.key_prefix
    redis_streams: tuple[str, ...] = DEFAULT_REDIS_STREAMS
    redis_stream_max_length: int = _REDIS_BUS.max_length
    outbox_dsn: str | None = None
    outbox_table: str = "sse_outbox"
    outbox_mode: str = "delete"
    outbox_poll_seconds: float = _RELAY.poll_seconds
    outbox_parts: int = _RELAY.parts
    memory_partitions: int = memory_bus.DEFAULT_PARTITIONS
    memory_bus_capacity: int = memory_bus.DEFAULT_CAPACITY
    memory_bus_max_bytes: int = 64 * 1024 * 1024
    cache_max_events: int = 10_000
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_max_age_seconds: float = 3600.0
    bus_replay_limit: int = _HUB.bus_replay_limit
    replay_concurrency: int = _HUB.replay_concurrency
    requests_in_flight: int = 256
    publish_max_bytes: int = 1_048_576
    publish_max_batch: int = 1000
    log_level: str = "info"
    log_format: str = "json"
    log_sample_rate: float = _SESSION.log_sample_rate
    max_memory: int = _THRESHOLDS.max_memory_bytes
    overload_loop_lag_ms: int = round(_THRESHOLDS.loop_lag_seconds * 1000)
    overload_streams_behind: float = _THRESHOLDS.streams_behind_fraction
    overload_replays: int = _THRESHOLDS.replays_in_flight
    overload_rise_seconds: float = _LADDER.rise_seconds
    overload_calm_seconds: float = _LADDER.calm_seconds
    bus_breaker_failures: int = _BREAKER.failure_threshold
    bus_breaker_open_seconds: float = _BREAKER.open_seconds

    @property
    def overload_thresholds(self) -> Thresholds:
        return Thresholds(
            loop_lag_seconds=self.overload_loop_lag_ms / 1000,
            streams_behind_fraction=self.overload_streams_behind,
            replays_in_flight=self.overload_replays,
            max_memory_bytes=self.max_memory,
        )

    @property
    def overload_ladder(self) -> LadderSettings:
        return LadderSettings(
            rise_seconds=self.overload_rise_seconds, calm_seconds=self.overload_calm_seconds
        )

    @property
    def bus_breaker(self) -> BreakerSettings:
        return BreakerSettings(
            failure_threshold=self.bus_breaker_failures,
            open_seconds=self.bus_breaker_open_seconds,
            max_open_seconds=max(self.bus_breaker_open_seconds, _BREAKER.max_open_seconds),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        # --redis-stream appends; given none, the environment's list, else the default.
        values["redis_streams"] = tuple(
            args.redis_streams or args.redis_streams_from_environment or DEFAULT_REDIS_STREAMS
        )
        return cls(**values)

    def redacted(self) -> dict[str, object]:
        """The settings as they may be logged: secrets replaced."""
        shown: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.jwt_secret is not None:
            shown["jwt_secret"] = "<redacted>"
        shown["redis_url"] = "<redacted>"  # it may hold a password
        if self.outbox_dsn is not None:
            shown["outbox_dsn"] = "<redacted>"
        return shown


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _number(kind: Callable[[str], float], minimum: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (math.isfinite(value) and value >= minimum):
            raise argparse.ArgumentTypeError(
                f"must be {what} of at least {minimum:g}, got {text!r}"
            )
        return value

    return parse


def port(text: str) -> int:
    value = int(_number(int, 0, "a port number")(text))
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def count(minimum: int) -> Callable[[str], int]:
    check = _number(int, minimum, "a whole number")
    return lambda text: int(check(text))


def origins(text: str) -> tuple[str, ...]:
    listed = tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())
    for origin in listed:
        if not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]:
            raise argparse.ArgumentTypeError(
                f"an origin is scheme://host[:port] with nothing after it, got {origin!r}"
            )
    return listed


def addresses(text: str) -> tuple[str, ...]:
    listed = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in listed:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an IP address: {address!r}") from None
    return listed


_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def byte_size(text: str) -> int:
    """Bytes, as a whole number with an optional K, M or G (powers of 1024): ``512M``."""
    number, unit = text.strip().upper().removesuffix("B"), ""
    if number[-1:] in _BYTE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = int(number) * _BYTE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a size is a whole number of bytes, with K, M or G if wanted, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size is at least 0, got {text!r}")
    return value


def outbox_dsn(text: str) -> str:
    if not text.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError(
            "an outbox DSN starts with sqlite:///, postgresql:// or postgres://"
        )
    return text


def stream_name(text: str) -> str:
    name = text.strip()
    try:
        check_partition(name)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a stream name is 1 to 64 of A-Z a-z 0-9 . _ - (it appears in every cursor), "
            f"got {text!r}"
        ) from None
    return name


def readable_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def add_serve_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ
) -> None:
    """Declare every ``serve`` flag, defaulting to its environment variable when that is set."""
    defaults = Settings()

    def flag(name: str, help: str, *, secret: bool = False, **kwargs: object) -> None:
        dest = name.removeprefix("--").replace("-", "_")
        env = env_name(dest)
        shown = "not shown" if secret else "%(default)s"
        parser.add_argument(
            name,
            default=environ.get(env, getattr(defaults, dest)),
            help=f"{help} [env {env}; default {shown}]",
            **kwargs,  # type: ignore[arg-type]
        )

    flag("--host", "address to listen on")
    flag("--port", "port to listen on, 0 for any free one", type=port)
    flag(
        "--workers",
        "worker processes serving the one port, each a router of its own on the shared bus"
        " (more than 1 needs --bus redis or kafka and --cache redis; docs/operations.md)",
        type=count(1),
    )
    flag(
        "--worker-ports",
        "with --workers, worker i also listens alone on this port plus i, for its own /metrics"
        " and /readyz; 0 for free ones (logged)",
        type=port,
    )
    flag(
        "--shutdown-grace-seconds",
        "after SIGTERM, how long open streams and requests get to finish",
        type=positive_seconds,
    )
    flag(
        "--keep-alive-seconds",
        "close a connection idle this long, between requests or before its first (in a reconnect"
        " storm of thousands, a new connection may wait seconds for its turn)",
        type=positive_seconds,
    )
    flag(
        "--stalled-client-seconds",
        "abort a connection whose client has read nothing for this long",
        type=positive_seconds,
    )
    flag("--jwt-secret", "HS256 secret (at least 32 bytes) to verify tokens with", secret=True)
    flag("--jwt-public-key-file", "PEM public key (RSA: RS256, P-256: ES256)", type=readable_file)
    flag("--jwt-audience", "required 'aud' claim, if set")
    flag("--jwt-issuer", "required 'iss' claim, if set")
    flag(
        "--max-token-age",
        "longest token lifetime accepted, in seconds (exp - iat; a token without iat is refused);"
        " revocations and disconnects are remembered exactly this long (unset: any lifetime, and"
        " they are remembered a day)",
        type=positive_seconds,
    )
    flag(
        "--token-cache-size",
        "verified tokens remembered until they expire, so a reconnect skips the signature check"
        " (disconnects and revocations still apply on every use; 0: none)",
        type=count(0),
    )
    flag(
        "--cors-origins", "comma-separated origins allowed to connect from a browser", type=origins
    )
    flag(
        "--trusted-proxies",
        "comma-separated addresses of reverse proxies whose X-Forwarded-For is believed",
        type=addresses,
    )
    flag("--max-streams", "open streams this instance holds", type=count(1))
    flag(
        "--max-streams-per-address",
        "open streams one client address may hold (everyone behind one NAT shares it)",
        type=count(1),
    )
    flag("--max-streams-per-user", "open streams one user may hold", type=count(1))
    flag("--connects-per-minute", "new streams per user and per address", type=count(1))
    flag(
        "--bad-tokens-per-minute",
        "requests with a bad token one address may send before its requests are refused unread",
        type=count(1),
    )
    flag(
        "--address-rules",
        "file of 'allow CIDR' / 'block CIDR' lines (docs/operations.md); reread on SIGHUP",
        type=readable_file,
    )
    flag(
        "--heartbeat-seconds",
        "a comment is sent after at most this much silence"
        f" (at least {TICKS_PER_HEARTBEAT - 1}/{TICKS_PER_HEARTBEAT} of it)",
        type=positive_seconds,
    )
    flag(
        "--ws-auth-timeout-seconds",
        "a WebSocket without a token in its handshake must send its auth message within this",
        type=positive_seconds,
    )
    flag(
        "--ws-pong-timeout-seconds",
        "a WebSocket that leaves a ping unanswered this long is closed 4008 (judged as the next"
        " ping goes out, every --heartbeat-seconds)",
        type=positive_seconds,
    )
    flag(
        "--ws-messages-per-second",
        f"client messages a WebSocket may send a second, in bursts of {MESSAGE_BURST};"
        " a flood closes it (4029)",
        type=positive_seconds,
    )
    flag("--retry-ms", "reconnection delay suggested to clients", type=count(0))
    flag(
        "--shutdown-retry-spread-ms",
        "on shutdown, clients reconnect after 1 s plus a random share of this",
        type=count(0),
    )
    flag("--session-buffer", "events queued per stream before backpressure", type=count(1))
    flag(
        "--session-buffer-bytes",
        "bytes of events (their encoded size) queued per stream before backpressure (1M, 256K);"
        " 0 for no limit but the count",
        type=byte_size,
    )
    flag("--records-buffer", "record batches between consumer and adapter", type=count(1))
    flag(
        "--fanout-pause-ms",
        f"after a step offered {FANOUT_PAUSE_ABOVE:,} or more events to streams (one event to"
        f" {FANOUT_PAUSE_ABOVE:,}, ten to {FANOUT_PAUSE_ABOVE // 10:,}), wait this long so the"
        " next events go out together",
        type=count(0),
    )
    flag("--bus", "where events come from", choices=("memory", "kafka", "redis"))
    flag("--kafka-bootstrap", "Kafka bootstrap servers, host:port[,host:port...]")
    flag("--kafka-topic", "the Kafka topic of domain events (it must exist)")
    flag(
        "--kafka-fetch-max-wait-ms",
        "longest a Kafka fetch waits for new records",
        type=count(1),
    )
    flag("--kafka-request-timeout-ms", "Kafka request timeout", type=count(100))
    flag(
        "--kafka-epoch",
        "what the history's epoch is made of: the topic's id, or, for a broker that gives none,"
        " the cluster id and topic name (a recreated topic then goes unnoticed)",
        choices=("topic-id", "topic-name"),
    )
    flag("--cache", "where events are kept for resume", choices=("memory", "redis"))
    flag("--redis-url", "Redis for the replay cache", secret=True)
    flag("--redis-key-prefix", "prefix of the router's Redis keys (one per deployment)")
    env = env_name("redis_streams")
    parser.add_argument(
        "--redis-stream",
        dest="redis_streams",
        metavar="NAME",
        action="append",
        type=stream_name,
        help=f"a Redis stream of the Redis bus, one partition each; repeat for more "
        f"[env {env}, comma-separated; default {','.join(defaults.redis_streams)}]",
    )
    parser.set_defaults(
        redis_streams_from_environment=tuple(
            stream_name(name) for name in environ.get(env, "").split(",") if name.strip()
        )
    )
    flag(
        "--redis-stream-max-length",
        "entries each stream of the Redis bus keeps (approximately)",
        type=count(1),
    )
    flag(
        "--outbox-dsn",
        "relay an outbox table to the bus: sqlite:///path.db or postgresql://...",
        type=outbox_dsn,
        secret=True,
    )
    flag("--outbox-table", "the outbox table's name")
    flag("--outbox-mode", "what happens to a relayed row", choices=("delete", "mark"))
    flag("--outbox-poll-seconds", "poll for rows this often without NOTIFY", type=positive_seconds)
    flag("--outbox-parts", "parts of a PostgreSQL outbox, each relayed by one relay", type=count(1))
    flag("--memory-partitions", "partitions of the in-memory bus", type=count(1))
    flag("--memory-bus-capacity", "unread records per in-memory partition", type=count(1))
    flag(
        "--memory-bus-max-bytes",
        "bytes of unread records per in-memory partition (publishers wait past it)",
        type=count(1),
    )
    flag("--cache-max-events", "events kept for resume", type=count(1))
    flag(
        "--cache-max-bytes",
        "bytes of events the replay cache keeps (in memory: their encoded size; in Redis: their"
        " stored fields), the oldest trimmed past it and resumes behind them truncated",
        type=count(1),
    )
    flag("--cache-max-age-seconds", "oldest event kept for resume", type=positive_seconds)
    flag(
        "--bus-replay-limit",
        "most events read again from the bus for a resume the cache cannot serve",
        type=count(0),
    )
    flag(
        "--replay-concurrency",
        "resumes that fetch and write their replay at once (the others wait their turn)",
        type=count(1),
    )
    flag(
        "--requests-in-flight",
        "requests read but not yet answered or streaming at once, as many for opening streams as"
        " for the rest (a publish never waits behind a storm of streams; the others wait their"
        " turn)",
        type=count(1),
    )
    flag("--publish-max-bytes", "largest body POST /api/v1/events accepts", type=count(1))
    flag("--publish-max-batch", "most envelopes in one POST /api/v1/events", type=count(1))
    flag("--log-level", "least severe log lines written", choices=("debug", "info", "warning"))
    flag("--log-format", "json lines, or console for people", choices=("json", "console"))
    flag(
        "--log-sample-rate",
        "fraction of event sends logged, 0 to 1 (each with its connection id)",
        type=fraction,
    )
    flag(
        "--max-memory",
        "resident memory the router may use (512M, 2G); at"
        f" {_THRESHOLDS.memory_fraction * 100:g} %% of it the overload ladder climbs;"
        " 0 for no limit",
        type=byte_size,
    )
    flag(
        "--overload-loop-lag-ms",
        "event-loop lag at which the overload ladder climbs",
        type=count(1),
    )
    flag(
        "--overload-streams-behind",
        "share of open streams behind (half their inbox waiting,"
        f" {_THRESHOLDS.streams_behind_minimum} at least) at which the overload ladder climbs",
        type=fraction,
    )
    flag(
        "--overload-replays",
        "resumes being read at once at which the overload ladder climbs",
        type=count(1),
    )
    flag(
        "--overload-rise-seconds",
        "pressure past a threshold this long climbs the overload ladder one rung",
        type=positive_seconds,
    )
    flag(
        "--overload-calm-seconds",
        f"pressure below {_LADDER.recover_below * 100:g} %% of the thresholds this long steps the"
        " overload ladder down one rung",
        type=positive_seconds,
    )
    flag(
        "--bus-breaker-failures",
        "failed publishes in a row that open the bus's circuit breaker (503 at once)",
        type=count(1),
    )
    flag(
        "--bus-breaker-open-seconds",
        "how long the bus's breaker first stays open before a publish probes the bus"
        f" (doubling while probes fail, up to {_BREAKER.max_open_seconds:g} s)",
        type=positive_seconds,
    )


class ConfigurationError(Exception):
    """A setting that cannot work; the message is for the operator."""
