"""The Redis Streams bus: each configured stream is a partition.

Envelopes are stream entries with one field, ``envelope``; an entry's id (``ms-seq``) is its
offset. Every router instance reads every stream (XREAD, no consumer group), like the Kafka bus
reads every partition. The epoch is a marker key created with the first router that uses the
streams: entry ids are times, so a recreated stream never reuses an id, and a Redis that lost its
data (the marker with it) is a new history.

The reader notices a lost or replaced history while it runs, not only at start: every read asks
for the marker in the same round trip as the entries (so no entry of a new history is taken as
one of the old), and after an outage it also checks that no stream ends before what was
consumed from it (a Redis restored from an older copy keeps the marker). Either way the streams
get a new epoch, shared by every instance through the marker, and are read again from their
beginning: cursors from before are answered as truncated, and events published to the new
history before the reader noticed are not skipped.
"""

from __future__ import annotations

import logging
import secrets
import zlib
from collections.abc import AsyncGenerator, Mapping, Sequence

import trio
from redis.exceptions import RedisError, ResponseError

from router.bus.base import BusUnavailableError, Record, partition_key
from router.bus.settings import RedisBusSettings as RedisBusSettings
from router.core.backoff import Backoff
from router.core.cursor import Cursor, EventIdentity, Offset, format_offset
from router.core.cursor import parse_offset as parse_entry_id
from router.core.envelope import Publishable
from router.health import Health, ReportsHealth
from router.redis_client import Command, RedisConnection

log = logging.getLogger(__name__)
FIELD = b"envelope"
REPLACE_MARKER = """
local marker = redis.call("GET", KEYS[1])
if not marker or marker == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[2])
  return ARGV[2]
end
return marker
"""
"""Give the streams a new epoch unless another instance already did: the marker is set anew if it
is gone or still names the lost history, else the epoch it names now is adopted."""


