"""`python -m bench.actor_round`: one broadcast round through the router's own actors, no sockets.

The adapter routes a step of broadcast events to N sessions whose output takes every chunk at
once; the round is over when every session has written and waits again. It prints the cost per
session of the routing and of the wake-up and write, so ``docs/performance.md`` can set the
router's share of a round beside trio's floor (``python -m bench.trio_wake``) and the kernel's.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import trio
import trio.testing

from actors.adapter import Adapter
from actors.registry import SessionRegistry
from actors.session import Session, SessionSettings
from router.bus.base import Record
from router.cache.memory import MemoryReplayCache
from router.core.cursor import EventIdentity
from router.core.permissions import Principal, StreamFilter
from router.metrics import Metrics


class _TakesEverything:
    async def send(self, value: bytes, /) -> None:
        pass

    def close(self) -> None:
        pass


def _notification(offset: int) -> Record:
    body = {
        "event_type": "System.NotificationSent",
        "occurred_at": "2026-11-28T10:00:00Z",
        "scope": {"broadcast": True},
        "payload": {"level": "info", "title": f"{offset}:0", "message": "benchmark"},
    }
    return Record(EventIdentity("memory", "0", (offset,), "e1"), json.dumps(body).encode())


async def measure(sessions: int, events_per_round: int, rounds: int) -> tuple[float, float]:
    """Microseconds per session and round: routing, then waking and writing."""
    registry = SessionRegistry()
    metrics = Metrics()
    adapter = Adapter(
        MemoryReplayCache(max_events=10_000), registry, fanout_pause_seconds=0, observer=metrics
    )
    routing = writing = 0.0
    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            session = Session(
                Principal("reader"),
                StreamFilter(),
                expires_at=time.time() + 3600,
                settings=SessionSettings(session_buffer=1024),
                observer=metrics,
            )
            registry.add(session)
            nursery.start_soon(session.run, _TakesEverything(), None)
        await trio.testing.wait_all_tasks_blocked()
        offset = 0
        for _ in range(rounds):
            records = [_notification(offset + n) for n in range(events_per_round)]
            offset += events_per_round
            started = time.perf_counter()
            await adapter.process(records)
            routed = time.perf_counter()
            await trio.testing.wait_all_tasks_blocked()
            routing += routed - started
            writing += time.perf_counter() - routed
        nursery.cancel_scope.cancel()
    per_session_round = 1e6 / (sessions * rounds)
    return routing * per_session_round, writing * per_session_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=12, help="events per round")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    gc.freeze()  # as the router does once it has started
    gc.set_threshold(50_000, 20, 100)
    routing, writing = trio.run(measure, args.sessions, args.events, args.rounds)
    print(
        f"{args.sessions} sessions, {args.events} events a round: routing {routing:.1f} us,"
        f" wake-up and write {writing:.1f} us per session and round"
    )


if __name__ == "__main__":
    main()
