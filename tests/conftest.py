from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis
import trio

from tests.e2e_helpers import RouterUnderTest, running_router
from tests.kafka_broker import Broker, create_topic, new_topic_name, running_broker
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

RouterFactory = Callable[..., AbstractAsyncContextManager[RouterUnderTest]]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    with running_broker() as broker:
        yield broker


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


@pytest.fixture
def kafka_bus_settings(kafka_broker: Broker) -> dict[str, Any]:
    """Settings for routers sharing one Kafka topic of three partitions.

    Synchronous (its own short trio run) so that it can be chosen by a parametrised fixture."""
    topic = new_topic_name()
    trio.run(create_topic, kafka_broker.bootstrap, topic, 3)
    return {"bus": "kafka", "kafka_bootstrap": kafka_broker.bootstrap, "kafka_topic": topic}


def routers_on(bus_settings: dict[str, Any]) -> RouterFactory:
    @asynccontextmanager
    async def router(**overrides: Any) -> AsyncIterator[RouterUnderTest]:
        async with running_router(**{**bus_settings, **overrides}) as started:
            with trio.fail_after(20):  # a hang guard: the router must reach its bus
                await started.running.hub.reading.wait()
            yield started

    return router


@pytest.fixture(params=["kafka", "redis"])
def shared_bus(request: pytest.FixtureRequest) -> RouterFactory:
    """Routers on one real bus with three partitions; every router made by the factory shares
    it, so several instances can be tested together."""
    return routers_on(request.getfixturevalue(f"{request.param}_bus_settings"))


@pytest.fixture(params=["memory", "kafka", "redis"])
def router_on_each_bus(request: pytest.FixtureRequest) -> RouterFactory:
    """A router on each bus in turn, with three partitions: the tests that use it are the
    bus-independent promises (delivery, isolation, exact resume)."""
    if request.param == "memory":

        @asynccontextmanager
        async def memory(**overrides: Any) -> AsyncIterator[RouterUnderTest]:
            async with running_router(memory_partitions=3, **overrides) as started:
                yield started

        return memory
    return routers_on(request.getfixturevalue(f"{request.param}_bus_settings"))