class RedisStreamBus(ReportsHealth):
    source = "redis"
    offset_width = 2

    def __init__(self, settings: RedisBusSettings) -> None:
        self.settings = settings
        self._epoch: str | None = None
        self._start: dict[str, Offset] = {}
        self.health = Health("redis bus", healthy=False)
        self._redis = RedisConnection(
            settings.url,
            timeout_seconds=settings.timeout_seconds,
            read_timeout_seconds=settings.timeout_seconds + settings.block_ms / 1000,
        )

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(self, method: str, *args: object, **kwargs: object) -> object:
        return await self._redis.call(method, *args, **kwargs)

    async def aclose(self) -> None:
        await self._redis.aclose()

    def consumer_lag(self) -> Mapping[str, int]:
        return {}  # counting entries between two ids would cost a scan: not reported

    # -- epoch -----------------------------------------------------------------------------------

    @property
    def _marker(self) -> str:
        return f"{self.settings.key_prefix}:redis-bus:epoch"

    async def epoch(self) -> str:
        """The history's epoch, waiting (with backoff) until Redis answers; the first answer also
        fixes where "from now on" begins for ``read(None)``: after each stream's last entry.
        A new one once :meth:`read` has found the history lost or replaced."""
        backoff = Backoff(0.1, 5.0)
        while self._epoch is None:
            try:
                marker = self._marker
                await self._call("set", marker, secrets.token_urlsafe(9), nx=True)
                epoch = (await self._call("get", marker)).decode()  # type: ignore[attr-defined]
                start: dict[str, Offset] = {}
                for stream in self.settings.streams:
                    last = await self._call("xrevrange", stream, "+", "-", 1)
                    if last:
                        start[stream] = parse_entry_id(last[0][0].decode())  # type: ignore[index]
            except (RedisError, OSError, TimeoutError) as error:
                self.health.failed(error)
                await trio.sleep(backoff.next_delay())
            else:
                self._epoch, self._start = epoch, start
                self.health.recovered()
        return self._epoch

    async def partitions(self) -> Sequence[str]:
        await self.epoch()
        return self.settings.streams

    async def start_positions(self) -> Mapping[str, Offset]:
        """Each stream's last entry id when :meth:`epoch` first answered."""
        await self.epoch()
        return dict(self._start)

    async def end_offsets(self) -> Mapping[str, Offset]:
        """Each stream's last entry id (XREVRANGE, one entry each)."""
        ends: dict[str, Offset] = {}
        try:
            with trio.fail_after(self.settings.timeout_seconds):
                for stream in self.settings.streams:
                    last = await self._call("xrevrange", stream, "+", "-", 1)
                    if last:
                        ends[stream] = parse_entry_id(last[0][0].decode())  # type: ignore[index]
        except (RedisError, OSError, TimeoutError, trio.TooSlowError) as error:
            self.health.failed(error)
            raise BusUnavailableError(f"redis did not say where its streams end: {error}") from None
        return ends

    # -- reading ---------------------------------------------------------------------------------

    async def read(
        self, start: Mapping[str, Offset] | None
    ) -> AsyncGenerator[Sequence[Record], None]:
        """Entries of every stream after ``start`` (``None``: after each stream's last entry when
        :meth:`epoch` first answered); waits out Redis outages and carries on where it was.

        A history found lost or replaced (the marker gone or changed, or after an outage a stream
        that ends before what was consumed from it) is a new epoch: its streams are read from
        their beginning (a restored one's from where it went back to), and every record after
        that carries the new epoch."""
        epoch = await self.epoch()
        consumed = dict(self._start if start is None else start)
        backoff = Backoff(0.1, 5.0)
        after_outage = False
        while True:
            positions = {
                s: format_offset(consumed[s]) if s in consumed else "0-0"
                for s in self.settings.streams
            }
            try:
                if after_outage:
                    restored = await self._streams_went_back(epoch, consumed)
                    if restored is not None:  # what they hold was delivered, or lost, before
                        epoch, consumed = await self._new_history(epoch), restored
                    after_outage = False
                    continue
                marker, answer = await self._redis.call_in_order(
                    ("get", (self._marker,), {}),
                    (
                        "xread",
                        (positions,),
                        {"count": self.settings.max_batch, "block": self.settings.block_ms},
                    ),
                )
                if marker is None or marker.decode() != epoch:
                    # What was read belongs to another history: read it again, as that one's.
                    # A marker another instance changed may be its answer to a restore (see
                    # _streams_went_back): the copy's entries were delivered here too, before.
                    restored = None if marker is None else await self._restored_from(consumed)
                    epoch, consumed = await self._new_history(epoch), restored or {}
                    continue
            except (RedisError, OSError, TimeoutError) as error:
                self.health.failed(error)
                after_outage = True
                await trio.sleep(backoff.next_delay())
                continue
            self.health.recovered()
            backoff.reset()
            records = []
            for stream_name, entries in answer or []:
                stream = stream_name.decode()
                for entry_id, fields in entries:
                    offset = parse_entry_id(entry_id.decode())
                    records.append(
                        Record(
                            EventIdentity("redis", stream, offset, epoch), fields.get(FIELD, b"")
                        )
                    )
                    consumed[stream] = offset
            if records:
                yield records

    async def _streams_went_back(
        self, epoch: str, consumed: Mapping[str, Offset]
    ) -> dict[str, Offset] | None:
        """With the marker of ``epoch`` still there, whether a stream now ends before what was
        consumed from it, or is gone: the history was replaced (a Redis restored from an older
        copy). If so, where to read each stream from: where it ends now if it went back, else
        what was consumed from it (entries after that, published while the reader was away or
        in the copy and not read yet, are new); a stream nothing was consumed from is read from
        its beginning. (A marker gone or changed is found by the next read, and that history read
        from its beginning.)"""
        marker = await self._call("get", self._marker)
        if marker is None or marker.decode() != epoch:  # type: ignore[attr-defined]
            return None
        return await self._restored_from(consumed)

    async def _restored_from(self, consumed: Mapping[str, Offset]) -> dict[str, Offset] | None:
        """Whether a stream ends before what was consumed from it, or is gone; if so, where to
        read each from (see :meth:`_streams_went_back`)."""
        ends: dict[str, Offset] = {}
        went_back = False
        for stream in self.settings.streams:
            try:
                info = await self._call("xinfo_stream", stream)
            except ResponseError:  # no such stream
                went_back = went_back or stream in consumed
                continue
            last = info["last-generated-id"]  # type: ignore[index]
            end = parse_entry_id(last.decode() if isinstance(last, bytes) else last)
            mine = consumed.get(stream)
            if mine is not None:
                went_back = went_back or end < mine
                ends[stream] = min(end, mine)
        return ends if went_back else None

    async def _new_history(self, lost: str) -> str:
        """Move on from the history of epoch ``lost`` to the one the streams hold now (its epoch
        made here, or by another instance that noticed first)."""
        epoch = await self._call(
            "eval", REPLACE_MARKER, 1, self._marker, lost, secrets.token_urlsafe(9)
        )
        self._epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        log.warning(
            "redis bus history lost or replaced: a new epoch, resumes from before are truncated",
            extra={"lost_epoch": lost, "epoch": self._epoch},
        )
        return self._epoch

    async def replay(self, after: Cursor, up_to: Cursor, limit: int) -> list[Record] | None:
        """Entries after ``after`` up to ``up_to``, read again with XRANGE; ``None`` if their
        history is gone (the marker no longer names it), a stream was trimmed past ``after``,
        or there are more than ``limit``.

        The marker is read in the same pipeline as the entries: a Redis that restarted empty
        before the reader noticed would otherwise answer the old history's ranges from the new
        one's streams (empty, its ids later) and a resume from before the loss be told it
        missed nothing."""
        epoch = await self.epoch()
        if not (after.is_from(self.source, epoch) and up_to.is_from(self.source, epoch)):
            return None
        commands: list[Command] = [("get", (self._marker,), {})]
        for stream, end in up_to.positions:
            served = after.position(stream)
            low = "-" if served is None else "(" + format_offset(served)
            commands.append(("xrange", (stream, "-", "+", 1), {}))
            commands.append(("xrange", (stream, low, format_offset(end), limit + 1), {}))
        try:
            marker, *answers = await self._redis.call_in_order(*commands)
        except (RedisError, OSError, TimeoutError) as error:
            self.health.failed(error)
            return None
        if marker is None or marker.decode() != epoch:
            return None  # the reader will find it too, and move to the new history
        records: list[Record] = []
        for (stream, _), first, entries in zip(
            up_to.positions, answers[::2], answers[1::2], strict=True
        ):
            served = after.position(stream)
            if first and served is not None and parse_entry_id(first[0][0].decode()) > served:
                return None  # trimmed past the client: what followed it may be gone
            records += (_record(stream, entry_id, fields, epoch) for entry_id, fields in entries)
            if len(records) > limit:
                return None
        return records

    # -- publishing ------------------------------------------------------------------------------

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        """XADD each envelope to the stream its scope hashes to, all in one pipeline (one round
        trip, in order: a publish of 100 envelopes was 100 round trips through trio-asyncio,
        about 1.5 ms of CPU per event); raises :class:`BusUnavailableError` if Redis does not
        take them (as before, some of a batch may have been taken: a retry with the same
        ``event_id`` is dropped as a duplicate)."""
        if not envelopes:
            return []
        epoch = await self.epoch()
        streams = self.settings.streams
        chosen = [
            streams[zlib.crc32(partition_key(envelope.scope).encode()) % len(streams)]
            for envelope in envelopes
        ]
        commands: list[Command] = [
            (
                "xadd",
                (stream, {FIELD: envelope.to_bytes()}),
                {"maxlen": self.settings.max_length, "approximate": True},
            )
            for stream, envelope in zip(chosen, envelopes, strict=True)
        ]
        try:
            # Tried again on a fresh connection if Redis had closed this one (it restarted), as
            # one XADD at a time was: what meets a closed connection was not run.
            entry_ids = await self._redis.call_in_order(*commands, retry_closed=True)
        except (RedisError, OSError, TimeoutError) as error:
            self.health.failed(error)
            raise BusUnavailableError(f"redis did not take the events: {error}") from None
        return [
            EventIdentity("redis", stream, parse_entry_id(entry_id.decode()), epoch)
            for stream, entry_id in zip(chosen, entry_ids, strict=True)
        ]


def _record(stream: str, entry_id: bytes, fields: Mapping[bytes, bytes], epoch: str) -> Record:
    """A stream entry as a bus record; an entry without the envelope field reads as empty (and is
    then rejected as malformed, its position still consumed)."""
    offset = parse_entry_id(entry_id.decode())
    return Record(EventIdentity("redis", stream, offset, epoch), fields.get(FIELD, b""))
