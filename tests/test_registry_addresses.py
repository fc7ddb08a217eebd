"""The registry counts open streams by client address, as the front door's caps count them,
and counts a stream the hub is still opening."""

from __future__ import annotations

import time
from collections.abc import Sequence

import trio
import trio.testing

from actors.registry import SessionRegistry
from actors.session import Session
from router.bus.memory import MemoryBus
from router.core.admission import OpenStreams
from router.core.permissions import Principal, StreamFilter
from tests.test_hub import content, running_hub


def session(user: str, address: str) -> Session:
    return Session(
        Principal(user, frozenset({"n1"})), StreamFilter(), expires_at=1e12, address=address
    )


def test_streams_are_counted_per_address_group_and_freed_once_each() -> None:
    registry = SessionRegistry()
    office = [session("u1", "192.0.2.1"), session("u2", "192.0.2.1")]
    hopping = [session("u3", "2001:db8:1:2::1"), session("u3", "2001:db8:1:2::ffff")]
    for each in (*office, *hopping):
        registry.add(each)
    assert registry.open_streams("u1", "192.0.2.1") == OpenStreams(4, 2, 1)
    assert registry.open_streams("u3", "2001:db8:1:2::9") == OpenStreams(4, 2, 2)
    registry.remove(office[0])
    registry.remove(office[0])  # a session removed twice (it failed, then ended) counts once
    assert registry.count_from_address("192.0.2.1") == 1
    for each in (office[1], *hopping):
        registry.remove(each)
    assert registry.open_streams("u1", "192.0.2.1") == OpenStreams(0, 0, 0)


def test_a_stream_being_opened_counts_as_open_until_it_is_registered_or_given_up() -> None:
    registry = SessionRegistry()
    with registry.opening("u1", "2001:db8:1:2::1"):
        assert registry.open_streams("u1", "2001:db8:1:2::2") == OpenStreams(1, 1, 1)
        assert registry.open_streams("u2", "192.0.2.1") == OpenStreams(1, 0, 0)
    assert registry.open_streams("u1", "2001:db8:1:2::1") == OpenStreams(0, 0, 0)
    assert len(registry) == 0


class GatedBus(MemoryBus):
    """The embedded bus, whose partitions wait for a gate once it is armed: a networked bus
    answering slowly while a resume's cursor is vouched for."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.gate = trio.Event()

    async def partitions(self) -> Sequence[str]:
        if self.armed:
            await self.gate.wait()
        return await super().partitions()


async def test_a_resume_waiting_on_the_bus_counts_against_the_caps_meanwhile() -> None:
    bus = GatedBus()
    async with running_hub(bus=bus) as (hub, nursery):
        await hub.publish([content("n1", 1)])
        await hub.adapter.wait_consumed(1)
        cursor = hub.progress()
        assert cursor is not None
        bus.armed = True
        opened: list[object] = []

        async def resume() -> None:
            opened.append(
                await hub.open(
                    Principal("u1", frozenset({"n1"})),
                    StreamFilter(),
                    expires_at=time.time() + 3600,
                    resume_from=cursor,
                    address="192.0.2.1",
                )
            )

        nursery.start_soon(resume)
        await trio.testing.wait_all_tasks_blocked()
        assert not opened  # still vouching for its cursor, and counted all the same
        assert hub.registry.open_streams("u1", "192.0.2.1") == OpenStreams(1, 1, 1)
        bus.gate.set()
        with trio.fail_after(10):
            while not opened:
                await trio.sleep(0)
        assert hub.registry.open_streams("u1", "192.0.2.1") == OpenStreams(1, 1, 1)  # not twice
