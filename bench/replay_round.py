"""`python -m bench.replay_round`: a reconnect storm's replays through the router's own actors,
no sockets.

N sessions resume, all from before ``history`` events in the embedded cache, through
:meth:`actors.hub.Hub.open`, each writing to an output that takes every chunk at once. It prints
the CPU time per replayed event (process time: robust to a busy machine, unlike the wall clock),
beside the same figure for the live broadcast path (``python -m bench.actor_round``), and with
``--profile`` the functions that take it.

``--cursors K`` spreads the sessions over K cursors (taken one event apart, before the
``history`` events; session n resumes from cursor n mod K): 1, the default, is a storm after a
deploy, every client from the same cursor (the replay's slices shared among them all:
router/core/replay_share.py); as many as the sessions is every client from its own cursor,
nothing shared. The figure is per event actually replayed. ``--cache redis`` replays from the
Redis cache (the router's process only: Redis's own CPU is not counted); ``--wire websocket``
writes the WebSocket's JSON frames instead of the event stream.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
import uuid
from typing import Any

import redis
import trio
import trio.testing
import trio_asyncio

from actors.hub import Hub, HubSettings
from router import __version__
from router.bus.memory import MemoryBus
from router.cache.base import ReplayCache
from router.cache.memory import MemoryReplayCache
from router.cache.redis import RedisReplayCache
from router.core.cursor import Cursor
from router.core.envelope import Publishable, parse_envelope
from router.core.permissions import Principal, StreamFilter
from router.core.wire import SSE, WireFormat
from router.core.ws_wire import JSONFrames


class _TakesEverything:
    async def send(self, value: bytes, /) -> None:
        pass

    def close(self) -> None:
        pass


def _notice(n: int) -> Publishable:
    return parse_envelope(
        {
            "event_type": "System.NotificationSent",
            "occurred_at": "2026-11-28T10:00:00Z",
            "scope": {"broadcast": True},
            "payload": {"level": "info", "title": f"{n}:0", "message": "bench"},
        }
    )


REDIS_URL = "redis://127.0.0.1:6379"


async def measure(
    sessions: int,
    history: int,
    profile: cProfile.Profile | None,
    cursors: int = 1,
    cache_kind: str = "memory",
    wire: WireFormat[Any] = SSE,
) -> float:
    """CPU microseconds per replayed event (one event written to one session)."""
    if cache_kind == "memory":
        return await _measure(sessions, history, profile, cursors, None, wire)
    prefix = f"bench-replay-{uuid.uuid4().hex[:8]}"
    try:
        async with trio_asyncio.open_loop():
            return await _measure(sessions, history, profile, cursors, prefix, wire)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


async def _measure(
    sessions: int,
    history: int,
    profile: cProfile.Profile | None,
    cursors: int,
    redis_prefix: str | None,
    wire: WireFormat[Any],
) -> float:
    total = history + cursors - 1
    bus = MemoryBus(partitions=1, capacity=total + 10)
    cache: ReplayCache
    if redis_prefix is None:
        cache = MemoryReplayCache(max_events=total, source="memory", epoch=await bus.epoch())
    else:
        cache = RedisReplayCache(
            REDIS_URL, key_prefix=redis_prefix, source="memory", max_events=total
        )
    hub = Hub(bus, cache, HubSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        starts = [hub.position()]
        for n in range(cursors - 1):
            await hub.publish([_notice(-1 - n)])
            while (await cache.window()).events < n + 1:
                await trio.sleep(0.01)
            starts.append(hub.position())
        for n in range(0, history, 100):
            await hub.publish([_notice(m) for m in range(n, min(history, n + 100))])
        while (await cache.window()).events < total:  # the adapter appends as it routes
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        started = time.process_time()
        if profile:
            profile.enable()

        async def resume(before: Cursor) -> None:
            await hub.open(
                Principal("reader"),
                StreamFilter(),
                expires_at=time.time() + 3600,
                resume_from=before,
                output=_TakesEverything(),
                wire=wire,
            )

        replayed = 0
        async with trio.open_nursery() as storm:
            for n in range(sessions):
                storm.start_soon(resume, starts[n % cursors])
                replayed += total - n % cursors
        await trio.testing.wait_all_tasks_blocked()
        if profile:
            profile.disable()
        used = time.process_time() - started
        nursery.cancel_scope.cancel()
    await cache.aclose()
    return 1e6 * used / replayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=1_000, help="events each one replays")
    parser.add_argument(
        "--cursors", type=int, default=1, help="cursors the sessions resume from (1: all the same)"
    )
    parser.add_argument(
        "--cache",
        choices=("memory", "redis"),
        default="memory",
        help=f"the replay cache: embedded, or Redis at {REDIS_URL} (keys removed after)",
    )
    parser.add_argument("--wire", choices=("sse", "websocket"), default="sse")
    parser.add_argument("--profile", action="store_true", help="print the top 15 by own time")
    args = parser.parse_args()
    gc.freeze()  # as the router does once it has started
    gc.set_threshold(50_000, 20, 100)
    profile = cProfile.Profile() if args.profile else None
    wire = SSE if args.wire == "sse" else JSONFrames(__version__)
    per_event = trio.run(
        measure, args.sessions, args.history, profile, args.cursors, args.cache, wire
    )
    print(
        f"{args.sessions} {args.wire} sessions from {args.cursors} cursor(s) on the"
        f" {args.cache} cache"
        " replaying"
        f" {args.history} events each (or up to {args.cursors - 1} more):"
        f" {per_event:.2f} us of CPU per event and session"
        + (" (under cProfile)" if profile else "")
    )
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
