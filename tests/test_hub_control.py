"""Controls in the actors: applied in bus order by the adapter, through Hub.apply, and held by the
hub for exactly as long as the tokens they concern can live (a mock clock for trio, a settable one
for the wall); and the Redis store that keeps them beyond a process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import redis
import trio
import trio_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.hub import Hub
from actors.session import CloseReason, Delivery, Offer, Session
from router.bus.base import Record
from router.bus.memory import MemoryBus
from router.cache.memory import MemoryReplayCache
from router.cache.redis_controls import RedisControls
from router.core.control import Control, parse_control
from router.core.cursor import EventIdentity
from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix
from tests.test_hub import attach, client, content, running_hub, settle

ISSUED = time.time() - 60
"""When the test's tokens were issued: before every control here."""


def revoke(novel: str = "n1", at: float | None = None) -> Control:
    moment = time.gmtime(time.time() - 30 if at is None else at)
    return parse_control(
        {
            "control": "revoke",
            "user_id": "u1",
            "novel_id": novel,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", moment),
        }
    )


async def test_a_control_in_a_batch_stops_only_what_follows_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_hub() as (hub, nursery):
        both = client("u1", novels=["n1", "n2"])
        watching, reader = await attach(hub, nursery, both)
        watching.issued_at = ISSUED
        only_n2, n2_reader = await attach(hub, nursery, client("u1", ["n1", "n2"], None, ["n2"]))
        only_n2.issued_at = ISSUED
        placed = revoke().placements()
        # One partition, one publish: the adapter reads all of it in one step.
        await hub.publish(
            [content("n1", 1), placed[1], content("n1", 2), placed[0], content("n2", 3)]
        )
        await hub.adapter.wait_consumed(5)
        await settle()
        assert watching.close_reason is CloseReason.ACCESS_CHANGED
        assert only_n2.close_reason is None
        only_n2.stop(CloseReason.CLIENT)
        await reader.closed.wait()
        await n2_reader.closed.wait()
    # v1 came before the revocation: offered, though the stream may end before writing it
    # (its client resumes from its cursor, without n1); v2 came after it: never offered.
    said = [d.get("content_version", d.get("code")) for d in reader.data()]
    assert said in ([1, "access-changed"], ["access-changed"])
    assert hub.adapter.stats.offers[Offer.QUEUED] == 2  # v1 to the first, v3 to the second
    assert [d["content_version"] for d in n2_reader.data()] == [3]


def _say_narrowed(control: Control) -> bytes:
    return f": narrowed {control.novel_id}\n\n".encode()


async def test_a_revocation_narrows_a_session_that_can_say_so_in_place_and_ends_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A session whose transport has a word for it (a WebSocket) is narrowed where it stands, in
    the adapter's step: nothing of the novel after the revocation, the rest with no gap; an
    event stream of the same user ends (access-changed); a disconnect ends both."""
    async with running_hub() as (hub, nursery):
        narrowing, narrowed_reader = await attach(hub, nursery, client("u1", ["n1", "n2"]))
        narrowing.narrow_notice = _say_narrowed
        ending, ending_reader = await attach(hub, nursery, client("u1", ["n1", "n2"], "s1"))
        for session in (narrowing, ending):
            session.issued_at = ISSUED
        placed = revoke().placements()
        await hub.publish(
            [content("n1", 1), placed[1], content("n1", 2), placed[0], content("n2", 3)]
        )
        await hub.adapter.wait_consumed(5)
        await settle()
        assert narrowing.close_reason is None
        assert narrowing.principal.novels == frozenset({"n2"})
        assert narrowing not in hub.registry.candidates(Scope(novel_id="n1"))
        assert ending.close_reason is CloseReason.ACCESS_CHANGED
        await hub.publish([content("n1", 4), content("n2", 5)])
        await hub.adapter.wait_consumed(7)
        await settle()
        hub.apply(
            parse_control(
                {"control": "disconnect", "user_id": "u1", "issued_at": "2099-01-01T00:00:00Z"}
            )
        )
        await settle()
        assert narrowing.close_reason is CloseReason.DISCONNECTED
        await narrowed_reader.closed.wait()
        await ending_reader.closed.wait()
    raw = narrowed_reader.raw
    said = [d.get("content_version", d.get("code")) for d in narrowed_reader.data()]
    # n1/1 came before the revocation, in the same step of the adapter: still queued when the
    # session narrowed, so checked against its new scope and never written.
    assert said == [3, 5, "disconnected"]
    assert raw.index(b": narrowed n1") < raw.index(b'"content_version":3')
    assert raw.count(b": narrowed") == 1


async def test_a_session_opened_after_a_control_is_narrowed_or_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Between the front door and the hub a control may be applied: the hub narrows in the same
    step as it registers, so it passes no event it forbids."""
    async with running_hub() as (hub, _):
        hub.apply(revoke())
        asked = client("u1", novels=["n1", "n2"])
        opened = await hub.open(
            asked.principal, asked.stream_filter, expires_at=time.time() + 60, issued_at=ISSUED
        )
        assert opened.session.principal.novels == {"n2"}
        opened.session.stop(CloseReason.CLIENT)
        hub.apply(
            parse_control(
                {"control": "disconnect", "user_id": "u1", "issued_at": revoke().issued_at}
            )
        )
        refused = await hub.open(
            asked.principal, asked.stream_filter, expires_at=time.time() + 60, issued_at=ISSUED
        )
        assert refused.session.close_reason is CloseReason.DISCONNECTED
        assert refused.output is not None
        said = b""
        async for chunk in refused.output:
            said += chunk
        assert b"disconnected" in said
        assert b"content" not in said


