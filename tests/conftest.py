from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis
import trio

from tests.e2e_helpers import RouterUnderTest, running_router
from tests.kafka_broker import Broker, BrokerKind, create_topic, new_topic_name, running_broker
from tests.private_reaches import EXPECTED_ENV, EXPECTED_FROM_ENV, misimported
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

RouterFactory = Callable[..., AbstractAsyncContextManager[RouterUnderTest]]


def pytest_configure(config: pytest.Config) -> None:
    """A run of tests/private_reaches.py on a set of older versions stops here, before any test,
    if what it imports is not that set (a wrong PYTHONPATH would otherwise pass on the
    environment's own versions)."""
    expected = os.environ.get(EXPECTED_ENV)
    if expected:
        wrong = misimported(expected, os.environ.get(EXPECTED_FROM_ENV, ""))
        if wrong:
            raise pytest.UsageError("not the versions this run is for: " + "; ".join(wrong))


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[Broker]:
    with running_broker(kind=BrokerKind.TANSU) as broker:
        yield broker


@pytest.fixture(scope="session")
def noida_broker() -> Iterator[Broker]:
    """noida-db: the broker that moves a partition's log start (the retention tests)."""
    with running_broker(kind=BrokerKind.NOIDA) as broker:
        yield broker


@pytest.fixture(params=list(BrokerKind))
def kafka_broker(request: pytest.FixtureRequest) -> Broker:
    """Each Kafka test runs on both brokers: two independent implementations of the protocol
    prove the router's use of it better than one. Both are started once per test run."""
    broker: Broker = request.getfixturevalue(f"{request.param}_broker")
    return broker


@pytest.fixture
def redis_bus_settings() -> Iterator[dict[str, Any]]:
    """Settings for routers sharing one Redis Streams bus of three streams, cleaned up after."""
    prefix = new_prefix()
    streams = tuple(f"{prefix.rsplit(':', 1)[1]}-{n}" for n in range(3))
    yield {
        "bus": "redis",
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "redis_streams": streams,
    }
    delete_prefix(REDIS_URL, prefix)
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*streams)
    client.close()


def kafka_bus_settings(broker: Broker) -> dict[str, Any]:
    """Settings for routers sharing one new Kafka topic of three partitions on ``broker``.

    Synchronous (its own short trio run) so that a parametrised fixture can call it."""
    topic = new_topic_name()
    trio.run(create_topic, broker.bootstrap, topic, 3)
    return {**broker.router_settings, "kafka_topic": topic}


BUSES = ["kafka-tansu", "kafka-noida", "redis"]
"""The real buses, each Kafka broker apart."""


def bus_settings(request: pytest.FixtureRequest, bus: str) -> dict[str, Any]:
    if bus.startswith("kafka-"):
        return kafka_bus_settings(request.getfixturevalue(f"{bus.removeprefix('kafka-')}_broker"))
    settings: dict[str, Any] = request.getfixturevalue(f"{bus}_bus_settings")
    return settings


def routers_on(bus_settings: dict[str, Any]) -> RouterFactory:
    @asynccontextmanager
    async def router(**overrides: Any) -> AsyncIterator[RouterUnderTest]:
        async with running_router(**{**bus_settings, **overrides}) as started:
            with trio.fail_after(20):  # a hang guard: the router must reach its bus
                await started.running.hub.reading.wait()
            yield started

    return router


@pytest.fixture(params=BUSES)
def shared_bus(request: pytest.FixtureRequest) -> RouterFactory:
    """Routers on one real bus with three partitions; every router made by the factory shares
    it, so several instances can be tested together."""
    return routers_on(bus_settings(request, request.param))


@pytest.fixture(params=["memory", *BUSES])
def router_on_each_bus(request: pytest.FixtureRequest) -> RouterFactory:
    """A router on each bus in turn, with three partitions: the tests that use it are the
    bus-independent promises (delivery, isolation, exact resume)."""
    if request.param == "memory":

        @asynccontextmanager
        async def memory(**overrides: Any) -> AsyncIterator[RouterUnderTest]:
            async with running_router(memory_partitions=3, **overrides) as started:
                yield started

        return memory
    return routers_on(bus_settings(request, request.param))
