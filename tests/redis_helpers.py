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
import trio
import trio_asyncio

from router.cache.redis import RedisReplayCache
from tests.e2e_helpers import RouterUnderTest, content
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


class RedisServer:
    """A redis-server of the test's own, on a fixed free port, that the test stops and starts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="sse-router-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.directory,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until_listening(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def own_redis_server(port: int | None = None) -> Iterator[str]:
    """A running :class:`RedisServer`, removed afterwards; ``port`` to reuse a stopped one's."""
    server = RedisServer()
    if port is not None:
        server.port = port
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


async def wait_for_writes_in_flight(control: redis.Redis, count: int) -> None:
    """Return once ``count`` clients of the server ``control`` paused for writes
    (``CLIENT PAUSE ... WRITE``) wait in a script. Waits for it to happen, with a hang guard."""
    with trio.fail_after(20):
        while sum(c["cmd"] in ("eval", "evalsha") for c in control.client_list()) < count:
            await trio.sleep(0.005)


async def resumes_across_a_lost_history(
    router: RouterUnderTest,
    headers: dict[str, str],
    *,
    from_before: str,
    from_after: str,
    novel: str,
    version: int,
) -> None:
    """A resume from ``from_before`` (a cursor of the history Redis lost) is truncated and says
    so; one from ``from_after`` (of the new history) is exact: it gets the one event published
    once it is open, ``version`` of ``novel``, and nothing else."""
    async with router.stream({**headers, "Last-Event-ID": from_before}) as resumed:
        await router.flush(resumed)
    assert resumed.response is not None
    assert resumed.response.headers["sse-replay"] == "truncated"
    assert resumed.data()[0]["code"] == "history-truncated"
    async with router.stream({**headers, "Last-Event-ID": from_after}) as recent:
        await router.publish(content(novel, version))
        await recent.read_until(lambda s: bool(s.data()))  # past the flush's marker
    assert recent.response is not None
    assert recent.response.headers["sse-replay"] == "complete"
    assert [d["content_version"] for d in recent.data()] == [version]
