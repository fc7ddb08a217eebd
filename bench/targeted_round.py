"""`python -m bench.targeted_round`: targeted events through the router's own code, no sockets.

Each stream a different user; publishes of 100 envelopes, each for one random user, go the way
the served router takes them without its HTTP server: the body parsed, each envelope checked
and sealed (the publish route's steps), published on the embedded bus, read back as the
consumer reads it, converted and routed by the adapter (the memory replay cache, the metrics
observer), and written by each session woken into an output that takes every chunk at once.
It prints the CPU (``time.process_time``) per event of each part, the best of ``--repeats``:
the part of ``python -m bench.run --workloads targeted`` that is the router's Python and trio's
scheduling of it, without the HTTP request, the socket writes and the machine's load.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import AsyncGenerator, Sequence

import trio
import trio.testing

from actors.adapter import Adapter
from actors.registry import SessionRegistry
from actors.session import Session, SessionSettings
from router.bus.base import Record
from router.bus.memory import MemoryBus
from router.cache.memory import MemoryReplayCache
from router.core.envelope import Sealed, parse_envelope, parse_publish_body
from router.core.mapping import check_mappable
from router.core.permissions import Principal, StreamFilter
from router.metrics import Metrics

BATCH = 100
PARTS = ("publish", "bus", "adapter", "sessions")
"""What each publish of :data:`BATCH` is timed in: the route's pure steps; the bus's publish
and the consumer's read; the adapter's step; the sessions' wake-ups and writes."""


class _TakesEverything:
    async def send(self, value: bytes, /) -> None:
        pass

    def close(self) -> None:
        pass


def _body(users: Sequence[str]) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps(
        [
            {
                "event_type": "System.NotificationSent",
                "occurred_at": stamp,
                "scope": {"user_id": random.choice(users)},
                "payload": {"level": "info", "title": f"{n}:{time.time_ns()}", "message": "b"},
            }
            for n in range(BATCH)
        ]
    ).encode()


def _sealed(body: bytes) -> list[Sealed]:
    sealed = []
    for item in parse_publish_body(body):  # type: ignore[attr-defined]
        envelope = parse_envelope(item)
        check_mappable(envelope)
        sealed.append(envelope.sealed())
    return sealed


async def measure(streams: int, publishes: int, repeats: int) -> dict[str, float]:
    """The best of ``repeats`` of ``publishes`` publishes: microseconds of CPU per event, each
    part (:data:`PARTS`)."""
    users = [f"user-{n}" for n in range(streams)]
    bodies = [_body(users) for _ in range(20)]
    registry, metrics, bus = SessionRegistry(), Metrics(), MemoryBus()
    adapter = Adapter(MemoryReplayCache(max_events=10_000), registry, observer=metrics)
    best = dict.fromkeys(PARTS, float("inf"))
    async with trio.open_nursery() as nursery:
        for user in users:
            session = Session(
                Principal(user),
                StreamFilter(),
                expires_at=time.time() + 3600,
                settings=SessionSettings(session_buffer=1024),
                observer=metrics,
            )
            registry.add(session)
            nursery.start_soon(session.run, _TakesEverything(), None)
        await trio.testing.wait_all_tasks_blocked()
        reader: AsyncGenerator[Sequence[Record], None] = bus.read(None)
        for repeat in range(repeats + 1):  # the first warms up
            spent = dict.fromkeys(PARTS, 0.0)
            for n in range(publishes):
                started = time.process_time()
                sealed = _sealed(bodies[n % len(bodies)])
                checked = time.process_time()
                await bus.publish(sealed)
                records = await anext(reader)
                read = time.process_time()
                await adapter.process(records)
                routed = time.process_time()
                await trio.testing.wait_all_tasks_blocked()
                written = time.process_time()
                spent["publish"] += checked - started
                spent["bus"] += read - checked
                spent["adapter"] += routed - read
                spent["sessions"] += written - routed
            if repeat:
                for part in PARTS:
                    best[part] = min(best[part], 1e6 * spent[part] / (publishes * BATCH))
        await reader.aclose()
        nursery.cancel_scope.cancel()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=100, help="publishes of 100 a repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gc.freeze()  # as the router does once it has started
    gc.set_threshold(50_000, 20, 100)
    best = trio.run(measure, args.streams, args.publishes, args.repeats)
    parts = ", ".join(f"{part} {best[part]:.1f}" for part in PARTS)
    print(
        f"{args.streams} streams, CPU per targeted event (us, best of {args.repeats}):"
        f" {parts}; all {sum(best.values()):.1f}"
    )


if __name__ == "__main__":
    main()
