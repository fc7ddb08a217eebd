"""A default is written in one place: every ``serve`` flag either reads its default from the part
that uses it, or is the only place that default is written (see ``router/config.py``'s docstring).
The documented defaults (README, docs/*.md) are checked against the code here too."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.adapter import FANOUT_PAUSE_SECONDS, Adapter
from actors.hub import HubSettings
from actors.relay import RelaySettings
from router.admission import AdmissionSettings
from router.bus.kafka import KafkaSettings
from router.bus.memory import MemoryBus
from router.bus.redis import RedisBusSettings
from router.cache.memory import MemoryReplayCache
from router.cache.redis import RedisReplayCache
from router.config import DEFAULT_REDIS_STREAMS, Settings, add_serve_arguments
from router.core.admission import StreamCaps
from router.core.breaker import BreakerSettings
from router.core.overload import LadderSettings, Thresholds
from router.core.session_settings import SessionSettings
from router.http.settings import HTTPSettings
from router.logs import configure_logging
from router.outbox.postgres import PostgresOutbox
from router.outbox.sqlite import SqliteOutbox

ROOT = Path(__file__).resolve().parent.parent

_SESSION, _HUB, _RELAY = SessionSettings(), HubSettings(), RelaySettings()
_KAFKA = KafkaSettings(bootstrap="", topic="")
_REDIS_BUS = RedisBusSettings(url="", streams=DEFAULT_REDIS_STREAMS)
_THRESHOLDS, _LADDER, _BREAKER = Thresholds(), LadderSettings(), BreakerSettings()


def _parameter_default(function: Callable[..., object], name: str) -> object:
    return inspect.signature(function).parameters[name].default


# Each setting whose part has a default of its own: that default, in the flag's unit.
READ_FROM_PARTS: dict[str, object] = {
    "heartbeat_seconds": _HUB.heartbeat_seconds,
    "records_buffer": _HUB.records_buffer,
    "fanout_pause_ms": _HUB.fanout_pause_seconds * 1000,
    "bus_replay_limit": _HUB.bus_replay_limit,
    "replay_concurrency": _HUB.replay_concurrency,
    "session_buffer": _SESSION.session_buffer,
    "session_buffer_bytes": _SESSION.session_buffer_bytes or 0,
    "retry_ms": _SESSION.retry_ms,
    "log_sample_rate": _SESSION.log_sample_rate,
    "kafka_fetch_max_wait_ms": _KAFKA.fetch_max_wait_ms,
    "kafka_request_timeout_ms": _KAFKA.request_timeout_ms,
    "kafka_epoch": "topic-name" if _KAFKA.epoch_from_topic_name else "topic-id",
    "redis_key_prefix": _REDIS_BUS.key_prefix,
    "redis_stream_max_length": _REDIS_BUS.max_length,
    "outbox_poll_seconds": _RELAY.poll_seconds,
    "outbox_parts": _RELAY.parts,
    "memory_partitions": _parameter_default(MemoryBus, "partitions"),
    "memory_bus_capacity": _parameter_default(MemoryBus, "capacity"),
    "max_memory": _THRESHOLDS.max_memory_bytes,
    "overload_loop_lag_ms": _THRESHOLDS.loop_lag_seconds * 1000,
    "overload_streams_behind": _THRESHOLDS.streams_behind_fraction,
    "overload_replays": _THRESHOLDS.replays_in_flight,
    "overload_rise_seconds": _LADDER.rise_seconds,
    "overload_calm_seconds": _LADDER.calm_seconds,
    "bus_breaker_failures": _BREAKER.failure_threshold,
    "bus_breaker_open_seconds": _BREAKER.open_seconds,
}

OWNED_HERE = {
    # Where the router listens and how hypercorn and the supervisor run it: no part but the
    # composition root reads these.
    "host",
    "port",
    "workers",
    "worker_ports",
    "shutdown_grace_seconds",
    "keep_alive_seconds",
    "stalled_client_seconds",
    # The token verifier and the address gate: unset unless configured.
    "jwt_secret",
    "jwt_public_key_file",
    "token_cache_size",
    "jwt_audience",
    "jwt_issuer",
    "max_token_age",
    "address_rules",
    # Parts that take every value from serve() (checked below: they have no defaults).
    "cors_origins",
    "publish_max_bytes",
    "publish_max_batch",
    "ws_auth_timeout_seconds",
    "ws_pong_timeout_seconds",
    "ws_messages_per_second",
    "trusted_proxies",
    "max_streams",
    "max_streams_per_address",
    "max_streams_per_user",
    "connects_per_minute",
    "bad_tokens_per_minute",
    "log_level",
    "log_format",
    "cache_max_events",
    # Which parts are built, and where they connect to: deployment choices.
    "bus",
    "cache",
    "kafka_bootstrap",
    "kafka_topic",
    "redis_url",
    "redis_streams",
    "outbox_dsn",
    "outbox_table",
    # The part's own default is neutral (see NEUTRAL below); the deployment's bound is here.
    "shutdown_retry_spread_ms",
    "memory_bus_max_bytes",
    "cache_max_bytes",
    "cache_max_age_seconds",
    "outbox_mode",
}


def command_line_defaults() -> Settings:
    """What ``serve`` runs with when given no flag and no environment variable."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, environ={})
    return Settings.from_args(parser.parse_args([]))


