"""``serve --workers N``: the supervisor's rules, and real worker processes on the Redis bus.

The supervision is tested on stand-in workers (small Python processes that report ready, or die);
the routers are tested as a deployment sees them: ``sse-router serve --workers 2`` on one port,
browser-like tabs (tests/faults/harness.py) judged by the fault suite's oracle.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from router.cli import main
from router.config import Settings
from router.supervisor import (
    SlotSettings,
    WorkerSlot,
    WorkerStartError,
    supervise,
    workers_refusal,
)
from tests.e2e_helpers import SECRET
from tests.faults.harness import (
    Behaviour,
    Frontend,
    Kind,
    RouterProcess,
    Run,
    Tab,
    router_processes,
)
from tests.kafka_broker import Broker, create_topic, new_topic_name
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

# -- the rules ------------------------------------------------------------------------------------


def test_one_worker_is_the_single_process_whatever_the_bus() -> None:
    assert workers_refusal(Settings()) is None
    assert workers_refusal(Settings(workers=1, bus="memory", cache="memory")) is None


@pytest.mark.parametrize(
    ("bus", "cache"), [("memory", "memory"), ("redis", "memory"), ("memory", "redis")]
)
def test_several_workers_need_a_shared_bus_and_cache(bus: str, cache: str) -> None:
    refusal = workers_refusal(Settings(workers=2, bus=bus, cache=cache))
    assert refusal is not None
    assert "--bus redis or --bus kafka" in refusal
    assert "--cache redis" in refusal


def test_several_workers_on_a_shared_bus_and_cache_may_run() -> None:
    assert workers_refusal(Settings(workers=4, bus="kafka", cache="redis")) is None
    assert workers_refusal(Settings(workers=4, bus="redis", cache="redis")) is None
    assert workers_refusal(Settings(workers=4, bus="redis", cache="redis", worker_ports=65534))


def test_the_command_refuses_the_memory_bus_with_several_workers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["serve", "--workers", "2", "--port", "0", "--jwt-secret", SECRET])
    assert code == 2
    error = capsys.readouterr().err
    assert "--workers 2 needs" in error
    assert "--bus redis or --bus kafka" in error


# -- supervision, on stand-in workers --------------------------------------------------------------

READY_AND_WAIT = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM]); "
    "os.write(int(sys.argv[1]), b'{\"addresses\": []}\\n'); "
    "signal.sigwait([signal.SIGTERM]); sys.exit(0)"
)
READY_THEN_DIE = "import os, sys; os.write(int(sys.argv[1]), b'{}\\n'); sys.exit(1)"


@pytest.fixture
def listening() -> Iterator[int]:
    """A socket for the stand-ins to inherit (they never use it)."""
    with socket.socket() as sock:
        yield sock.fileno()


FAST = SlotSettings(grace_seconds=10, backoff_initial=0.01, backoff_maximum=0.02)


def stand_in(program: str) -> Any:
    def command(index: int, ready: int) -> list[str]:
        return [sys.executable, "-c", program, str(ready)]

    return command


async def test_a_worker_that_keeps_dying_at_start_stops_the_supervisor(listening: int) -> None:
    programs = {0: READY_AND_WAIT, 1: "import sys; sys.exit(3)"}

    def command(index: int, ready: int) -> list[str]:
        return [sys.executable, "-c", programs[index], str(ready)]

    with pytest.raises(WorkerStartError) as raised:
        with trio.fail_after(30):  # waiting for: the supervisor to give up on worker 1
            await supervise(Settings(workers=2), command, [listening], slot_settings=FAST)
    assert raised.value.code == 3
    assert "worker 1 exited with code 3 before it was ready, 3 times in a row" in str(raised.value)


async def test_a_worker_refusing_its_settings_stops_the_supervisor_at_once(listening: int) -> None:
    starts: list[int] = []

    def command(index: int, ready: int) -> list[str]:
        starts.append(index)
        return [sys.executable, "-c", "import sys; sys.exit(2)", str(ready)]

    with pytest.raises(WorkerStartError) as raised, trio.fail_after(30):
        await supervise(Settings(workers=1), command, [listening], slot_settings=FAST)
    assert raised.value.code == 2
    assert starts == [0]


@asynccontextmanager
async def supervising(
    workers: int, program: str, listening: int
) -> AsyncIterator[list[WorkerSlot]]:
    """The supervisor running ``workers`` stand-ins of ``program``; cancelled at the end."""
    async with trio.open_nursery() as nursery:
        slots: list[WorkerSlot] = await nursery.start(
            lambda task_status: supervise(
                Settings(workers=workers),
                stand_in(program),
                [listening],
                slot_settings=FAST,
                task_status=task_status,
            )
        )
        yield slots
        nursery.cancel_scope.cancel()


async def test_a_worker_that_dies_once_ready_is_started_again(listening: int) -> None:
    async with supervising(1, READY_THEN_DIE, listening) as slots:
        with trio.fail_after(30):  # waiting for: the third start of the dying worker
            while slots[0].starts < 3:
                await trio.sleep(0.02)


async def test_cancelling_the_supervisor_stops_its_workers_with_sigterm(listening: int) -> None:
    async with supervising(2, READY_AND_WAIT, listening) as slots:
        with trio.fail_after(30):  # waiting for: both stand-ins to be ready
            while not all(slot.readies for slot in slots):
                await trio.sleep(0.02)
    assert [slot.process and slot.process.returncode for slot in slots] == [0, 0]


# -- real routers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    index: int
    pid: int
    url: str
    """The worker's own port (``--worker-ports 0``): its ``/metrics`` alone."""


