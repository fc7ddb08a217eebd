"""The Redis Stream replay cache: shared by every router instance of a deployment.

Events are appended by a Lua script (``redis_append.lua``) that keeps, per partition, the last
offset appended, so two routers reading the same partition append each event once, in partition
order. The script also trims to retention itself (``max_events``, ``max_age`` and ``max_bytes``:
the last against a running total of the entries' bytes the script keeps beside the stream, so
every instance sharing the cache trims by the same total), so it knows, per partition, the newest
offset it evicted: a resume from before that is truncated history, never a silent gap.

When Redis cannot be reached, live delivery goes on: appends wait in memory (at most
``max_events`` of them, and ``max_bytes`` of their encoded size) and are written when Redis
answers again, by one writer at a time;
events that did not fit are recorded as evicted, so a resume across them is answered as
truncated. A replay that cannot read Redis is answered as truncated with what is held in memory,
and marked ``unavailable``: the hub then asks the bus, or asks the client to come back.

A Redis that comes back without its data (restarted empty, or replaced) has lost the history
the resumes stand on. The keys carry a generation, a token made when they were started; each
instance remembers the one it wrote to, and how far it had written in each partition. Finding
the generation gone or changed, it records all it had written as evicted before writing again,
so every cursor from before the loss is answered as truncated (or read again from the bus, if it
still holds the events), never as complete with a silent gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from importlib import resources
from typing import Any

import trio
from redis.exceptions import NoScriptError, RedisError

from router.cache.base import Window
from router.cache.decoded import DecodedEntries
from router.core.backoff import Backoff
from router.core.cursor import Cursor, EventIdentity, Offset, format_offset, parse_offset
from router.core.history import Entry, Replay, entry_size
from router.core.scope import Scope
from router.core.sse import SSEMessage
from router.health import Health, ReportsHealth
from router.redis_client import RedisConnection

log = logging.getLogger(__name__)


def _script(name: str) -> str:
    """A script of this package with the offset helpers it shares in front of it."""
    here = resources.files("router.cache")
    return here.joinpath("redis_offsets.lua").read_text() + here.joinpath(name).read_text()


APPEND_SCRIPT = _script("redis_append.lua")
FORGET_SCRIPT = _script("redis_forget.lua")
_DIGESTS = {
    script: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    for script in (APPEND_SCRIPT, FORGET_SCRIPT)
}
"""Each script's SHA1, the name ``EVALSHA`` runs it by."""
PAGE = 500
_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""An event's scope as JSON, and its data where that has no UTF-8 form (built once: ``json.dumps``
with options builds an encoder per call)."""
_COMPACT_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""An event's data as JSON, in UTF-8 as it is."""


