"""``just faults``: the longer soak, every fault mixed, one table at the end.

Two router processes on a Redis of the soak's own (the Redis Streams bus and the Redis replay
cache), tabs of every kind (busy ones dropping at random, quiet ones, a slow reader, one that
stalls), a publisher writing all along through whichever router is up, and every few seconds a
fault drawn from the seeded generator: a router SIGTERM'd or SIGKILL'd and restarted in place,
Redis restarted with its data or empty, every stream cut at once (a reconnect storm). A router
that dies unasked is restarted and counted. At the end the tabs settle and the oracle judges.

    python -m tests.faults.soak --seconds 120 --seed 7
"""

from __future__ import annotations

import argparse
import random
import secrets
import signal
import sys
from collections import Counter
from pathlib import Path

import trio

from tests.faults.harness import (
    Behaviour,
    Frontend,
    RouterProcess,
    Run,
    TabSpec,
    now,
    router_processes,
)
from tests.faults.oracle import LostAt, describe_failures, table
from tests.faults.test_fault_redis import epochs_of, stop_redis
from tests.redis_helpers import RedisServer

FAULTS = ("sigterm", "sigkill", "redis-kept", "redis-empty", "storm")


async def soak(seconds: float, seed: int) -> bool:
    run = Run("soak", seed=seed, population_options={"busy_users": 8, "quiet_users": 4})
    lost = LostAt()
    run.retention = lost
    slow = run.population.add_tab("slow")
    stalled = run.population.add_tab("stalled")
    rng = random.Random(seed)  # the faults: their kind, their moment, their victim
    routing = random.Random(seed + 1)  # which router a tab or a publish goes to
    injected: Counter[str] = Counter()
    crashes = 0
    server = RedisServer()
    server.start()
    prefix = f"soak-{secrets.token_hex(3)}"
    settings = {
        "bus": "redis",
        "cache": "redis",
        "redis_url": server.url,
        "redis_key_prefix": prefix,
        "redis_streams": tuple(f"{prefix}-{n}" for n in range(3)),
    }

    def behaviour(spec: TabSpec) -> Behaviour:
        if spec is slow:
            return Behaviour(read_pause_seconds=0.02)
        if spec is stalled:
            return Behaviour(stall_seconds=1.0)
        return Behaviour(drops=spec.group == "busy", away_seconds=0.3)

    try:
        with router_processes() as routers:
            routers += [RouterProcess(settings), RouterProcess(settings)]
            for router in routers:
                await router.start()
            frontend = Frontend(routing, *(r.url for r in routers))
            run.publish_through(lambda: routing.choice(frontend.urls or [routers[0].url]))
            run.make_tabs(behaviour)
            async with trio.open_nursery() as nursery:
                run.start(nursery, frontend)
                await run.all_connected()
                stop_publishing = trio.Event()

                async def publish_all_along() -> None:
                    while not stop_publishing.is_set():
                        await run.publisher.publish(5, batch=5, pause=0.02)

                restarting: set[RouterProcess] = set()

                async def supervise() -> None:
                    """Restart a router that died unasked, as an orchestrator would."""
                    nonlocal crashes
                    while True:
                        for router in routers:
                            if router.crashed() and router not in restarting:
                                crashes += 1
                                print(f"a router died unasked:\n{router.log_tail(3)}")
                                await router.start()
                        await trio.sleep(0.2)

                nursery.start_soon(publish_all_along)
                nursery.start_soon(supervise)
                deadline = now() + seconds
                while now() < deadline:
                    await trio.sleep(rng.uniform(1.0, 3.0))
                    fault = rng.choice(FAULTS)
                    injected[fault] += 1
                    run.mark(fault)
                    if fault in ("sigterm", "sigkill"):
                        victim = rng.choice(routers)
                        restarting.add(victim)
                        frontend.urls.remove(victim.url)
                        if victim.process is not None and victim.process.poll() is None:
                            victim.signal(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
                        await victim.wait()
                        await victim.start()
                        frontend.urls.append(victim.url)
                        restarting.discard(victim)
                    elif fault.startswith("redis"):
                        moment = now()
                        await trio.to_thread.run_sync(stop_redis, server, fault == "redis-kept")
                        if fault == "redis-empty":
                            lost.lose(moment, epochs=epochs_of(run))
                        await trio.sleep(rng.uniform(0.05, 0.5))
                        await trio.to_thread.run_sync(server.start)
                    else:
                        for tab in run.tabs:
                            tab.cut()
                stop_publishing.set()
                await run.settle(60)
                nursery.cancel_scope.cancel()
    finally:
        server.remove()
    verdicts = run.verdicts()
    print(f"\nsoak: {seconds:g} s, seed {seed}")
    print("faults injected: " + ", ".join(f"{f} {n}" for f, n in sorted(injected.items())))
    print(f"routers that died unasked (restarted): {crashes}")
    print(f"publish batches not answered: {run.publisher.failed_batches}")
    print(table(run.figures()))
    failures = describe_failures(verdicts)
    if failures:
        print(f"\nthe promise broke:\n{failures}")
        failing = [t for t, v in zip(run.tabs, verdicts, strict=True) if not v.clean]
        for tab in failing[:4]:
            print(f"timeline of {tab.spec.name}:\n{run.timeline(tab, limit=200)}")
    return not failures and not crashes


def main() -> None:
    parser = argparse.ArgumentParser(description="Soak the router under mixed faults.")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long faults go on")
    parser.add_argument("--seed", type=int, default=14, help="seed of every random choice")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    held = trio.run(soak, args.seconds, args.seed)
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
