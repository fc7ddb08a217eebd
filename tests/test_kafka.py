"""The router on Kafka: a real (Kafka-compatible) broker, real HTTP clients."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Literal

import pytest
import trio
import trio_asyncio
from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router.bus.base import Record
from router.bus.kafka import KafkaBus, KafkaSettings
from router.bus.kafka import _start as kafka_bus_start
from router.bus.kafka import _stop as kafka_bus_stop
from router.core.cursor import MAX_OFFSET, Cursor, parse_cursor
from tests.e2e_helpers import (
    PUBLISHER,
    auth,
    content,
    envelope,
    progress,
    running_router,
)
from tests.kafka_broker import (
    Broker,
    BrokerKind,
    create_topic,
    delete_topic,
    free_port,
    kafka_router,
    new_topic_name,
    produce_raw,
    running_broker,
)

EVERY_EVENT_TYPE = [
    progress("u1", "t1", 40),
    envelope(
        "Task.StatusChanged",
        {"user_id": "u1"},
        task_id="t1",
        old_status="running",
        new_status="done",
    ),
    envelope(
        "System.NotificationSent",
        {"broadcast": True},
        level="warning",
        title="Maintenance",
        message="at noon",
    ),
    content("n1", 5),
]


async def test_every_event_type_goes_from_kafka_to_the_browser(kafka_broker: Broker) -> None:
    async with kafka_router(kafka_broker) as router, router.stream() as stream:
        ids = await router.publish(*EVERY_EVENT_TYPE)
        assert all(i.startswith("kafka@") for i in ids)
        await stream.events_count(4)
        assert sorted(e.event for e in stream.events) == sorted(
            [
                "task.progress-updated",
                "task.status-changed",
                "system.notification-sent",
                "content.updated",
            ]
        )
        assert sorted(d["event_id"] for d in stream.data()) == sorted(ids)


async def test_messages_that_are_not_envelopes_are_skipped_and_counted(
    kafka_broker: Broker,
) -> None:
    topic = new_topic_name()
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    async with kafka_router(kafka_broker, topic) as router, router.stream() as stream:
        good = json.dumps(content("n1", 1)).encode()
        await produce_raw(
            kafka_broker.bootstrap,
            topic,
            [
                (b"n1", b"not json"),
                (b"n1", b'{"event_type": "Nope.Happened"}'),
                (b"n1", json.dumps(envelope("Unknown.TypeHappened", {"user_id": "u1"})).encode()),
                (b"n1", good),
            ],
        )
        await stream.events_count(1)
        assert stream.data()[0]["content_version"] == 1
        assert stream.events[0].last_event_id.endswith(":0:3")  # the bad ones moved it on
        rejected = router.running.hub.adapter.stats.rejected
        assert rejected == {"malformed": 2, "unknown-type": 1}


async def test_a_broker_that_is_not_there_yet_is_waited_for() -> None:
    port = free_port()
    topic = new_topic_name()
    async with running_router(
        bus="kafka", kafka_bootstrap=f"127.0.0.1:{port}", kafka_topic=topic
    ) as router:
        ready = await router.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["bus"] is False
        with running_broker(port) as late_broker:
            await create_topic(late_broker.bootstrap, topic)
            with trio.fail_after(30):  # a hang guard: backoff is capped
                await router.running.hub.reading.wait()
            async with router.stream() as stream:
                await router.publish(content("n1", 9))
                await stream.events_count(1)
            assert (await router.client.get("/readyz")).status_code == 200


async def test_a_frozen_broker_is_waited_out_and_nothing_is_skipped(kafka_broker: Broker) -> None:
    async with (
        kafka_router(kafka_broker, kafka_request_timeout_ms=500) as router,
        router.stream() as stream,
    ):
        bus = router.running.hub.bus
        assert isinstance(bus, KafkaBus)
        await router.publish(*(content("n1", n) for n in range(5)))
        await stream.events_count(5)
        kafka_broker.pause()
        try:
            with trio.fail_after(30):  # a hang guard: the router must notice the outage
                await bus.health_changed.wait()
            assert (await router.client.get("/readyz")).status_code == 503
            metrics = (await router.client.get("/metrics")).text
            assert 'sse_backend_errors_total{backend="bus"} 0.0' not in metrics
        finally:
            kafka_broker.resume()
        with trio.fail_after(30):  # and then that it is over
            await bus.health_changed.wait()
        assert (await router.client.get("/readyz")).status_code == 200
        await router.publish(*(content("n1", n) for n in range(5, 10)))
        await stream.events_count(10)
    assert [d["content_version"] for d in stream.data()] == list(range(10))


async def test_a_recreated_topic_is_a_new_history(kafka_broker: Broker) -> None:
    if kafka_broker.kind is BrokerKind.NOIDA:
        pytest.skip("noida-db gives topics no id: a recreated topic cannot be told apart")
    topic = new_topic_name()
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    async with kafka_router(kafka_broker, topic) as router, router.stream() as stream:
        await router.publish(content("n1", 1))
        await stream.events_count(1)
        old_cursor = stream.events[0].last_event_id
    await delete_topic(kafka_broker.bootstrap, topic)
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    async with kafka_router(kafka_broker, topic) as router:
        await router.publish(content("n1", 2))
        headers = {**auth(novels=["n1"]), "Last-Event-ID": old_cursor}
        async with router.stream(headers=headers) as resumed:
            assert resumed.response.headers["sse-replay"] == "truncated"
            await router.publish(content("n1", 3))
            await resumed.events_count(3)
    error, *replayed_and_live = resumed.data()
    assert error["code"] == "history-truncated"
    assert [d["content_version"] for d in replayed_and_live] == [2, 3]  # all the new topic has
    old_epoch, new_epoch = old_cursor.split(":")[0], resumed.events[-1].last_event_id.split(":")[0]
    assert old_epoch != new_epoch


async def test_consumer_lag_is_exported_per_partition(kafka_broker: Broker) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with kafka_router(kafka_broker, partitions=3) as router:
        await router.publish(*(content(f"n{n}", n) for n in range(6)))
        await router.running.hub.adapter.wait_consumed(6)
        text = (await router.client.get("/metrics")).text
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "sse_bus_consumer_lag"
    ]
    assert {s.labels["partition"]: s.value for s in family.samples} == {"0": 0, "1": 0, "2": 0}


async def test_a_broker_that_gives_no_topic_id_is_unavailable_unless_the_name_makes_the_epoch(
    noida_broker: Broker,
) -> None:
    """noida-db answers Metadata v10 with the zero topic id: by default the router will not guess
    an epoch (a recreated topic would go unnoticed); ``--kafka-epoch topic-name`` says it may."""
    topic = new_topic_name()
    await create_topic(noida_broker.bootstrap, topic, partitions=1)
    async with running_router(
        bus="kafka", kafka_bootstrap=noida_broker.bootstrap, kafka_topic=topic
    ) as router:
        bus = router.running.hub.bus
        with trio.fail_after(20):  # a hang guard: the router's first look at the topic fails
            while bus.errors < 1:
                await trio.sleep(0.05)
        assert not router.running.hub.reading.is_set()
        assert (await router.client.get("/readyz")).status_code == 503
    async with kafka_router(noida_broker, topic) as router, router.stream() as stream:
        await router.publish(content("n1", 1))
        await stream.events_count(1)


async def test_a_topic_recreated_while_the_router_runs_is_delivered_from_its_beginning(
    kafka_broker: Broker,
) -> None:
    """The new topic's offsets start again at 0, below those of the old one: its events are new
    all the same, and reach a connected stream after the in-band history-truncated."""
    if kafka_broker.kind is BrokerKind.NOIDA:
        pytest.skip("noida-db gives topics no id: a recreated topic cannot be told apart")
    topic = new_topic_name()
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    async with kafka_router(kafka_broker, topic) as router, router.stream() as stream:
        await router.publish(*(content("n1", n) for n in range(3)))
        await stream.events_count(3)
        await delete_topic(kafka_broker.bootstrap, topic)
        await create_topic(kafka_broker.bootstrap, topic, partitions=1)
        with trio.fail_after(30):  # a hang guard: the producer finds the new topic
            while True:
                response = await router.client.post(
                    "/api/v1/events",
                    json=content("n1", 3),
                    headers=PUBLISHER,
                )
                if response.status_code == 202:
                    break
                await trio.sleep(0.5)
        with trio.fail_after(30):  # and the reader reads it
            await stream.events_count(5)
    first, error, new = stream.data()[2:]
    assert first["content_version"] == 2
    assert error["code"] == "history-truncated"
    assert new["content_version"] == 3


async def test_a_resume_from_before_a_restart_gets_what_the_new_router_never_routed(
    kafka_broker: Broker,
) -> None:
    """The embedded cache starts empty with the new router, which reads from the topic's end:
    what lies between a client's cursor and that start is in Kafka, not in the cache, and must
    come from there, never be missing from a resume answered complete."""
    topic = new_topic_name()
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    async with kafka_router(kafka_broker, topic) as router, router.stream() as away:
        await router.publish(*(content("n1", n) for n in range(3)))
        await away.events_count(3)
    cursor = away.events[0].last_event_id  # the client saw 0, then dropped
    async with kafka_router(kafka_broker, topic) as router:
        await router.publish(content("n1", 3))
        await router.running.hub.adapter.wait_consumed(1)
        headers = {**auth(novels=["n1"]), "Last-Event-ID": cursor}
        async with router.stream(headers=headers) as resumed:
            await router.flush(resumed)
    assert resumed.response is not None
    assert resumed.response.headers["sse-replay"] == "complete"  # Kafka still holds them all
    assert [d["content_version"] for d in resumed.data() if "content_version" in d] == [1, 2, 3]


async def test_an_event_published_twice_is_replayed_from_kafka_once(kafka_broker: Broker) -> None:
    """A relay that gave its rows back after a publish that ran out of time publishes them
    again: the adapter drops the copy live, and a resume read again from Kafka must too."""
    again = {**content("n1", 1), "event_id": "outbox:rows:7"}
    async with kafka_router(kafka_broker, cache_max_events=1) as router:
        headers = auth(novels=["n1"])
        cursor = await router.fall_behind(
            headers, [again, content("n1", 2), again, content("n1", 3)]
        )
        async with router.stream({**headers, "Last-Event-ID": cursor}) as resumed:
            await router.flush(resumed)
        assert router.running.hub.replays["complete", "bus"] == 1
    assert resumed.response is not None
    assert [d["content_version"] for d in resumed.data() if "content_version" in d] == [1, 2, 3]


async def test_concurrent_resumes_from_past_the_end_ask_the_broker_once(
    kafka_broker: Broker,
) -> None:
    """A cursor ahead of the router makes it ask the broker where the partitions end; many such
    resumes at once (a client can send them at will) share one request."""
    async with kafka_router(kafka_broker, partitions=1) as router:
        bus = router.running.hub.bus
        assert isinstance(bus, KafkaBus)
        ends = bus._ends
        asked = 0

        async def counted_ends() -> dict[str, tuple[int, ...]]:
            nonlocal asked
            asked += 1
            return await ends()

        bus._ends = counted_ends  # type: ignore[method-assign]
        async with router.stream() as first:
            await router.publish(content("n1", 1))
            await first.events_count(1)
        real = parse_cursor(first.events[-1].last_event_id)
        ahead = str(Cursor(real.source, real.epoch, ((real.positions[0][0], (MAX_OFFSET,)),)))
        answers: list[list[dict[str, object]]] = []

        async def resume() -> None:
            headers = {**auth(novels=["n1"]), "Last-Event-ID": ahead}
            async with router.stream(headers) as resumed:
                assert resumed.response is not None
                assert resumed.response.headers["sse-replay"] == "truncated"
                await resumed.events_count(2)
            answers.append(resumed.data())

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(resume)
    assert asked <= 2  # one, or two should the resumes spread over more than the cached second
    for data in answers:  # each told the truth: its position is past the end, so all of it again
        assert data[0]["code"] == "history-truncated"
        assert data[1]["content_version"] == 1
    assert len(answers) == 10


async def test_records_of_a_topic_recreated_under_the_reader_never_carry_the_old_epoch() -> None:
    """tansu restarted empty, its topic created again: the reader's consumer reconnects by itself
    and fetches the new topic from where it stood in the old one. Those records are of a new
    history; stamped with the old epoch, the consumer actor took them for records already handed
    over (lost), or clients for the old history's (truncation never said). The periodic probe is
    made too rare to notice here: the check must come with the records."""
    with running_broker() as broker:
        topic = new_topic_name()
        await create_topic(broker.bootstrap, topic, partitions=1)
        async with trio_asyncio.open_loop():
            settings = KafkaSettings(
                broker.bootstrap, topic, request_timeout_ms=1000, probe_interval_seconds=3600
            )
            bus = KafkaBus(settings)
            old_epoch = await bus.epoch()
            read: list[Record] = []
            arrived = trio.Event()

            async def reader() -> None:
                async with aclosing(bus.read(None)) as batches:
                    async for batch in batches:
                        read.extend(batch)
                        arrived.set()

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    await produce_raw(broker.bootstrap, topic, [(b"k", b"old")] * 3)
                    with trio.fail_after(20):  # a hang guard: the reader reads the old topic
                        while len(read) < 3:
                            arrived = trio.Event()
                            await arrived.wait()
                    broker.stop()
                    broker.start_again()
                    await create_topic(broker.bootstrap, topic, partitions=1)
                    await produce_raw(broker.bootstrap, topic, [(b"k", b"new")] * 8)
                    with trio.fail_after(30):  # a hang guard: the reader reads the new topic
                        while not any(r.raw == b"new" and r.identity.offset == (7,) for r in read):
                            arrived = trio.Event()
                            await arrived.wait()
                    nursery.cancel_scope.cancel()
            finally:
                await bus.aclose()
    assert [r.raw for r in read if r.identity.epoch == old_epoch] == [b"old"] * 3
    new = [r for r in read if r.identity.epoch != old_epoch]
    assert [(r.raw, r.identity.offset) for r in new] == [(b"new", (n,)) for n in range(8)]


class _TopicMadeJustAfterTheConsumerStarts(KafkaBus):
    """Once armed, the reader's next consumer starts before its topic is created, and the topic
    is created before the consumer is given its partitions: the order a broker that came back
    empty gives under load, when the topic is created again a moment after the router reconnects.
    """

    armed = False

    async def _consumer_in_loop(self) -> AIOKafkaConsumer:
        consumer = await super()._consumer_in_loop()
        if self.armed:
            self.armed = False
            start = consumer.start

            async def start_then_create_the_topic() -> None:
                await start()
                admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
                await admin.start()
                try:
                    await admin.create_topics([NewTopic(self.settings.topic, 3, 1)])
                finally:
                    await admin.close()

            consumer.start = start_then_create_the_topic  # type: ignore[method-assign]
        return consumer


async def test_a_topic_created_just_after_the_consumer_started_is_read_all_the_same() -> None:
    """The consumer's own metadata, fetched at its start, does not know a topic created a moment
    later: assigned the partitions it listed, the reader read nothing of the new history."""
    with running_broker() as broker:
        topic = new_topic_name()
        await create_topic(broker.bootstrap, topic, partitions=3)
        async with trio_asyncio.open_loop():
            bus = _TopicMadeJustAfterTheConsumerStarts(
                KafkaSettings(broker.bootstrap, topic, request_timeout_ms=1000)
            )
            old_epoch = await bus.epoch()
            read: list[Record] = []
            arrived = trio.Event()

            async def reader() -> None:
                nonlocal arrived
                async with aclosing(bus.read(None)) as batches:
                    async for batch in batches:
                        read.extend(batch)
                        arrived.set()
                        arrived = trio.Event()

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    broker.stop()
                    broker.start_again()  # empty, without the topic
                    bus.armed = True
                    with trio.fail_after(30):  # a hang guard: the reader's consumer started
                        while bus.armed:
                            await trio.sleep(0.05)
                    await produce_raw(broker.bootstrap, topic, [(b"k", b"new")] * 6)
                    with trio.fail_after(10):  # a hang guard: the reader reads the new topic
                        while len(read) < 6:
                            await arrived.wait()
                    nursery.cancel_scope.cancel()
            finally:
                await bus.aclose()
    assert len(read) == 6
    assert all(r.raw == b"new" and r.identity.epoch != old_epoch for r in read)


def _closed(client: AIOKafkaClient) -> bool:
    """The client's metadata task is stopped and none of its connections is open."""
    return client._sync_task is None and not any(c.connected() for c in client._conns.values())