class RedisReplayCache(ReportsHealth):
    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        source: str,
        max_events: int,
        max_age: float | None = None,
        max_bytes: int | None = None,
        timeout_seconds: float = 1.0,
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive, or None for no size limit")
        self.url = url
        self.source = source
        self.max_events = max_events
        self.max_bytes = max_bytes
        """The entries' bytes (their stored fields: data and scope JSON, name, cursor, place)
        the stream may hold together (``--cache-max-bytes``); ``None``: no size bound."""
        self.max_age = max_age
        self.timeout_seconds = timeout_seconds
        base = f"{key_prefix}:{source}"
        self.keys = [
            f"{base}:stream",
            f"{base}:served",
            f"{base}:evicted",
            f"{base}:epoch",
            f"{base}:generation",
            f"{base}:bytes",
        ]
        self._redis = RedisConnection(
            url, timeout_seconds=timeout_seconds, read_timeout_seconds=timeout_seconds
        )
        self.health = Health("redis replay cache", healthy=True)
        self._retry_at = 0.0
        self._backoff = Backoff(0.1, 5.0)
        self._pending: deque[Entry] = deque()
        self._pending_bytes = 0
        """The encoded size of the entries in ``_pending`` (bounded by ``max_bytes`` too)."""
        self._lost: dict[str, dict[str, Offset]] = {}
        """Per epoch, then per partition, the newest offset lost while Redis was away (dropped
        from ``_pending``, or deleted by the bus unread), not yet recorded as evicted. Keyed by
        epoch: a floor of one history says nothing of the next one's offsets."""
        self._waiting_writes = trio.Event()
        self._flushing = trio.Lock()
        """Held by the one task writing ``_pending`` to Redis (the adapter's append, or run)."""
        self._history: tuple[str, str] | None = None
        """The epoch and generation this instance last wrote to (or read its resume point from)."""
        self._written: dict[str, Offset] = {}
        """Per partition, the newest offset this instance knows the history of ``_history`` holds:
        all of it is recorded as evicted if that history turns out lost."""
        self.unreadable = 0
        """Entries skipped by replays because they could not be read back (see ``_readable``)."""
        self.decoded_entries = DecodedEntries(max_events, max_bytes)
        """The entries replays read back, decoded once for all of them."""

    # -- connection --------------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any) -> Any:
        return await self._redis.call(method, *args)

    async def _run_script(self, script: str, *args: Any) -> Any:
        """``script`` run on this cache's keys with ``args``: by its SHA1 (``EVALSHA``), sent
        whole (``EVAL``, which also loads it) only when Redis does not hold it, on first use and
        after a restart or a ``SCRIPT FLUSH``: the append script is 4.4 KB, which every append sent,
        and Redis hashed, before. Redis refuses an unknown SHA1 before running anything, so the
        ``EVAL`` after it runs the script once; cancelled in between, it has not run."""
        try:
            return await self._call("evalsha", _DIGESTS[script], len(self.keys), *self.keys, *args)
        except NoScriptError:
            return await self._call("eval", script, len(self.keys), *self.keys, *args)

    def _failed(self, error: BaseException) -> None:
        self.health.failed(error)
        self._retry_at = trio.current_time() + self._backoff.next_delay()

    def _succeeded(self) -> None:
        self.health.recovered()
        self._backoff.reset()

    async def run(self) -> None:
        """Write what waits in memory once Redis is back, even if no new event comes to push it.
        Runs until cancelled."""
        while True:
            if self._pending and not self.health.healthy:
                await trio.sleep_until(self._retry_at)
                await self._flush()
            else:
                await self._waiting_writes.wait()
                self._waiting_writes = trio.Event()

    async def aclose(self) -> None:
        await self._redis.aclose()

    # -- writing -----------------------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``; never raises. While Redis is away they wait in memory.

        Known to be away, this returns at once and leaves the retries to :meth:`run`: the
        adapter awaits this before it routes a step, so a retry here (which may take the whole
        timeout) would hold every live client behind a dead Redis."""
        self._pending.extend(entries)
        self._pending_bytes += sum(entry_size(entry) for entry in entries)
        max_bytes = self.max_bytes
        while len(self._pending) > self.max_events or (
            max_bytes is not None and self._pending_bytes > max_bytes
        ):
            dropped = self._pending.popleft()
            self._pending_bytes -= entry_size(dropped)
            self._note_lost(dropped.identity)
        if not self.health.healthy:
            self._waiting_writes.set()  # run() writes them when Redis is back
            return
        await self._flush()
        if self._pending:
            self._waiting_writes.set()

    async def _flush(self) -> None:
        """Write what waits in ``_pending``, oldest first, until it is empty or Redis fails.

        One writer at a time: a second caller waits for the first, then writes what is left (if
        the first failed, only once the retry delay is over). Entries leave ``_pending`` only once
        Redis has taken them, and only those: ``append`` may drop the oldest meanwhile.
        Cancelled while writing, the entries stay and are written next time (Redis appends each
        event once, however often it is sent)."""
        async with self._flushing:
            while self._pending:
                if not self.health.healthy and trio.current_time() < self._retry_at:
                    return  # the writer before us just failed: wait out the delay
                epoch = self._pending[0].identity.epoch
                batch: list[Entry] = []
                for pending in self._pending:  # one epoch per call: the script takes one
                    if len(batch) == PAGE or pending.identity.epoch != epoch:
                        break
                    batch.append(pending)
                try:
                    await self._write(batch)
                except (RedisError, OSError, TimeoutError) as error:
                    self._failed(error)
                    return
                written = {id(entry) for entry in batch}
                while self._pending and id(self._pending[0]) in written:
                    self._pending_bytes -= entry_size(self._pending.popleft())
                self._succeeded()

    async def _write(self, batch: Sequence[Entry]) -> None:
        """One script call for ``batch``; a second one, with all this instance had written as
        the floor, when the history it wrote to is gone."""
        epoch = batch[0].identity.epoch or ""
        known = self._history[1] if self._history and self._history[0] == epoch else ""
        if not known:
            self._written = {}
        lost = dict(self._lost.get(epoch, {}))
        status, generation, _appended = await self._run_script(
            APPEND_SCRIPT, *self._args(batch, known, lost)
        )
        if not int(status):
            log.warning(
                "redis replay cache lost its history: resumes from before are truncated",
                extra={"epoch": epoch},
            )
            floor = _latest(self._written, lost)
            status, generation, _appended = await self._run_script(
                APPEND_SCRIPT, *self._args(batch, known, floor, full_floor=True)
            )
        self._history = (epoch, generation.decode())
        still_lost = self._lost.get(epoch, {})
        for partition, offset in lost.items():
            if still_lost.get(partition) == offset:
                del still_lost[partition]
        if not still_lost:
            self._lost.pop(epoch, None)
        self._written = _latest(
            self._written, {e.identity.partition: e.identity.offset for e in batch}
        )

    def _args(
        self,
        batch: Sequence[Entry],
        known: str,
        floor: dict[str, Offset],
        *,
        full_floor: bool = False,
    ) -> list[str | int]:
        epoch = batch[0].identity.epoch or ""
        args: list[str | int] = [
            epoch,
            self.max_events,
            round((self.max_age or 0) * 1000),
            len(batch),
            known,
            secrets.token_urlsafe(9),
            "1" if full_floor else "0",
            len(floor),
            self.max_bytes or 0,
        ]
        for partition, offset in floor.items():
            args += [partition, format_offset(offset)]
        for entry in batch:
            message = entry.message
            assert message.scope is not None
            args += [
                entry.identity.partition,
                format_offset(entry.identity.offset),
                message.id or "",
                message.event,
                _data_json(message.data),
                _COMPACT.encode(message.scope.to_json()),
            ]
        return args

    async def forget(self, identity: EventIdentity) -> None:
        """Note the bus's deleted records up to ``identity`` as evicted, in one script (which
        starts a new history first if the cache holds another epoch's). Never raises: while Redis
        is away it is noted with the events lost meanwhile, recorded by the next append that
        reaches Redis (a replay that cannot read Redis is answered as truncated meanwhile)."""
        try:
            await self._run_script(
                FORGET_SCRIPT,
                identity.epoch or "",
                identity.partition,
                format_offset(identity.offset),
            )
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            self._note_lost(identity)

    def _note_lost(self, identity: EventIdentity) -> None:
        lost = self._lost.setdefault(identity.epoch or "", {})
        if (noted := lost.get(identity.partition)) is None or noted < identity.offset:
            lost[identity.partition] = identity.offset

    # -- reading -----------------------------------------------------------------------------------

    async def resume_point(self, epoch: str) -> dict[str, Offset] | None:
        """The last offset appended per partition, if the cache holds history of ``epoch``; this
        instance then stands on that history (a loss of it later truncates resumes from it)."""
        try:
            stored = await self._call("get", self.keys[3])
            if stored is None or stored.decode() != epoch:
                return None
            generation = await self._call("get", self.keys[4])
            served = await self._call("hgetall", self.keys[1])
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return None
        start = {k.decode(): parse_offset(v.decode()) for k, v in served.items()}
        if generation is not None:
            self._history = (epoch, generation.decode())
            self._written = dict(start)
        return start

    async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        if up_to is None:
            return Replay([], truncated=True)
        try:
            return await self._replay_from_redis(after, up_to)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            held = [e for e in self._pending if up_to.covers(e.identity)]
            held = [e for e in held if not after.covers(e.identity)]
            return Replay(held, truncated=True, unavailable=True)

    async def _replay_from_redis(self, after: Cursor, up_to: Cursor) -> Replay:
        # One round trip for what a replay needs to know and, for most, all it reads: in a
        # storm every replay's round trips wait their turn on a busy loop and a busy Redis.
        stored_epoch, generation, evicted_raw, served_raw, page = await self._redis.call_in_order(
            ("get", (self.keys[3],), {}),
            ("get", (self.keys[4],), {}),
            ("hgetall", (self.keys[2],), {}),
            ("hgetall", (self.keys[1],), {}),
            ("xrevrange", (self.keys[0], "+", "-", PAGE), {}),
            retry_closed=True,
        )
        epoch = stored_epoch.decode() if stored_epoch else None
        same_history = epoch is not None and after.is_from(self.source, epoch)
        evicted = {k.decode(): parse_offset(v.decode()) for k, v in evicted_raw.items()}
        if same_history:
            # Lost here and not yet recorded in Redis: only this epoch's floors count.
            evicted = _latest(evicted, self._lost.get(epoch or "", {}))
        partitions = {k.decode() for k in served_raw}
        # Redis lost the history this instance wrote to, and it has not written since to
        # record what it knew was there: it cannot tell what is missing, so it says so.
        replaced = (
            self._history is not None
            and self._history[0] == epoch
            and (generation is None or generation.decode() != self._history[1])
        )
        truncated = (
            not same_history
            or replaced
            or any(
                (mine := after.position(p)) is None or mine < offset
                for p, offset in evicted.items()
            )
        )
        # Read newest first, and stop once every partition has shown an event the client had:
        # each partition's events are in offset order, so nothing older can be new to it.
        unresolved = set(partitions) if same_history else None
        if unresolved is not None and any(after.position(p) is None for p in unresolved):
            unresolved = None  # a partition the client never saw: it needs all of it
        found: list[Entry] = []
        while True:
            for stream_id, fields in page:
                entry = self._readable(stream_id, fields, epoch or "")
                if entry is None:
                    # What it held cannot be told, nor whether the client had it: said.
                    truncated = True
                    continue
                if same_history and after.covers(entry.identity):
                    if unresolved is not None:
                        unresolved.discard(entry.identity.partition)
                        if not unresolved:
                            break  # all older than this the client had
                    continue
                if up_to.covers(entry.identity):
                    found.append(entry)
            if len(page) < PAGE or unresolved == set():
                break
            page = await self._call(
                "xrevrange", self.keys[0], "(" + page[-1][0].decode(), "-", PAGE
            )
        found.reverse()
        pending = [e for e in self._pending if up_to.covers(e.identity)]
        seen = {(e.identity.partition, e.identity.offset) for e in found}
        found += [
            e
            for e in pending
            if (e.identity.partition, e.identity.offset) not in seen
            and not (same_history and after.covers(e.identity))
        ]
        return Replay(found, truncated)

    def _readable(self, stream_id: bytes, fields: dict[bytes, bytes], epoch: str) -> Entry | None:
        """The entry at ``stream_id``, or ``None`` (logged and counted in :attr:`unreadable`)
        when it is not one this router can read back: left by another writer, or by another
        version. One such entry must not fail every resume that reads across it."""
        try:
            return self.decoded_entries.entry(
                stream_id, fields, epoch, lambda: self._entry(fields, epoch)
            )
        # ValueError: text that is not UTF-8 or not JSON, a bad offset or scope, a field the SSE
        # encoder refuses; RecursionError: JSON nested too deeply; KeyError: a field missing.
        except (KeyError, ValueError, RecursionError) as error:
            self.unreadable += 1
            log.warning(
                "replay cache entry unreadable",
                extra={"stream_id": stream_id.decode("ascii", "replace"), "error": repr(error)},
            )
            return None

    def _entry(self, fields: dict[bytes, bytes], epoch: str) -> Entry:
        text = {k.decode(): v.decode() for k, v in fields.items()}
        identity = EventIdentity(self.source, text["p"], parse_offset(text["o"]), epoch)
        message = SSEMessage(
            event=text["e"],
            data=json.loads(text["d"]),
            id=text["c"] or None,
            scope=Scope.from_json(json.loads(text["s"])),
        )
        return Entry(identity, message, 0.0)

    async def window(self) -> Window:
        try:
            length = await self._call("xlen", self.keys[0])
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return Window(len(self._pending), None)
        return Window(int(length) + len(self._pending), None)


def _data_json(data: object) -> str:
    """An event's data as JSON for the stream, in UTF-8 as it is, unless it holds text with no
    UTF-8 form (a lone surrogate, which a producer writing to the bus itself can send as
    ``"\\ud800"``): that is escaped, as the stream to the browser escapes it, since Redis takes
    only what encodes and a write that raised would hold every event behind it."""
    text = _COMPACT_UTF8.encode(data)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _COMPACT.encode(data)
    return text


def _latest(first: dict[str, Offset], second: dict[str, Offset]) -> dict[str, Offset]:
    """Per partition, the later offset of the two."""
    latest = dict(first)
    for partition, offset in second.items():
        if partition not in latest or latest[partition] < offset:
            latest[partition] = offset
    return latest
