"""The Kafka-compatible broker frozen (SIGSTOP) and thawed, and stopped and started again, while
tabs stream and resume."""

from __future__ import annotations

import pytest
import trio

from router.core.cursor import parse_identity
from tests.e2e_helpers import running_router
from tests.faults.harness import RESUMING_DROPS, ROUTER_SETTINGS, Behaviour, Frontend, Run, now
from tests.faults.oracle import LostAt, Published
from tests.kafka_broker import BrokerKind, create_topic, new_topic_name, running_broker


async def test_a_frozen_broker_loses_nothing_once_thawed() -> None:
    """A broker of the test's own is frozen with connections open: reads and publishes hang.
    Tabs keep dropping and resuming meanwhile (from the replay cache); once it is thawed,
    publishing goes on and every tab gets everything, once."""
    run = Run("broker frozen (kafka)", seed=1450)
    with running_broker() as broker:
        topic = new_topic_name()
        await create_topic(broker.bootstrap, topic, 3)
        settings = {"bus": "kafka", "kafka_bootstrap": broker.bootstrap, "kafka_topic": topic}
        async with running_router(
            **ROUTER_SETTINGS, **settings, kafka_request_timeout_ms=1000
        ) as router:
            with trio.fail_after(20):  # waiting for: the router to reach the broker
                await router.running.hub.reading.wait()
            run.publish_through(lambda: router.url)
            run.make_tabs(
                lambda spec: Behaviour(
                    drops=spec.group == "busy", away_seconds=0.2, drop_modes=RESUMING_DROPS
                )
            )
            async with trio.open_nursery() as nursery:
                run.start(nursery, Frontend(run.rng, router.url))
                await run.all_connected()
                await run.publisher.publish(150, batch=5, pause=0.01)
                broker.pause()
                run.mark("broker frozen")
                await trio.sleep(1.5)  # the fault's length: tabs drop and resume meanwhile
                broker.resume()
                run.mark("broker thawed")
                await run.publisher.publish(150, batch=5, pause=0.01)
                await run.settle()
                nursery.cancel_scope.cancel()
    run.report()


@pytest.mark.parametrize(
    "kind",
    [BrokerKind.NOIDA, BrokerKind.TANSU],
    ids=["noida-data-kept", "tansu-data-lost"],
)
async def test_a_restarted_broker_resumes_exactly_or_says_the_history_is_new(
    kind: BrokerKind,
) -> None:
    """A broker of the test's own is stopped (SIGTERM) under load and started again on the same
    port, tabs dropping and resuming meanwhile. noida-db comes back with its data directory: every
    tab must resume exactly. tansu comes back empty (it keeps everything in memory): the topic is
    created again, a new history; a tab whose cursor is from before must be told
    ``history-truncated``, and everyone must get what is published after."""
    data_kept = kind is BrokerKind.NOIDA
    run = Run(f"broker restarted ({kind.value})", seed=1451)
    lost = LostAt()
    run.retention = lost
    with running_broker(kind=kind) as broker:
        topic = new_topic_name()
        await create_topic(broker.bootstrap, topic, 3)
        async with running_router(
            **ROUTER_SETTINGS,
            **broker.router_settings,
            kafka_topic=topic,
            kafka_request_timeout_ms=1000,
        ) as router:
            hub = router.running.hub
            with trio.fail_after(20):  # waiting for: the router to reach the broker
                await hub.reading.wait()
            run.publish_through(lambda: router.url)
            run.make_tabs(
                lambda spec: Behaviour(
                    drops=spec.group == "busy", away_seconds=0.2, drop_modes=RESUMING_DROPS
                )
            )
            async with trio.open_nursery() as nursery:
                run.start(nursery, Frontend(run.rng, router.url))
                await run.all_connected()
                await run.publisher.publish(150, batch=5, pause=0.01)
                await run.settle()  # every tab's cursor is in the history about to go
                for tab in run.tabs:
                    tab.calm = False
                broker.stop()
                run.mark("broker stopped")
                before_stop = list(run.publisher.published)
                if not data_kept:
                    lost.lose(now(), epochs_seen(run))
                await trio.sleep(1.0)  # the fault's length: tabs drop and resume meanwhile
                broker.start_again()
                if not data_kept:
                    await create_topic(broker.bootstrap, topic, 3)
                run.mark("broker started again")
                await run.publisher.publish(150, batch=5, pause=0.01)
                await run.settle(30)
                nursery.cancel_scope.cancel()
    run.report()
    after_start = run.publisher.published[len(before_stop) :]
    continued = log_went_on(before_stop, after_start)
    print(f"the log went on from where it stood: {continued}")
    if data_kept:
        assert continued, "noida-db did not keep its log across the restart: nothing was tested"
    truncated = sum(len(c.truncations) for t in run.tabs for c in t.record.connections)
    print(f"truncations: {truncated}")
    if not data_kept:
        assert truncated, "no tab was told its history was lost with the broker's"


def epochs_seen(run: Run) -> set[str]:
    """The epochs of every event published so far: the history a broker restarted empty lost."""
    identities = [parse_identity(e.identity) for e in run.publisher.published if e.identity]
    return {identity.epoch for identity in identities if identity.epoch is not None}


def log_went_on(before: list[Published], after: list[Published]) -> bool:
    """Whether every partition's offsets after the restart follow those before it."""
    newest: dict[str, tuple[int, ...]] = {}
    for event in before:
        if event.identity is not None:
            identity = parse_identity(event.identity)
            newest[identity.partition] = max(newest.get(identity.partition, ()), identity.offset)
    later = [parse_identity(e.identity) for e in after if e.identity is not None]
    return bool(later) and all(i.offset > newest.get(i.partition, ()) for i in later)
