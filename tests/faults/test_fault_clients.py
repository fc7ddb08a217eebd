"""Faults on the client side: drops at random moments, slow readers, a client that reads nothing."""

from __future__ import annotations

from typing import Any

import trio

from router.core.cursor import CursorError, EventIdentity, parse_cursor, parse_identity
from tests.e2e_helpers import running_router
from tests.faults.harness import (
    KIND_WEIGHTS,
    ROUTER_SETTINGS,
    Behaviour,
    Frontend,
    Kind,
    Run,
    TabSpec,
)
from tests.faults.oracle import Published, WindowOfLast, judge


async def test_clients_dropping_at_random_moments_lose_and_repeat_nothing(
    redis_bus_settings: dict[str, Any],
) -> None:
    """Busy and quiet tabs drop their streams before their first event, after a few events (often
    in the middle of a replay, since they were away meanwhile) and after a random while, and
    reconnect with the last ``id:`` they saw, while events flow for many users, novels, sessions
    and everyone."""
    run = Run("client drops", seed=1401)
    async with running_router(**ROUTER_SETTINGS, **redis_bus_settings) as router:
        with trio.fail_after(20):  # waiting for: the router to reach the Redis bus
            await router.running.hub.reading.wait()
        run.publish_through(lambda: router.url)
        run.make_tabs(lambda spec: Behaviour(drops=True, away_seconds=0.3))
        async with trio.open_nursery() as nursery:
            run.start(nursery, Frontend(run.rng, router.url))
            await run.all_connected()
            await run.publisher.publish(600, batch=6, pause=0.01)
            await run.settle()
            nursery.cancel_scope.cancel()
    run.report()


async def test_a_tab_that_drops_before_its_first_event_resumes_where_it_started() -> None:
    """The drop before any event, made certain: the tab is away while events are published."""
    run = Run("drop before the first event", seed=1404)
    async with running_router(**ROUTER_SETTINGS, memory_partitions=3) as router:
        run.publish_through(lambda: router.url)
        (tab, *others) = run.make_tabs(lambda spec: Behaviour())
        async with trio.open_nursery() as nursery:
            run.start(nursery, Frontend(run.rng, router.url), others)
            await run.all_connected(others)
            async with trio.open_nursery() as first_stream:  # opened, then dropped at once
                tab.calm = True
                tab.behaviour.drops = False
                first_stream.start_soon(tab.run, Frontend(run.rng, router.url))
                await run.all_connected([tab])
                first_stream.cancel_scope.cancel()
            await run.publisher.publish(60, batch=6)
            run.start(nursery, Frontend(run.rng, router.url), [tab])
            await run.publisher.publish(20, batch=5)
            await run.settle(15)
            nursery.cancel_scope.cancel()
    run.report()


async def test_quiet_tabs_resume_without_a_false_truncation() -> None:
    """On the embedded default with a replay window of 50 events, busy tabs' events pass quiet
    tabs by hundreds; the quiet tabs are then cut and resume. They missed nothing, so they must
    not be told to refetch their state."""
    run = Run("quiet tabs, small window", seed=1405)
    async with running_router(
        **ROUTER_SETTINGS, memory_partitions=3, cache_max_events=50
    ) as router:
        run.publish_through(lambda: router.url)
        run.retention = WindowOfLast(50, run.publisher.published)
        run.make_tabs(lambda spec: Behaviour())
        async with trio.open_nursery() as nursery:
            run.start(nursery, Frontend(run.rng, router.url))
            await run.all_connected()
            run.population.weights = {Kind.BROADCAST: 1}
            await run.publisher.publish(3, batch=3)  # the quiet tabs' last events, at the start
            run.population.weights = dict(KIND_WEIGHTS)
            run.population.weights[Kind.BROADCAST] = 0  # from here on nothing for quiet tabs
            await run.settle()
            quiet = [tab for tab in run.tabs if tab.spec.group == "quiet"]
            await run.publisher.publish(300, batch=10, pause=0.005)
            await run.settle()
            newest = newest_per_partition(run.publisher.published)
            try:
                # waiting for: every quiet tab's cursor to cover the newest event of every
                # partition (an id-only block on the heartbeat, once it moved); without that
                # the tabs are cut anyway, and the verdict says what it cost them
                with trio.fail_after(10):
                    while not all(covers(tab.last_event_id, newest) for tab in quiet):
                        await trio.sleep(0.1)
            except trio.TooSlowError:
                print("the quiet tabs' cursors did not follow the router in 10 s")
            for tab in quiet:
                tab.connected = trio.Event()
                tab.cut()
            run.mark("quiet tabs cut")
            await run.all_connected(quiet)
            await run.publisher.publish(20, batch=5)
            await run.settle()
            nursery.cancel_scope.cancel()
    run.report()


