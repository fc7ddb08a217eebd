"""The one way the router makes and calls a redis-py client: asyncio, inside trio-asyncio."""

from __future__ import annotations

from typing import Any

import trio_asyncio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError


async def connect_redis(url: str, *, timeout_seconds: float, read_timeout_seconds: float) -> Redis:
    """A client for ``url``, made on the asyncio side (call from trio)."""

    async def make() -> Redis:
        return Redis.from_url(
            url, socket_timeout=read_timeout_seconds, socket_connect_timeout=timeout_seconds
        )

    client: Redis = await trio_asyncio.aio_as_trio(make)()
    return client


async def call_redis(client: Redis, method: str, *args: Any, **kwargs: Any) -> Any:
    """``client.method(*args, **kwargs)`` from trio. A command that meets a connection Redis has
    closed (a restarted server) is tried once more, on a fresh connection from the pool: the
    first command after an outage should not fail on a stale socket."""
    command = trio_asyncio.aio_as_trio(getattr(client, method))
    try:
        return await command(*args, **kwargs)
    except RedisConnectionError:
        return await command(*args, **kwargs)
