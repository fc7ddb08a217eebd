"""The one way the router makes and calls a redis-py client: asyncio, inside trio-asyncio."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio
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


Command = tuple[str, Sequence[Any], Mapping[str, Any]]
"""A redis-py method's name, its positional and its keyword arguments."""


class RedisConnection:
    """A client made on first use and closed (shielded, during shutdown, for ``timeout_seconds``
    at most) by :meth:`aclose`."""

    def __init__(self, url: str, *, timeout_seconds: float, read_timeout_seconds: float) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self._client: Redis | None = None

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            self._client = await connect_redis(
                self.url,
                timeout_seconds=self.timeout_seconds,
                read_timeout_seconds=self.read_timeout_seconds,
            )
        return await call_redis(self._client, method, *args, **kwargs)

    async def call_in_order(self, *commands: Command, retry_closed: bool = False) -> list[Any]:
        """Send ``commands`` together on one connection (a pipeline, not a transaction): Redis
        runs them in order, with no other command of this client between them. Not tried again
        on a closed connection, so the caller sees every outage, unless ``retry_closed``: then,
        like :meth:`call`, a pipeline that meets a connection Redis has closed (a restarted
        server) is sent once more on a fresh one."""
        if self._client is None:
            self._client = await connect_redis(
                self.url,
                timeout_seconds=self.timeout_seconds,
                read_timeout_seconds=self.read_timeout_seconds,
            )
        client = self._client

        async def run() -> list[Any]:
            pipeline = client.pipeline(transaction=False)
            for method, args, kwargs in commands:
                getattr(pipeline, method)(*args, **kwargs)
            answers: list[Any] = await pipeline.execute()
            return answers

        try:
            answers: list[Any] = await trio_asyncio.aio_as_trio(run)()
        except RedisConnectionError:
            if not retry_closed:
                raise
            answers = await trio_asyncio.aio_as_trio(run)()
        return answers

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with trio.move_on_after(self.timeout_seconds, shield=True):
                await trio_asyncio.aio_as_trio(client.aclose)()