def test_every_flag_reads_its_default_from_its_part_or_is_the_one_place_it_is_written() -> None:
    flags = {field.name for field in dataclasses.fields(Settings)}
    unsorted = flags - READ_FROM_PARTS.keys() - OWNED_HERE
    assert not unsorted, (
        f"new settings {sorted(unsorted)}: if the part that uses one has a default, read it in"
        " router/config.py (as heartbeat_seconds = _HUB.heartbeat_seconds) and add it to"
        " READ_FROM_PARTS; if not, add it to OWNED_HERE"
    )
    assert not READ_FROM_PARTS.keys() & OWNED_HERE
    assert READ_FROM_PARTS.keys() | OWNED_HERE <= flags, "a listed setting no longer exists"


def test_the_command_line_defaults_are_the_settings_defaults() -> None:
    assert command_line_defaults() == Settings()


@pytest.mark.parametrize("name", sorted(READ_FROM_PARTS))
def test_a_flag_defaults_to_what_its_part_does_alone(name: str) -> None:
    on_the_command_line = getattr(command_line_defaults(), name)
    part = READ_FROM_PARTS[name]
    if isinstance(part, float):
        assert on_the_command_line == pytest.approx(part)
    else:
        assert on_the_command_line == part


@pytest.mark.parametrize(
    "part", [HTTPSettings, AdmissionSettings, StreamCaps], ids=lambda part: part.__name__
)
def test_settings_given_whole_by_serve_have_no_default_to_drift(part: type) -> None:
    defaulted = [
        field.name
        for field in dataclasses.fields(part)
        if field.default is not dataclasses.MISSING
        or field.default_factory is not dataclasses.MISSING
    ]
    assert defaulted == [], "serve() gives these: their default belongs in router/config.py"


@pytest.mark.parametrize(
    ("function", "name"),
    [
        (configure_logging, "level"),
        (configure_logging, "format"),
        (MemoryReplayCache, "max_events"),
        (RedisReplayCache, "max_events"),
        (RedisReplayCache, "key_prefix"),
        (PostgresOutbox, "parts"),
    ],
)
def test_parameters_given_by_serve_have_no_default_to_drift(
    function: Callable[..., object], name: str
) -> None:
    assert _parameter_default(function, name) is inspect.Parameter.empty


NEUTRAL: list[tuple[str, object, object]] = [
    # (setting, the part's default, what that default means when nobody configured the part)
    ("shutdown_retry_spread_ms", _SESSION.shutdown_retry_spread_ms, 0),  # no spread
    ("memory_bus_max_bytes", _parameter_default(MemoryBus, "max_bytes"), None),  # no bound
    ("cache_max_bytes", _parameter_default(MemoryReplayCache, "max_bytes"), None),
    ("cache_max_age_seconds", _parameter_default(MemoryReplayCache, "max_age"), None),
    ("cache_max_age_seconds", _parameter_default(RedisReplayCache, "max_age"), None),
    ("outbox_mode", _parameter_default(SqliteOutbox, "mark"), False),  # delete relayed rows
    ("outbox_mode", _parameter_default(PostgresOutbox, "mark"), False),
]


@pytest.mark.parametrize(("setting", "part", "neutral"), NEUTRAL)
def test_a_parts_default_that_differs_from_its_flags_is_neutral(
    setting: str, part: object, neutral: object
) -> None:
    """A number here beside the flag's would be a second copy of it, free to drift."""
    assert setting in OWNED_HERE
    assert part == neutral


def test_the_outbox_modes_default_is_what_the_stores_do_alone() -> None:
    assert command_line_defaults().outbox_mode == "delete"


