"""The Kafka bus: aiokafka, run through trio-asyncio inside the router's nursery tree.

Every router instance reads every partition of the topic (manual assignment, no consumer group):
its clients may subscribe to anything, so instances must not split partitions among themselves.
aiokafka objects are created, used and stopped inside the trio-asyncio loop that ``serve()`` opens
around the tree; their ``stop()`` is shielded, so a cancelled reader still closes its connections.

The epoch is derived from the topic id (Metadata v10, see ``kafka_metadata``): a topic deleted and
recreated under the same name gets a new id, so cursors from before it are never matched by offset.
The reader asks for the id again after every fetch that returned records, before it stamps them:
a consumer fetches by name, and reconnects by itself to a broker that came back empty. The id is
asked on a client of the bus's own (aiokafka's public ``AIOKafkaClient``, which its admin client
is built on), made with the consumer's connection settings, started and stopped with it.

Records the broker deleted before they were read (retention, DeleteRecords) are never skipped
silently: the consumers ask for no automatic offset reset, so a position before the log start is
an error here, answered by a :class:`Record` marked ``lost`` in place of what is gone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from router.bus.base import BusUnavailableError, Record, partition_key
from router.bus.kafka_metadata import NO_TOPIC_ID, TopicMetadataRequest, topic_ids
from router.bus.settings import KafkaSettings as KafkaSettings
from router.core.backoff import Backoff
from router.core.cursor import Cursor, EventIdentity, Offset
from router.core.envelope import Publishable
from router.health import Health, ReportsHealth

log = logging.getLogger(__name__)


async def _start(consumer: AIOKafkaConsumer, probe_client: AIOKafkaClient) -> None:
    """Start a consumer and the client its topic is probed on (asyncio side); whatever this
    leaves started, :func:`_stop` closes."""
    await probe_client.bootstrap()
    await consumer.start()


async def _stop(consumer: AIOKafkaConsumer, probe_client: AIOKafkaClient) -> None:
    """Close the client the topic is probed on, then stop the consumer (asyncio side).

    The client first: its close sends nothing and waits for no answer (it closes its sockets),
    so a consumer stop that overruns its deadline or is cut short cannot leave it open.
    Cancelled while closing the client, the consumer is stopped all the same, then the
    cancellation goes on."""
    try:
        await probe_client.close()
    finally:
        await _stop_consumer(consumer)


async def _stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer (asyncio side). aiokafka can raise CancelledError from its own internal
    tasks when a consumer stops soon after it started; that is not a cancellation of ours.

    Either way ``stop()`` was cut short after marking the consumer closed, so calling it again
    does nothing: its fetcher and client are closed here, or the client's metadata task lives
    on, reconnects to the broker by itself, and leaks a connection per outage."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        await _close_what_stop_left(consumer)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def _close_what_stop_left(consumer: AIOKafkaConsumer) -> None:
    """Close the parts of a consumer whose ``stop()`` was interrupted (private attributes of
    aiokafka, tested on 0.13 by ``just private-reaches``: guarded, and logged when absent)."""
    client: Any = getattr(consumer, "_client", None)
    if not hasattr(client, "close"):
        log.warning("a kafka consumer's stop was cut short and its client cannot be closed")
        return
    fetcher: Any = getattr(consumer, "_fetcher", None)  # None if it never fully started
    for part in (fetcher, client):
        if part is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await part.close()


def epoch_of(topic_id: Any) -> str:
    """12 characters of a hash of the topic id: short, URL-safe, and different for a new topic
    even when ids are time-ordered and share their first bytes."""
    digest = hashlib.sha256(topic_id.bytes).digest()
    return base64.urlsafe_b64encode(digest).decode()[:12]


class TopicUnavailableError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _TopicSeen:
    """What the broker said of the topic: its epoch, and its partitions (numbered from 0)."""

    epoch: str
    partitions: range


@dataclass(slots=True)
class _EndsAsked:
    """One request for where the partitions end, that callers arriving meanwhile wait for."""

    done: trio.Event
    ends: dict[str, Offset] | None = None
    error: BusUnavailableError | None = None


@dataclass(slots=True)
class _Progress:
    """The last offset consumed per partition; a partition not named is read from its start."""

    consumed: dict[str, Offset]


class KafkaBus(ReportsHealth):
    source = "kafka"
    offset_width = 1

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._epoch: str | None = None
        self._consumed_when_first_seen: dict[str, Offset] = {}
        self._partitions: list[str] = []
        self.health = Health("kafka", healthy=False)
        self._lag: dict[str, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = trio.Lock()
        self._ends_known: tuple[float, dict[str, Offset]] | None = None
        """The last answer of where the partitions end, and until when it is reused."""
        self._ends_asked: _EndsAsked | None = None

    # -- health and epoch --------------------------------------------------------------------------

    async def epoch(self) -> str:
        """The topic's epoch, waiting (with backoff) until the broker answers.

        The first answer also fixes where "from now on" begins: ``read(None)`` starts just after
        the last record each partition held at that moment, so nothing published after
        ``epoch()`` returned is missed.
        """
        backoff = self._backoff()
        while self._epoch is None:
            try:
                epoch, ends = await trio_asyncio.aio_as_trio(self._first_look)()
            except (TimeoutError, KafkaError, OSError, TopicUnavailableError) as error:
                self.health.failed(error)
                await trio.sleep(backoff.next_delay())
            else:
                self._epoch, self._consumed_when_first_seen = epoch, ends
        return self._epoch

    async def partitions(self) -> Sequence[str]:
        await self.epoch()
        return list(self._partitions)

    async def start_positions(self) -> Mapping[str, Offset]:
        """Where each partition ended when :meth:`epoch` first answered."""
        await self.epoch()
        return dict(self._consumed_when_first_seen)

    async def end_offsets(self) -> Mapping[str, Offset]:
        """The last offset of every non-empty partition, asked of the broker with a consumer of
        its own (only a resume from past this router's own cursor needs it).

        One request at a time: callers arriving while it runs share its answer (or its error),
        and an answer is reused for ``end_offsets_reuse_seconds``, so resumes from past the end,
        however many, cost one broker call a second. Cancelled while asking, the request stops
        and a caller waiting for it asks again itself."""
        while True:
            now = trio.current_time()
            if self._ends_known is not None and now < self._ends_known[0]:
                return dict(self._ends_known[1])
            asked = self._ends_asked
            if asked is None:
                break
            await asked.done.wait()
            if asked.error is not None:
                raise BusUnavailableError(str(asked.error)) from None
            if asked.ends is not None:
                return dict(asked.ends)
        asked = self._ends_asked = _EndsAsked(trio.Event())
        try:
            asked.ends = await self._ask_end_offsets()
        except BusUnavailableError as error:
            asked.error = error
            raise
        finally:
            self._ends_asked = None
            asked.done.set()
        self._ends_known = (now + self.settings.end_offsets_reuse_seconds, asked.ends)
        return dict(asked.ends)

    async def _ask_end_offsets(self) -> dict[str, Offset]:
        try:
            with trio.fail_after(self.settings.request_timeout_ms / 1000 * 2):
                ends: dict[str, Offset] = await trio_asyncio.aio_as_trio(self._ends)()
                return ends
        except (TimeoutError, trio.TooSlowError, KafkaError, OSError) as error:
            self.health.failed(error)
            raise BusUnavailableError(
                f"kafka did not say where its partitions end: {error}"
            ) from None

    async def _first_look(self) -> tuple[str, dict[str, Offset]]:
        """The epoch, and the last offset of every non-empty partition (asyncio side)."""
        consumer, probe_client = self._consumer(), self._probe_client()
        try:
            await _start(consumer, probe_client)
            topic = await self._probe(probe_client)
            ends = await self._ends_with(consumer, topic)
        finally:
            await _stop(consumer, probe_client)
        return topic.epoch, ends

    async def _ends(self) -> dict[str, Offset]:
        consumer, probe_client = self._consumer(), self._probe_client()
        try:
            await _start(consumer, probe_client)
            return await self._ends_with(consumer, await self._probe(probe_client))
        finally:
            await _stop(consumer, probe_client)

    async def _ends_with(self, consumer: AIOKafkaConsumer, topic: _TopicSeen) -> dict[str, Offset]:
        """The last offset of every non-empty partition; notes the partitions (asyncio side)."""
        partitions = topic.partitions
        self._partitions = [str(p) for p in partitions]
        ends = await consumer.end_offsets(
            [TopicPartition(self.settings.topic, p) for p in partitions]
        )
        return {str(tp.partition): (end - 1,) for tp, end in ends.items() if end > 0}

    async def _probe(self, probe_client: AIOKafkaClient) -> _TopicSeen:
        """The topic's epoch and partitions, asked of the broker now (asyncio side).

        The partitions come from this answer, never from the consumer's own metadata: that is
        fetched when the consumer starts and refreshed every few minutes, so a topic created just
        after (a broker that came back empty, its topic made again) has no partitions there, and
        a reader assigned them would read nothing, silently."""
        response = await probe_client.send(
            probe_client.get_random_node(), TopicMetadataRequest([self.settings.topic])
        )
        error_code, topic_id, partitions = topic_ids(response).get(
            self.settings.topic, (3, NO_TOPIC_ID, 0)
        )
        if error_code != 0 or partitions == 0:
            raise TopicUnavailableError(
                f"topic {self.settings.topic!r} is not available (error code {error_code})"
            )
        if topic_id == NO_TOPIC_ID:
            if not self.settings.epoch_from_topic_name:
                raise TopicUnavailableError(
                    f"the broker gives topic {self.settings.topic!r} no topic id, which the epoch"
                    " is made of; see --kafka-epoch in docs/kafka-and-redis.md"
                )
            cluster = getattr(response, "cluster_id", None) or ""
            topic_id = uuid.uuid5(uuid.NAMESPACE_URL, f"kafka:{cluster}/{self.settings.topic}")
        return _TopicSeen(epoch_of(topic_id), range(partitions))

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)

    async def _consumer_in_loop(self) -> AIOKafkaConsumer:
        """A consumer constructed on the asyncio side, where aiokafka expects to be made."""
        return self._consumer()

    async def _probe_client_in_loop(self) -> AIOKafkaClient:
        """A probe client constructed on the asyncio side (it takes the running loop)."""
        return self._probe_client()

    def _probe_client(self) -> AIOKafkaClient:
        """The client the topic's id is asked on, bootstrapped on the consumer's servers with its
        settings. Its own rather than the consumer's: that one is a private attribute
        (``_client``), and its only safe fallback would be this client anyway."""
        return AIOKafkaClient(**self._connection())

    def _connection(self) -> dict[str, Any]:
        """How every client of the bus reaches the broker: a setting added here (security,
        say) reaches the consumers, their probe clients and the producer alike."""
        return {
            "bootstrap_servers": self.settings.bootstrap,
            "client_id": self.settings.client_id,
            "request_timeout_ms": self.settings.request_timeout_ms,
        }

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self._connection(),
            enable_auto_commit=False,
            # No silent jump to the log start: a position retention deleted raises, and the
            # reader says what was lost (see _skip_deleted).
            auto_offset_reset="none",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )

    # -- reading -----------------------------------------------------------------------------------

    async def read(
        self, start: Mapping[str, Offset] | None
    ) -> AsyncGenerator[Sequence[Record], None]:
        """Records of every partition after ``start`` (``None``: from where each partition ended
        when :meth:`epoch` first answered).

        Survives the broker going away: retries with backoff and carries on from the last offset
        read. A new topic id (the topic was recreated) restarts from the new topic's beginning.
        """
        await self.epoch()
        progress = _Progress(dict(self._consumed_when_first_seen if start is None else start))
        backoff = self._backoff()
        while True:
            try:
                async with aclosing(self._read_with_one_consumer(progress)) as batches:
                    async for batch in batches:
                        backoff.reset()
                        yield batch
            except (TimeoutError, KafkaError, OSError, TopicUnavailableError) as error:
                self.health.failed(error)
                await trio.sleep(backoff.next_delay())

    async def _read_with_one_consumer(
        self, progress: _Progress
    ) -> AsyncGenerator[list[Record], None]:
        """Read with one consumer until it fails; ``progress`` keeps what was consumed, so the
        next consumer carries on from there."""
        consumer = await trio_asyncio.aio_as_trio(self._consumer_in_loop)()
        probe_client = await trio_asyncio.aio_as_trio(self._probe_client_in_loop)()
        try:
            await trio_asyncio.aio_as_trio(_start)(consumer, probe_client)
            topic = await trio_asyncio.aio_as_trio(self._probe)(probe_client)
            epoch = topic.epoch
            if self._epoch is not None and epoch != self._epoch:
                log.warning("kafka topic %s was recreated: new epoch", self.settings.topic)
                progress.consumed = {}
            self._epoch = epoch
            await trio_asyncio.aio_as_trio(self._assign)(consumer, progress.consumed, topic)
            self.health.recovered()
            next_probe = trio.current_time() + self.settings.probe_interval_seconds
            while True:
                try:
                    fetched = await trio_asyncio.aio_as_trio(consumer.getmany)(
                        timeout_ms=self.settings.fetch_max_wait_ms * 4,
                        max_records=self.settings.max_batch,
                    )
                except OffsetOutOfRangeError as out_of_range:
                    await self._check_same_topic(probe_client, epoch)
                    lost = await trio_asyncio.aio_as_trio(self._skip_deleted)(
                        consumer, out_of_range.args[0], epoch
                    )
                    for marker in lost:
                        progress.consumed[marker.identity.partition] = marker.identity.offset
                    if lost:
                        yield lost
                    continue
                records = []
                for partition, messages in sorted(fetched.items(), key=lambda kv: kv[0].partition):
                    for message in messages:
                        identity = EventIdentity(
                            "kafka", str(partition.partition), (message.offset,), epoch
                        )
                        records.append(Record(identity, message.value or b""))
                if records or trio.current_time() >= next_probe:
                    await self._check_same_topic(probe_client, epoch)
                    self.health.recovered()
                    next_probe = trio.current_time() + self.settings.probe_interval_seconds
                for record in records:
                    progress.consumed[record.identity.partition] = record.identity.offset
                self._note_lag(consumer, progress)
                if records:
                    yield records
        finally:
            with trio.move_on_after(self.settings.stop_timeout_seconds, shield=True):
                await trio_asyncio.aio_as_trio(_stop)(consumer, probe_client)

    async def _check_same_topic(self, probe_client: AIOKafkaClient, epoch: str) -> None:
        """Raise if the topic is no longer the one of ``epoch``.

        Asked after every fetch that returned records, before they are stamped with ``epoch``:
        the consumer reconnects by itself after a broker restart and fetches by topic name, so a
        topic recreated meanwhile (a broker that came back empty) is read from where the old one
        stood, and nothing in the records says so. The previous check said ``epoch``, this one
        says it still: whatever was fetched in between is of that topic (ids never come back).
        Records fetched when it says otherwise are dropped; the next consumer reads the new
        topic from its beginning."""
        if (await trio_asyncio.aio_as_trio(self._probe)(probe_client)).epoch != epoch:
            raise TopicUnavailableError("the topic was recreated")

    async def _skip_deleted(
        self, consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int], epoch: str
    ) -> list[Record]:
        """Carry on from the log start of each partition whose position the broker no longer
        holds, and return a ``lost`` marker for each one that had records deleted before they
        were read (asyncio side). A position past the log's end (a broker that lost its data)
        starts again from the log start, as aiokafka's reset would, and loses nothing."""
        starts = await consumer.beginning_offsets(list(positions))
        lost = []
        for tp, position in sorted(positions.items(), key=lambda kv: kv[0].partition):
            start = starts[tp]
            if start > position:
                log.warning(
                    "kafka deleted records before the router read them",
                    extra={"partition": tp.partition, "lost": [position, start - 1]},
                )
                identity = EventIdentity("kafka", str(tp.partition), (start - 1,), epoch)
                lost.append(Record(identity, b"", lost=True))
            else:
                log.warning(
                    "kafka position beyond the log's end: reading again from its start",
                    extra={"partition": tp.partition, "position": position},
                )
            consumer.seek(tp, start)
        return lost

    def _note_lag(self, consumer: AIOKafkaConsumer, progress: _Progress) -> None:
        """Records each partition holds beyond what was read, from the last fetch's high-water
        marks (no extra request)."""
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                read = progress.consumed.get(str(tp.partition), (-1,))[0] + 1
                self._lag[str(tp.partition)] = max(0, highwater - read)

    def consumer_lag(self) -> Mapping[str, int]:
        return dict(self._lag)

    async def _assign(
        self, consumer: AIOKafkaConsumer, consumed: dict[str, Offset], topic: _TopicSeen
    ) -> None:
        partitions = topic.partitions
        self._partitions = [str(p) for p in partitions]
        assigned = [TopicPartition(self.settings.topic, p) for p in partitions]
        consumer.assign(assigned)
        for tp in assigned:
            last = consumed.get(str(tp.partition))
            if last is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, last[0] + 1)

    # -- replaying --------------------------------------------------------------------------------

    async def replay(self, after: Cursor, up_to: Cursor, limit: int) -> list[Record] | None:
        """Read the topic again from ``after`` to ``up_to``, partition by partition.

        Where a partition's log start has passed ``after`` (retention, DeleteRecords), a ``lost``
        marker at the offset before the log start comes first, then what the partition still
        holds. ``None`` if there is more than ``limit`` to read, or if the broker does not answer
        in time.
        """
        epoch = await self.epoch()
        if not (after.is_from(self.source, epoch) and up_to.is_from(self.source, epoch)):
            return None
        wanted = {partition: (after.position(partition), end) for partition, end in up_to.positions}
        try:
            with trio.fail_after(self.settings.request_timeout_ms / 1000 * 2):
                records: list[Record] | None = await trio_asyncio.aio_as_trio(self._reread)(
                    wanted, epoch, limit
                )
        except (
            TimeoutError,
            trio.TooSlowError,
            KafkaError,
            OSError,
            TopicUnavailableError,
        ) as error:
            log.warning("replay from kafka failed: %s", error)
            return None
        return records

    async def _reread(
        self, wanted: dict[str, tuple[Offset | None, Offset]], epoch: str, limit: int
    ) -> list[Record] | None:
        first: dict[TopicPartition, int] = {}
        last: dict[TopicPartition, int] = {}
        for partition, (served, end) in wanted.items():
            start = 0 if served is None else served[0] + 1
            if start <= end[0]:
                tp = TopicPartition(self.settings.topic, int(partition))
                first[tp], last[tp] = start, end[0]
        if sum(last[tp] - first[tp] + 1 for tp in first) > limit:
            return None
        if not first:
            return []
        consumer, probe_client = self._consumer(), self._probe_client()
        try:
            await _start(consumer, probe_client)
            beginnings = await consumer.beginning_offsets(list(first))
            records: list[Record] = []
            for tp in sorted(first, key=lambda tp: tp.partition):
                if beginnings[tp] > first[tp]:  # retention took some of what the client missed
                    gone_up_to = min(beginnings[tp], last[tp] + 1) - 1
                    identity = EventIdentity("kafka", str(tp.partition), (gone_up_to,), epoch)
                    records.append(Record(identity, b"", lost=True))
                    first[tp] = gone_up_to + 1
                    if first[tp] > last[tp]:
                        del first[tp]
            if not first:
                return records
            consumer.assign(list(first))
            for tp, start in first.items():
                consumer.seek(tp, start)
            remaining = set(first)
            while remaining:
                fetched = await consumer.getmany(
                    *remaining, timeout_ms=self.settings.fetch_max_wait_ms * 4
                )
                for tp, messages in fetched.items():
                    for message in messages:
                        if message.offset <= last[tp]:
                            identity = EventIdentity(
                                "kafka", str(tp.partition), (message.offset,), epoch
                            )
                            records.append(Record(identity, message.value or b""))
                    if messages and messages[-1].offset >= last[tp]:
                        remaining.discard(tp)
                        consumer.pause(tp)
            if (await self._probe(probe_client)).epoch != epoch:
                return None  # read from a topic recreated since: not the history asked for
            return records
        finally:
            await _stop(consumer, probe_client)

    # -- publishing --------------------------------------------------------------------------------

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        """Send every envelope keyed by its scope, ``acks=all``; raises
        :class:`BusUnavailableError` if the broker does not take them."""
        epoch = await self.epoch()

        async def send_all(producer: AIOKafkaProducer) -> list[Any]:
            futures = [
                await producer.send(
                    self.settings.topic,
                    envelope.to_bytes(),
                    key=partition_key(envelope.scope).encode(),
                )
                for envelope in envelopes
            ]
            return list(await asyncio.gather(*futures))

        try:
            producer = await self._started_producer()
            sent = await trio_asyncio.aio_as_trio(send_all)(producer)
        except (TimeoutError, KafkaError, OSError) as error:
            self.health.failed(error)
            raise BusUnavailableError(f"kafka did not take the events: {error}") from None
        return [EventIdentity("kafka", str(meta.partition), (meta.offset,), epoch) for meta in sent]

    async def _started_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                producer = await trio_asyncio.aio_as_trio(self._new_producer)()
                self._producer = producer
            return self._producer

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**self._connection(), acks="all")
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def aclose(self) -> None:
        """Stop the producer, if one was started. Shielded, as it runs during shutdown, for
        ``stop_timeout_seconds`` at most: an unreachable broker cannot hold the process."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with trio.move_on_after(self.settings.stop_timeout_seconds, shield=True):
                await trio_asyncio.aio_as_trio(producer.stop)()