async def test_a_consumer_whose_stop_is_cut_short_still_closes_its_connections(
    kafka_broker: Broker,
) -> None:
    """aiokafka's stop() marks the consumer closed, then closes its parts in turn: a
    CancelledError in between (its own tasks', or ours) left the client open, its metadata task
    reconnecting by itself after a broker outage: an ``Unclosed AIOKafkaConnection`` per outage."""
    bus = KafkaBus(KafkaSettings(kafka_broker.bootstrap, new_topic_name()))
    async with trio_asyncio.open_loop():
        consumer = await trio_asyncio.aio_as_trio(bus._consumer_in_loop)()
        probe_client = await trio_asyncio.aio_as_trio(bus._probe_client_in_loop)()
        await trio_asyncio.aio_as_trio(kafka_bus_start)(consumer, probe_client)

        async def interrupted() -> None:
            raise asyncio.CancelledError  # as a coordinator task cancelled under it raises

        consumer._coordinator.close = interrupted
        await trio_asyncio.aio_as_trio(kafka_bus_stop)(consumer, probe_client)
        assert _closed(consumer._client)
        assert _closed(probe_client)


class _StopsThatHang(KafkaBus):
    """Records every consumer and probe client it makes; once ``hanging`` names one of the two,
    the next ones made hang in their stop until the stop's deadline cancels them: the probe
    client once it has closed, the consumer once it has closed its coordinator (before its
    fetcher and client, as a stop hangs on a broker that no longer answers)."""

    hanging: Literal["consumer", "probe client"] | None = None

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings)
        self.consumers: list[AIOKafkaConsumer] = []
        self.probe_clients: list[AIOKafkaClient] = []

    def _consumer(self) -> AIOKafkaConsumer:
        consumer = super()._consumer()
        self.consumers.append(consumer)
        if self.hanging == "consumer":
            stop = consumer.stop

            async def stop_that_hangs() -> None:
                close = consumer._coordinator.close  # made by start()

                async def close_then_hang() -> None:
                    await close()
                    await _hang()

                consumer._coordinator.close = close_then_hang
                await stop()

            consumer.stop = stop_that_hangs  # type: ignore[method-assign]
        return consumer

    def _probe_client(self) -> AIOKafkaClient:
        probe_client = super()._probe_client()
        self.probe_clients.append(probe_client)
        if self.hanging == "probe client":
            close = probe_client.close

            async def close_then_hang() -> None:
                await close()
                await _hang()

            probe_client.close = close_then_hang
        return probe_client


