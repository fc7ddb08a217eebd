"""The Kafka-compatible broker frozen (SIGSTOP) and thawed while tabs stream and resume."""

from __future__ import annotations

import trio

from tests.e2e_helpers import running_router
from tests.faults.harness import RESUMING_DROPS, ROUTER_SETTINGS, Behaviour, Frontend, Run
from tests.kafka_broker import create_topic, new_topic_name, running_broker


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