def workers_of(router: RouterProcess) -> dict[int, Worker]:
    """The latest ``worker ready`` line of each worker in the router's log."""
    found: dict[int, Worker] = {}
    for line in router.log.read_text(errors="replace").splitlines():
        if '"worker ready"' not in line:
            continue
        record = json.loads(line)
        own = [a for a in record["addresses"] if a != router.url]
        found[record["worker"]] = Worker(record["worker"], record["pid"], own[0])
    return found


async def all_ready(
    router: RouterProcess, workers: int, not_pids: frozenset[int] = frozenset()
) -> None:
    with trio.fail_after(30):  # waiting for: every worker to report ready (new ones if asked)
        while True:
            ready = workers_of(router)
            if len(ready) == workers and not {w.pid for w in ready.values()} & not_pids:
                return
            assert router.process is not None
            assert router.process.poll() is None, router.log_tail()
            await trio.sleep(0.05)


async def open_streams(worker: Worker) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        page = (await client.get(f"{worker.url}/metrics")).text
    found = re.findall(r"^sse_current_connections\{[^}]*\} ([0-9.e+]+)$", page, re.MULTILINE)
    assert found, page[:500]
    return int(sum(float(count) for count in found))


async def spread_over_workers(
    run: Run, router: RouterProcess, nursery: trio.Nursery, frontend: Frontend
) -> dict[int, int]:
    """Open the population's tabs on the shared port, and more, until every worker holds some
    (the kernel gives each connection to whichever worker accepts it first)."""
    run.make_tabs(lambda spec: Behaviour(away_seconds=0.1))
    run.start(nursery, frontend)
    await run.all_connected()
    for _ in range(20):
        counts = {w.index: await open_streams(w) for w in workers_of(router).values()}
        if min(counts.values()) >= 2:
            return counts
        new = [run.population.add_tab("more") for _ in range(5)]
        tabs: list[Tab] = run.make_tabs(lambda spec: Behaviour(away_seconds=0.1))[-len(new) :]
        run.start(nursery, frontend, tabs)
        await run.all_connected(tabs)
    raise AssertionError(f"the streams did not spread over the workers: {counts}")


@pytest.fixture
def workers_settings(redis_bus_settings: dict[str, Any]) -> dict[str, Any]:
    """Two workers on the Redis bus and cache, each also on a free port of its own."""
    return {**redis_bus_settings, "cache": "redis", "workers": 2, "worker_ports": 0}


