"""The shared buses' settings and their defaults, apart from the clients they configure:
``router/config.py`` reads its flags' defaults here without importing aiokafka or redis-py
(the supervisor of ``serve --workers N`` reads the config; tests/test_supervisor_imports.py)."""

from __future__ import annotations

from dataclasses import dataclass

from router.core.cursor import check_partition

__all__ = ["KafkaSettings", "RedisBusSettings"]


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str
    topic: str
    client_id: str = "sse-router"
    fetch_max_wait_ms: int = 25
    """How long a fetch waits for records; small, because some brokers never answer early."""
    request_timeout_ms: int = 5000
    max_batch: int = 256
    probe_interval_seconds: float = 2.0
    """How often the reader checks the broker answers and the topic is still the same one while
    no records come (records are checked as they come, see ``_check_same_topic``)."""
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 10.0
    stop_timeout_seconds: float = 5.0
    """How long stopping a consumer or the producer may take, shielded, when shutting down."""
    end_offsets_reuse_seconds: float = 1.0
    """How long an answer of where the partitions end serves every resume that asks: a client
    can send cursors past the end at will, and each would cost a consumer of its own."""
    epoch_from_topic_name: bool = False
    """For a broker that gives topics no id (Kafka before 2.8, some Kafka-compatible brokers):
    derive the epoch from the cluster id and the topic name. A recreated topic then goes
    unnoticed, so its replay cache must be deleted with it. Off, such a broker is unavailable."""


@dataclass(frozen=True, slots=True)
class RedisBusSettings:
    url: str
    streams: tuple[str, ...]
    key_prefix: str = "sse-router"
    max_length: int = 1_000_000
    """Entries kept per stream (approximately: XADD MAXLEN ~)."""
    block_ms: int = 1000
    max_batch: int = 256
    timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.streams:
            raise ValueError("the Redis bus needs at least one stream")
        for stream in self.streams:
            check_partition(stream)  # a stream's name is its partition in every cursor
