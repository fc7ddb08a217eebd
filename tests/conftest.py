from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from functools import partial

import pytest

from tests.e2e_helpers import RouterUnderTest, running_router
from tests.kafka_broker import Broker, kafka_router, running_broker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    with running_broker() as broker:
        yield broker


RouterFactory = Callable[..., AbstractAsyncContextManager[RouterUnderTest]]


@pytest.fixture(params=["memory", "kafka"])
def router_on_each_bus(request: pytest.FixtureRequest) -> RouterFactory:
    """Start a router on each bus in turn, with three partitions: the tests that use it are the
    bus-independent promises (delivery, isolation, exact resume)."""
    if request.param == "memory":
        return partial(running_router, memory_partitions=3)
    broker = request.getfixturevalue("kafka_broker")
    return partial(kafka_router, broker, partitions=3)