@pytest.fixture(params=["redis", "kafka"])
def any_bus_workers_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Two workers on the Redis bus or on a Kafka topic of three partitions, on the Redis cache."""
    if request.param == "redis":
        yield request.getfixturevalue("workers_settings")
        return
    broker: Broker = request.getfixturevalue("tansu_broker")
    topic = new_topic_name()
    trio.run(create_topic, broker.bootstrap, topic, 3)
    prefix = new_prefix()
    yield {
        "bus": "kafka",
        "kafka_bootstrap": broker.bootstrap,
        "kafka_topic": topic,
        "cache": "redis",
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "workers": 2,
        "worker_ports": 0,
    }
    delete_prefix(REDIS_URL, prefix)


@asynccontextmanager
async def supervised(settings: dict[str, Any]) -> AsyncIterator[RouterProcess]:
    """``serve --workers 2`` with ``settings``, both workers ready; killed at the end."""
    with router_processes() as routers:
        router = RouterProcess(settings)
        routers.append(router)
        await router.start()
        await all_ready(router, 2)
        yield router


@dataclass(frozen=True)
class Spread:
    router: RouterProcess
    nursery: trio.Nursery
    """Where the tabs run."""
    counts: dict[int, int]
    """How many streams each worker held once the tabs were spread."""


@asynccontextmanager
async def tabs_over_workers(run: Run, settings: dict[str, Any]) -> AsyncIterator[Spread]:
    """:func:`supervised` with the run's tabs spread over both workers, the run publishing
    through the same port; when the block ends the tabs stop, and the router must not have
    crashed."""
    async with supervised(settings) as router:
        frontend = Frontend(run.rng, router.url)
        run.publish_through(lambda: router.url)
        async with trio.open_nursery() as nursery:
            counts = await spread_over_workers(run, router, nursery, frontend)
            yield Spread(router, nursery, counts)
            nursery.cancel_scope.cancel()
        assert not router.crashed(), router.log_tail()


async def kill_mid_flow(
    run: Run,
    router: RouterProcess,
    nursery: trio.Nursery,
    victims: Callable[[dict[int, Worker]], list[Worker]],
    what: str,
) -> None:
    """A moment into a publisher's flow of 200 events, SIGKILL the workers ``victims`` picks;
    once the supervisor has every worker ready again, that flow finished and 60 more published,
    wait until the tabs have settled (the run's oracle then judges what each was owed)."""
    publishing = trio.Event()

    async def publish_meanwhile() -> None:
        await run.publisher.publish(200, batch=5, pause=0.01)
        publishing.set()

    nursery.start_soon(publish_meanwhile)
    await trio.sleep(0.2)  # a moment into the stream, so the kill lands mid-flow
    killed = frozenset(worker.pid for worker in victims(workers_of(router)))
    run.mark(f"{what} (pid {', '.join(map(str, sorted(killed)))}) SIGKILL'd")
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    await all_ready(router, 2, not_pids=killed)
    run.mark(f"{what} ready again")
    with trio.fail_after(30):  # waiting for: the publishing during the kill to finish
        await publishing.wait()
    await run.publisher.publish(60, batch=5, pause=0.01)
    await run.settle()


async def test_streams_spread_over_workers_all_receive_a_broadcast(
    workers_settings: dict[str, Any],
) -> None:
    run = Run("broadcast over 2 workers (redis)", seed=1801)
    run.population.weights = {Kind.BROADCAST: 1}
    async with tabs_over_workers(run, workers_settings) as spread:
        await run.publisher.publish(20, batch=2, pause=0.01)
        await run.settle()
    print(f"streams per worker: {spread.counts}")
    run.report()


async def test_a_killed_worker_is_restarted_while_its_streams_resume_on_the_others(
    any_bus_workers_settings: dict[str, Any],
) -> None:
    """SIGKILL one of two workers while events flow: its tabs reconnect to the port with their
    cursors and land on the other (or on it, restarted); every tab gets exactly what it is owed."""
    workers_settings = any_bus_workers_settings
    run = Run(f"a worker SIGKILL'd ({workers_settings['bus']})", seed=1802)
    async with tabs_over_workers(run, workers_settings) as spread:
        await run.publisher.publish(100, batch=5, pause=0.01)
        await kill_mid_flow(run, spread.router, spread.nursery, lambda w: [w[0]], "worker 0")
        assert '"worker exited"' in spread.router.log.read_text()
    counts = spread.counts
    resumed = sum(len(tab.record.connections) > 1 for tab in run.tabs)
    print(f"streams per worker before the kill: {counts}; tabs that reconnected: {resumed}")
    assert resumed >= counts[0]
    run.report()


async def test_sigterm_drains_every_worker(workers_settings: dict[str, Any]) -> None:
    """SIGTERM to the supervisor: every stream on every worker is told ``server-shutdown`` and
    ended, the workers exit, and so does the supervisor, with 0."""
    run = Run("SIGTERM over 2 workers (redis)", seed=1803)
    async with tabs_over_workers(run, workers_settings) as spread:
        pids = [w.pid for w in workers_of(spread.router).values()]
        for tab in run.tabs:
            tab.calm = True
        spread.router.signal(signal.SIGTERM)
        assert await spread.router.wait() == 0, spread.router.log_tail()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    told = [tab.record.connections[-1].errors for tab in run.tabs]
    assert all("server-shutdown" in errors for errors in told), told


async def test_a_killed_supervisor_takes_its_workers_with_it(
    workers_settings: dict[str, Any],
) -> None:
    """Nobody is left to drain them: each sees its lifeline end and shuts down by itself instead
    of holding the port as an orphan."""
    async with supervised(workers_settings) as router:
        pids = [w.pid for w in workers_of(router).values()]
        # First, the supervisor is alive: its workers run on. (Outliving trio's idle worker
        # threads, 10 s, which started them: PR_SET_PDEATHSIG, tried first, stopped them then.)
        await trio.sleep(11)
        assert '"router stopping"' not in router.log.read_text()
        router.signal(signal.SIGKILL)
        await router.wait()
        with trio.fail_after(20):  # waiting for: both workers to end
            while any(alive(pid) for pid in pids):
                await trio.sleep(0.05)
        assert router.log.read_text().count('"router stopping"') == 2


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_every_worker_killed_at_once_loses_nothing(workers_settings: dict[str, Any]) -> None:
    """Both workers SIGKILL'd together while events flow (the host's whole router gone for a
    moment): the supervisor restarts both, and every tab resumes with all it is owed."""
    run = Run("every worker SIGKILL'd (redis)", seed=1804)
    async with tabs_over_workers(run, workers_settings) as spread:
        await run.publisher.publish(60, batch=5, pause=0.01)
        await kill_mid_flow(
            run, spread.router, spread.nursery, lambda w: list(w.values()), "every worker"
        )
    run.report()
