"""Redis for the tests: the machine's server with a key prefix per test, or a server of our own."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import redis
import trio_asyncio

from router.cache.redis import RedisReplayCache
from tests.kafka_broker import free_port, wait_until_listening

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def new_prefix() -> str:
    return f"sse-router-test:{secrets.token_hex(4)}"


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass  # a server of the test's own, already stopped: nothing is left to clean
    finally:
        client.close()


@asynccontextmanager
async def redis_cache(
    url: str = REDIS_URL, prefix: str | None = None, **options: object
) -> AsyncIterator[RedisReplayCache]:
    """A cache in its own trio-asyncio loop, its keys deleted afterwards."""
    prefix = prefix or new_prefix()
    async with trio_asyncio.open_loop():
        cache = RedisReplayCache(url, key_prefix=prefix, source="kafka", **options)  # type: ignore[arg-type]
        try:
            yield cache
        finally:
            await cache.aclose()
            delete_prefix(url, prefix)


@contextmanager
def own_redis_server(port: int | None = None) -> Iterator[str]:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""
    port = port or free_port()
    directory = tempfile.mkdtemp(prefix="sse-router-redis-")
    command = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
    ]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            wait_until_listening(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.kill()
            shutil.rmtree(directory, ignore_errors=True)
