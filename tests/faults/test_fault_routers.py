"""Faults of the router itself: SIGTERM and SIGKILL mid-stream, clients resuming on a second
instance on the same bus and Redis cache; a router restarted in place; a reconnect storm."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.faults.harness import Behaviour, Frontend, RouterProcess, Run, router_processes
from tests.kafka_broker import Broker, create_topic, new_topic_name
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix


@pytest.fixture(params=["redis", "kafka"])
def shared_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Flags for router processes of one deployment: the Redis bus or a Kafka topic, and the
    Redis replay cache, on the machine's Redis under a prefix of the test's own."""
    prefix = new_prefix()
    cache = {"cache": "redis", "redis_url": REDIS_URL, "redis_key_prefix": prefix}
    if request.param == "redis":
        yield {**request.getfixturevalue("redis_bus_settings"), **cache}
    else:
        broker: Broker = request.getfixturevalue("tansu_broker")
        topic = new_topic_name()
        trio.run(create_topic, broker.bootstrap, topic, 3)
        yield {"bus": "kafka", "kafka_bootstrap": broker.bootstrap, "kafka_topic": topic, **cache}
    delete_prefix(REDIS_URL, prefix)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_router_stopped_mid_stream_hands_its_clients_to_another(
    shared_settings: dict[str, Any], stop: signal.Signals
) -> None:
    """Tabs spread over two instances; one is stopped while events flow, its tabs resume on the
    other with their cursors; it is restarted in place and takes tabs again."""
    run = Run(f"router {stop.name} ({shared_settings['bus']})", seed=1410 + stop)
    with router_processes() as routers:
        first, second = RouterProcess(shared_settings), RouterProcess(shared_settings)
        routers += [first, second]
        await first.start()
        await second.start()
        frontend = Frontend(run.rng, first.url, second.url)
        run.publish_through(lambda: second.url)
        run.make_tabs(lambda spec: Behaviour(away_seconds=0.1))
        async with trio.open_nursery() as nursery:
            run.start(nursery, frontend)
            await run.all_connected()
            await run.publisher.publish(150, batch=5, pause=0.01)
            frontend.urls.remove(first.url)
            publishing = trio.Event()

            async def publish_meanwhile() -> None:
                await run.publisher.publish(150, batch=5, pause=0.01)
                publishing.set()

            nursery.start_soon(publish_meanwhile)
            await trio.sleep(0.2)  # a moment into the stream, so the stop lands mid-flow
            first.signal(stop)
            code = await first.wait()
            assert code in (0, -signal.SIGKILL), f"exit {code}: {first.log_tail()}"
            await first.start()  # restarted in place, on the same port
            frontend.urls.append(first.url)
            with trio.fail_after(30):  # waiting for: the publishing during the stop to finish
                await publishing.wait()
            await run.publisher.publish(60, batch=5, pause=0.01)
            await run.settle()
            nursery.cancel_scope.cancel()
        assert not second.crashed(), second.log_tail()
    run.report()


async def test_a_reconnect_storm_after_a_kill_loses_nothing(
    redis_bus_settings: dict[str, Any],
) -> None:
    """Every tab on one instance; it is killed and every tab comes back at once, on the other,
    while events keep flowing."""
    prefix = new_prefix()
    settings = {**redis_bus_settings, "cache": "redis", "redis_key_prefix": prefix}
    run = Run("reconnect storm (redis)", seed=1420)
    for _ in range(30):
        run.population.add_tab("storm")
    try:
        with router_processes() as routers:
            victim, survivor = RouterProcess(settings), RouterProcess(settings)
            routers += [victim, survivor]
            await victim.start()
            await survivor.start()
            frontend = Frontend(run.rng, victim.url)
            run.publish_through(lambda: survivor.url)
            run.make_tabs(lambda spec: Behaviour(away_seconds=0.0))
            async with trio.open_nursery() as nursery:
                run.start(nursery, frontend)
                await run.all_connected()
                done = trio.Event()

                async def publish_throughout() -> None:
                    await run.publisher.publish(400, batch=8, pause=0.01)
                    done.set()

                nursery.start_soon(publish_throughout)
                await trio.sleep(0.3)  # a moment into the publishing, so the kill lands mid-flow
                frontend.urls[:] = [survivor.url]
                victim.signal(signal.SIGKILL)
                with trio.fail_after(30):  # waiting for: the publishing through the storm to end
                    await done.wait()
                await run.settle()
                nursery.cancel_scope.cancel()
            assert not survivor.crashed(), survivor.log_tail()
    finally:
        delete_prefix(settings["redis_url"], prefix)
    run.report()