@pytest.mark.parametrize("part", ["HubSettings", "SessionSettings", "HTTPSettings"])
def test_a_knob_keeps_its_flags_name_from_the_config_to_its_part(part: str) -> None:
    """In ``serve()``, each field of these parts that takes a flag's value as it is (``or None``
    aside) is named as that flag, so grep leads from the flag to its use. A value converted to
    another unit (``fanout_pause_ms / 1000``) keeps its stem but not its suffix."""
    tree = ast.parse((ROOT / "router" / "server.py").read_text())
    renamed: list[tuple[str, str]] = []
    given = 0
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == part):
            continue
        for keyword in call.keywords:
            value = keyword.value
            if isinstance(value, ast.BoolOp):  # ``settings.x or None``
                value = value.values[0]
            if (
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Name)
                and value.value.id == "settings"
            ):
                given += 1
                if keyword.arg != value.attr:
                    renamed.append((value.attr, str(keyword.arg)))
    assert given
    assert renamed == []


def test_the_adapter_pauses_as_long_as_the_hub_tells_it_by_default() -> None:
    assert _parameter_default(Adapter, "fanout_pause_seconds") == FANOUT_PAUSE_SECONDS
    assert _HUB.fanout_pause_seconds == FANOUT_PAUSE_SECONDS


# -- the documented defaults ---------------------------------------------------------------------

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FLAG = r"`--(?P<flag>[a-z][a-z-]*)(?: [A-Za-z]+)?`"
_INLINE = re.compile(_FLAG + r" \((?P<value>[^)]*)\)")
"""Prose: ``--session-buffer`` (256)."""
_ROW = re.compile(r"^\| " + _FLAG + r" \| (?P<value>[^|]+?) \|")
"""A row of a table whose second column is the default."""
_DEFAULT_HEADER = re.compile(r"^\| flag \| default \|")
_NUMBER = re.compile(
    r"^(?P<number>\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?: (?P<unit>KiB|MiB|GiB|s|ms))?(?=$|[;, ])"
)
_UNITS = {None: 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_NONE = re.compile(r"^\(?none\b")


def _documented_defaults() -> Iterator[tuple[str, str, str]]:
    """(where, flag, stated value) for every default the documents state."""
    for document in DOCUMENTS:
        in_defaults_table = False
        for number, line in enumerate(document.read_text().splitlines(), 1):
            where = f"{document.relative_to(ROOT)}:{number}"
            if _DEFAULT_HEADER.match(line):
                in_defaults_table = True
                continue
            if not line.startswith("|"):
                in_defaults_table = False
            row = _ROW.match(line) if in_defaults_table else None
            if row is not None:
                yield where, row["flag"], row["value"].strip()
                continue
            for inline in _INLINE.finditer(line):
                yield where, inline["flag"], inline["value"].strip()


def _same(stated: str, setting: str, default: object) -> bool | None:
    """Whether ``stated`` says ``default``; ``None`` when it states no default at all
    (``--jwt-secret`` (at least 32 bytes), ``--publish-max-bytes`` (`413`))."""
    if _NONE.match(stated):
        return default in (None, ())
    if stated.startswith("`"):
        if not isinstance(default, str | tuple):
            return None
        shown = default if isinstance(default, str) else ",".join(default)
        return stated == f"`{shown}`"
    number = _NUMBER.match(stated)
    if number is None or not isinstance(default, int | float):
        return None
    value = float(number["number"].replace(",", ""))
    unit = number["unit"]
    if unit == "s" and setting.endswith("_ms"):
        value *= 1000
    elif unit == "ms" and setting.endswith("_seconds"):
        value /= 1000
    elif unit not in ("s", "ms"):
        value *= _UNITS[unit]
    return math.isclose(value, default)


def test_the_documents_state_the_defaults_the_code_has() -> None:
    defaults = command_line_defaults()
    checked, wrong = 0, []
    for where, flag, stated in _documented_defaults():
        setting = "redis_streams" if flag == "redis-stream" else flag.replace("-", "_")
        if not hasattr(defaults, setting):
            continue  # not a serve flag (the token command's, a flag's value: --bus kafka)
        same = _same(stated, setting, getattr(defaults, setting))
        if same is None:
            continue
        checked += 1
        if not same:
            code = getattr(defaults, setting)
            wrong.append(f"{where}: --{flag} ({stated}), the code says {code}")
    assert wrong == []
    assert checked >= 50, "the documents' defaults are no longer recognised: fix the patterns"