def newest_per_partition(published: list[Published]) -> list[EventIdentity]:
    newest: dict[str, EventIdentity] = {}
    for event in published:
        if event.identity is not None:
            identity = parse_identity(event.identity)
            held = newest.get(identity.partition)
            if held is None or held.offset < identity.offset:
                newest[identity.partition] = identity
    return list(newest.values())


def covers(last_event_id: str | None, identities: list[EventIdentity]) -> bool:
    if last_event_id is None:
        return False
    try:
        cursor = parse_cursor(last_event_id)
    except CursorError:
        return False
    return all(cursor.covers(identity) for identity in identities)


async def test_a_slow_reader_and_one_that_reads_nothing_hold_back_no_one() -> None:
    """Among fast tabs, one reads slowly and one reads nothing for a while after every stream
    opens: the router may cut them (``lagged``), and they resume; the fast tabs get everything,
    and so, in the end, do the slow ones."""
    run = Run("slow and stalled readers", seed=1402, population_options={"padding": 2000})
    slow = run.population.add_tab("slow")
    stalled = run.population.add_tab("stalled")

    def behaviour(spec: TabSpec) -> Behaviour:
        if spec is slow:
            return Behaviour(read_pause_seconds=0.02)
        if spec is stalled:
            return Behaviour(stall_seconds=1.5)
        return Behaviour()

    async with running_router(
        **{**ROUTER_SETTINGS, "session_buffer": 16}, memory_partitions=3
    ) as router:
        run.publish_through(lambda: router.url)
        run.make_tabs(behaviour)
        async with trio.open_nursery() as nursery:
            run.start(nursery, Frontend(run.rng, router.url))
            await run.all_connected()
            await run.publisher.publish(600, batch=20, pause=0.005)
            await run.settle()
            nursery.cancel_scope.cancel()
    run.report()
    cut = [t for t in run.tabs if t.spec in (slow, stalled) and len(t.record.connections) > 1]
    print(f"slow or stalled tabs cut and resumed: {len(cut)}")


async def test_a_tab_that_never_reads_is_cut_and_holds_back_no_one() -> None:
    """Among fast tabs, one opens its stream and never reads another byte: its socket buffers
    fill, and the router must cut it (``lagged``, or the kernel's ``TCP_USER_TIMEOUT``) rather
    than hold anyone back. Every other tab gets everything while it still reads nothing; when it
    reads again at the end, it finds its stream ended and resumes exactly from its cursor."""
    run = Run("a tab that never reads", seed=1406, population_options={"padding": 4000})
    silent = run.population.add_tab("never reads")
    reads_again = trio.Event()

    def behaviour(spec: TabSpec) -> Behaviour:
        return Behaviour(reads_again=reads_again) if spec is silent else Behaviour()

    async with running_router(
        **{**ROUTER_SETTINGS, "session_buffer": 16}, memory_partitions=3
    ) as router:
        run.publish_through(lambda: router.url)
        tabs = run.make_tabs(behaviour)
        (never_reads,) = [tab for tab in tabs if tab.spec is silent]
        others = [tab for tab in tabs if tab is not never_reads]
        async with trio.open_nursery() as nursery:
            run.start(nursery, Frontend(run.rng, router.url))
            await run.all_connected()
            await run.publisher.publish(600, batch=20, pause=0.005)
            await run.settle(tabs=others)
            fast = [judge(tab.record, run.publisher.published, run.retention) for tab in others]
            held_back = [v.client for v in fast if v.lost]
            run.mark("the others settled; the silent tab reads again")
            reads_again.set()
            await run.settle()
            nursery.cancel_scope.cancel()
    run.report()
    streams = len(never_reads.record.connections)
    errors = [code for c in never_reads.record.connections for code in c.errors]
    print(f"the silent tab: {streams} streams, errors {errors}")
    assert not held_back, f"tabs still missing events while one tab read nothing: {held_back}"
    assert streams > 1, "the tab that never read was not cut: nothing was tested"