async def _hang() -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize("hanging", ["consumer", "probe client"])
async def test_the_probe_client_is_closed_with_the_bus_even_when_its_stop_is_cut_short(
    kafka_broker: Broker, hanging: Literal["consumer", "probe client"]
) -> None:
    """The reader's consumer and the client its topic is probed on stop together, within one
    deadline: when the bus stops reading and one of them overruns it, the other is closed all
    the same (an unclosed client warns, and its metadata task reconnects by itself)."""
    topic = new_topic_name()
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    settings = KafkaSettings(
        kafka_broker.bootstrap,
        topic,
        request_timeout_ms=1000,
        stop_timeout_seconds=0.2,
        epoch_from_topic_name=True,  # noida-db gives topics no id
    )
    async with trio_asyncio.open_loop():
        bus = _StopsThatHang(settings)
        await bus.epoch()
        bus.hanging = hanging
        read: list[Record] = []

        async def reader() -> None:
            async with aclosing(bus.read(None)) as batches:
                async for batch in batches:
                    read.extend(batch)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await produce_raw(kafka_broker.bootstrap, topic, [(b"k", b"v")])
                with trio.fail_after(20):  # a hang guard: the reader's consumer is reading
                    while not read:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()  # as a router that shuts down
        finally:
            await bus.aclose()
    assert len(bus.consumers) == len(bus.probe_clients) == 2  # the first look's, the reader's
    assert all(_closed(consumer._client) for consumer in bus.consumers)
    assert all(_closed(probe_client) for probe_client in bus.probe_clients)