async def test_the_hub_forgets_a_control_once_every_token_it_concerns_has_expired(
    autojump_clock: trio.abc.Clock,
) -> None:
    now = [time.time()]
    async with running_hub() as (hub, _):
        hub.wall_clock = lambda: now[0]
        hold = hub.access.hold_seconds
        control = revoke(at=now[0])
        hub.apply(control)
        principal = Principal("u1", frozenset({"n1"}))
        assert hub.access.narrow(principal, now[0] - 1, now[0]).novels == frozenset()
        now[0] += hold - 1
        assert hub.access.held(now[0]) == 1
        now[0] += 1
        assert hub.access.held(now[0]) == 0
        assert hub.access.narrow(principal, now[0] - hold - 1, now[0]) is principal
        hub.apply(control)  # read again (a replayed bus): past its time, it changes nothing
        assert hub.access.held(now[0]) == 0


async def test_redis_keeps_controls_until_their_time_and_not_after() -> None:
    prefix = new_prefix()
    async with trio_asyncio.open_loop():
        store = RedisControls(REDIS_URL, key_prefix=prefix)
        try:
            now = time.time()
            first, second = revoke("n1"), revoke("n2")
            await store.keep([(first, now + 10), (second, now + 20)], now)
            assert set(await store.in_force(now)) == {first, second}
            assert await store.in_force(now + 15) == [second]
            client = redis.Redis.from_url(REDIS_URL)
            assert client.zcard(store.key) == 1  # what ran out is gone from Redis too
            assert 0 < client.ttl(store.key) <= 21  # and the key itself goes with the last
            await store.keep([(second, now + 20)], now + 30)
            assert client.zcard(store.key) == 0
            assert await store.in_force(now + 30) == []
            client.close()
            assert store.errors == 0
        finally:
            await store.aclose()
            delete_prefix(REDIS_URL, prefix)


async def test_an_unreachable_store_is_counted_and_raises_nothing() -> None:
    async with trio_asyncio.open_loop():
        store = RedisControls("redis://127.0.0.1:1/0", key_prefix="x", timeout_seconds=0.2)
        try:
            await store.keep([(revoke(), time.time() + 10)], time.time())
            assert await store.in_force(time.time()) == []
            assert store.errors == 2
        finally:
            await store.aclose()


KINDS = st.sampled_from(["n1", "n2", "u1-n1", "revoke"])


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(st.tuples(st.sampled_from(["0", "1"]), KINDS), max_size=30),
    cuts=st.sets(st.integers(0, 30)),
)
def test_no_event_after_a_revocation_in_its_partition_is_offered_to_an_old_token(
    records: list[tuple[str, str]], cuts: set[int]
) -> None:
    """Over any interleaving of two partitions, cut into any steps: an event of n1 (named alone,
    or with u1) is offered to u1's old stream only if no copy of the revocation came before it
    in its partition; n2 is offered until the stream ends."""
    offered, identities = trio.run(route_records, records, cuts)
    revoked_at: dict[str, int] = {}
    for partition, offset, kind in identities:
        if kind == "revoke":
            revoked_at.setdefault(partition, offset)
    for partition, offset, kind in offered:
        if kind != "n2":
            assert offset < revoked_at.get(partition, offset + 1), (partition, offset, kind)
    if not revoked_at:
        assert [o[2] for o in offered] == [i[2] for i in identities]  # nothing stopped, all came


async def route_records(
    records: list[tuple[str, str]], cuts: set[int]
) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    hub = Hub(MemoryBus(), MemoryReplayCache(max_events=100, source="memory", epoch="e1"))
    watching = Session(
        Principal("u1", frozenset({"n1", "n2"})), StreamFilter(), time.time() + 60, issued_at=ISSUED
    )
    hub.registry.add(watching)
    offered: list[tuple[str, int, str]] = []
    kinds: dict[tuple[str, int], str] = {}
    real_offer = watching.offer

    def offer(deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> bool:
        if watching.close_reason is None:
            offered.extend(
                (
                    d.identity.partition,
                    d.identity.offset[0],
                    kinds[d.identity.partition, d.identity.offset[0]],
                )
                for d in deliveries
            )
        return real_offer(deliveries, outcomes)

    watching.offer = offer  # type: ignore[method-assign]
    revocation = revoke().to_bytes()
    read: list[Record] = []
    identities: list[tuple[str, int, str]] = []
    next_offset = {"0": 0, "1": 0}
    for partition, kind in records:
        offset = next_offset[partition]
        next_offset[partition] += 1
        kinds[partition, offset] = kind
        identities.append((partition, offset, kind))
        if kind == "revoke":
            raw = revocation
        else:
            novel = kind.removeprefix("u1-")
            scope = {"user_id": "u1"} if kind.startswith("u1-") else {}
            raw = content(novel, offset, **scope).to_bytes()
        read.append(Record(EventIdentity("memory", partition, (offset,), "e1"), raw))
    start = 0
    for cut in [*sorted(c for c in cuts if c < len(read)), len(read)]:
        if cut > start:
            await hub.adapter.process(read[start:cut])
            start = cut
    return offered, identities
