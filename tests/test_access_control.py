"""Live access control end to end: revoke and disconnect, on every bus, across instances."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from router.core.cursor import EventIdentity, parse_identity
from router.core.scope import Scope
from tests.conftest import RouterFactory
from tests.e2e_helpers import (
    RouterUnderTest,
    auth,
    content,
    running_router,
    signed_token,
)
from tests.outbox_helpers import (
    postgres_business_transaction,
    postgres_outbox,
    sqlite_business_transaction,
    sqlite_outbox,
)
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

CONTROLLER = auth("backend", roles=["controller"])
ROOMY = {"connects_per_minute": 10_000, "max_streams_per_user": 100}
"""Every stream of these tests comes from one address: the rate limits are not under test."""


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def issued(seconds_ago: float, sub: str = "u1", **claims: Any) -> dict[str, str]:
    """A token of ``sub`` issued ``seconds_ago``."""
    return auth(sub, now=time.time() - seconds_ago, **claims)


async def send_control(router: RouterUnderTest, *bodies: dict[str, Any]) -> list[EventIdentity]:
    """POST the control envelopes; where each copy landed on the bus."""
    body: Any = list(bodies) if len(bodies) != 1 else bodies[0]
    controller = auth("backend", roles=["controller"], ttl_seconds=600)
    answer = await router.client.post("/api/v1/control", json=body, headers=controller)
    assert answer.status_code == 202, answer.text
    return [parse_identity(text) for text in answer.json()["positions"]]


def errors(stream: Any) -> list[dict[str, Any]]:
    return [d for d in stream.data() if "code" in d]


def versions(data: list[dict[str, Any]], novel: str) -> list[int]:
    return [d["content_version"] for d in data if d.get("novel_id") == novel]


def revocation(novel_id: str, user_id: str = "u1") -> dict[str, Any]:
    """A control revoking ``user_id``'s grant of ``novel_id``, for tokens issued before now."""
    return {
        "control": "revoke",
        "user_id": user_id,
        "novel_id": novel_id,
        "issued_at": rfc3339(time.time() - 30),
    }


class Publishing:
    """Publishes ``n1/k`` and ``n2/k`` through a router, for k = 0, 1, ..., until :meth:`stop`."""

    def __init__(self, router: RouterUnderTest) -> None:
        self.router = router
        self.published = 0
        """How many pairs went out."""
        self._stop, self._stopped = trio.Event(), trio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.router.publish(content("n1", self.published), content("n2", self.published))
            self.published += 1
            await trio.sleep(0.005)
        self._stopped.set()

    async def stop(self, *routers: RouterUnderTest) -> None:
        """Stop, and wait until each of ``routers`` has routed every pair and both copies of
        one control."""
        self._stop.set()
        await self._stopped.wait()
        for router in routers:
            await router.running.hub.adapter.wait_consumed(2 * self.published + 2)


def assert_nothing_of_n1_after(seen_n1: list[dict[str, Any]], revoked: EventIdentity) -> None:
    """``seen_n1`` (the data of n1's events a client got) holds some, all before ``revoked``
    (where the revocation landed in n1's partition)."""
    assert seen_n1  # the revocation came mid-stream
    for data in seen_n1:
        where = parse_identity(data["event_id"])
        assert where.partition == revoked.partition
        assert where.offset < revoked.offset, "an event of n1 after the revocation reached u1"


Scenario = Callable[[RouterUnderTest, RouterUnderTest], Awaitable[None]]
"""Controls sent through the first router, their effect watched on the second."""


async def on_one_instance(scenario: Scenario) -> None:
    """``scenario`` on one router of the memory bus (three partitions), as both."""
    async with running_router(memory_partitions=3, **ROOMY) as router:
        await scenario(router, router)


async def across_instances(shared_bus: RouterFactory, scenario: Scenario) -> None:
    """``scenario`` from one instance to another on a shared bus."""
    async with shared_bus(**ROOMY) as a, shared_bus(**ROOMY) as b:
        await scenario(a, b)


async def revoke_while_publishing(a: RouterUnderTest, b: RouterUnderTest) -> None:
    """u1 follows n1 and n2 on ``b`` while a publisher writes both through ``a``; n1 is revoked
    through ``a`` mid-stream. Not one event of n1 after the revocation's place in n1's partition
    reaches u1, live, replayed or after a reconnect with the old token; n2 flows with no gap."""
    old = issued(60, novels=["n1", "n2"])
    publishing = Publishing(a)
    async with (
        b.stream(old) as watching,
        a.stream(old, params={"novel_id": "n2"}) as only_n2,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(publishing.run)
        await watching.read_until(lambda s: len(s.data()) >= 10)
        *_, on_n1 = await send_control(a, revocation("n1"))
        await watching.to_the_end()  # the stream ends, saying why
        resume = {**old, "Last-Event-ID": watching.last_event_id}
        async with b.stream(resume) as resumed:
            await resumed.read_until(lambda s: len(s.data()) >= 10)
            await publishing.stop(a, b)  # every event and both copies of the control routed
            await b.flush(resumed)
            await a.flush(only_n2)
            assert not only_n2.ended

    published = publishing.published
    assert errors(watching)[-1] == {
        "code": "access-changed",
        "message": errors(watching)[-1]["message"],
        "retryable": True,
    }
    assert errors(resumed) == []
    seen_n1 = [d for d in watching.data() + resumed.data() if d.get("novel_id") == "n1"]
    assert_nothing_of_n1_after(seen_n1, on_n1)
    assert versions(resumed.data(), "n1") == []
    assert sorted(versions(watching.data(), "n2") + versions(resumed.data(), "n2")) == list(
        range(published)
    )
    assert versions(only_n2.data(), "n2") == list(range(published))  # never cut
    # The old token may no longer ask for n1, on either instance; a new one may.
    for router in (a, b):
        async with router.stream(old, params={"novel_id": "n1"}) as refused:
            assert refused.response is not None
            assert refused.response.status_code == 403
    async with a.stream(auth("u1", novels=["n1"]), params={"novel_id": "n1"}) as fresh:
        await a.publish(content("n1", 10_000))
        await fresh.events_count(1)
    assert versions(fresh.data(), "n1") == [10_000]


async def test_a_revocation_stops_a_novel_mid_stream_on_the_memory_bus() -> None:
    await on_one_instance(revoke_while_publishing)


async def test_a_revocation_through_one_instance_stops_a_novel_on_another(
    shared_bus: RouterFactory,
) -> None:
    await across_instances(shared_bus, revoke_while_publishing)


async def disconnect_and_come_back(a: RouterUnderTest, b: RouterUnderTest) -> None:
    s1, s2 = issued(60, novels=["n1"], sid="s1"), issued(60, novels=["n1"], sid="s2")
    async with (
        a.stream(s1) as s1_on_a,
        b.stream(s1) as s1_on_b,
        b.stream(s2) as s2_on_b,
    ):
        await send_control(
            a, {"control": "disconnect", "session_id": "s1", "issued_at": rfc3339(time.time() - 30)}
        )
        await s1_on_a.to_the_end()
        await s1_on_b.to_the_end()
        await b.flush(s2_on_b)  # the other session of the same user flows on
        assert not s2_on_b.ended
        second = await send_control(
            b, {"control": "disconnect", "user_id": "u1", "issued_at": rfc3339(time.time() - 30)}
        )
        await s2_on_b.to_the_end()
        # Sent through b, the bus brings it to a in its own time: a has applied it once it has
        # routed past every copy of it.
        on_a = a.running.hub.adapter
        with trio.fail_after(20):
            while not all(on_a.cursor.covers(copy) for copy in second):
                await on_a.wait_consumed(on_a.stats.consumed + 1)
    for ended in (s1_on_a, s1_on_b, s2_on_b):
        (goodbye,) = errors(ended)
        assert (goodbye["code"], goodbye["retryable"]) == ("disconnected", False)
    for router in (a, b):  # the old tokens are refused from then on, everywhere
        for old in (s1, s2):
            async with router.stream(old) as refused:
                assert refused.response is not None
                assert refused.response.status_code == 401
                body = await refused.response.json()
                assert body["error"]["code"] == "revoked"
        async with router.stream(auth("u1", novels=["n1"], sid="s1")) as new:
            assert new.response is not None
            assert new.response.status_code == 200


async def test_disconnect_by_session_then_by_user_on_the_memory_bus() -> None:
    await on_one_instance(disconnect_and_come_back)


async def test_disconnect_by_session_then_by_user_across_instances(
    shared_bus: RouterFactory,
) -> None:
    await across_instances(shared_bus, disconnect_and_come_back)


async def test_controls_survive_a_restart_on_redis_and_reach_a_new_instance(
    shared_bus: RouterFactory,
) -> None:
    """Kept beside the replay cache, the controls are known to an instance that starts after
    they were published, whether it reads on from the cache's resume point or from the end."""
    prefix = new_prefix()
    shared = {"cache": "redis", "redis_url": REDIS_URL, "redis_key_prefix": prefix, **ROOMY}
    old = issued(60, novels=["n1", "n2"], sid="s1")
    try:
        async with shared_bus(**shared) as first:
            await send_control(
                first,
                {"control": "revoke", "user_id": "u1", "novel_id": "n1"},
                {"control": "disconnect", "session_id": "s9"},
            )
        async with shared_bus(**shared) as second:
            assert second.running.hub.access.held(time.time()) == 2
            async with second.stream(old) as narrowed:
                await second.publish(content("n1", 1), content("n2", 2))
                await second.flush(narrowed)
            assert [d["novel_id"] for d in narrowed.data()] == ["n2"]
            async with second.stream(issued(60, novels=["n1"], sid="s9")) as refused:
                assert refused.response is not None
                assert refused.response.status_code == 401
    finally:
        delete_prefix(REDIS_URL, prefix)


async def test_a_control_is_forgotten_after_max_token_age_here_and_in_redis() -> None:
    """The router's wall clock moved past the hold (a token issued before the control, if any
    were still valid, would have lived longer than --max-token-age): the grant is back."""
    prefix = new_prefix()
    settings = {"cache": "redis", "redis_url": REDIS_URL, "redis_key_prefix": prefix}
    old = issued(60, novels=["n1", "n2"], ttl_seconds=600)
    try:
        async with running_router(max_token_age=600, **settings, **ROOMY) as router:
            hub = router.running.hub
            await send_control(router, {"control": "revoke", "user_id": "u1", "novel_id": "n1"})
            async with router.stream(old, params={"novel_id": "n1"}) as refused:
                assert refused.response is not None
                assert refused.response.status_code == 403
            kept = redis.Redis.from_url(REDIS_URL)
            ((_, until),) = kept.zrange(f"{prefix}:controls", 0, -1, withscores=True)
            assert time.time() + 590 < until <= time.time() + 600  # issued now, held 600 s
            later = time.time() + 601
            hub.wall_clock = lambda: later
            assert hub.access.held(later) == 0
            async with router.stream(old, params={"novel_id": "n1"}) as admitted:
                assert admitted.response is not None
                assert admitted.response.status_code == 200
            assert until <= later  # Redis forgets it by then: its score, and the key's expiry
            assert kept.expiretime(f"{prefix}:controls") <= later + 1
            kept.close()
    finally:
        delete_prefix(REDIS_URL, prefix)


async def test_tokens_longer_lived_than_max_token_age_or_without_iat_are_refused() -> None:
    async with running_router(max_token_age=600, **ROOMY) as router:
        assert router.running.hub.access.hold_seconds == 600  # held exactly that long
        for headers in (
            auth("u1", ttl_seconds=3600),
            {"Authorization": "Bearer " + signed_token('{"sub":"u1","exp":9999999999}')},
        ):
            async with router.stream(headers) as refused:
                assert refused.response is not None
                assert refused.response.status_code == 401
                assert (await refused.response.json())["error"]["code"] == "bad-claims"
        async with router.stream(auth("u1", ttl_seconds=600)) as accepted:
            assert accepted.response is not None
            assert accepted.response.status_code == 200


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_control_envelopes_from_the_outbox_are_applied(database: str, tmp_path: Path) -> None:
    """A back end takes n1 away in the transaction that changed the rights, and writes on: what
    follows the revocation in n1's partition never reaches u1 (a PostgreSQL outbox of one part
    relays its rows in id order: see docs/access-control.md for several)."""
    with ExitStack() as stack:
        if database == "sqlite":
            dsn = stack.enter_context(sqlite_outbox(tmp_path))
            settings: dict[str, Any] = {}
            write = partial(sqlite_business_transaction, dsn)
        else:
            dsn, table = stack.enter_context(postgres_outbox())
            settings = {"outbox_table": table, "outbox_parts": 1}
            write = partial(postgres_business_transaction, dsn, table)
        async with running_router(
            outbox_dsn=dsn, outbox_poll_seconds=0.05, memory_partitions=3, **settings, **ROOMY
        ) as router:
            old = issued(60, novels=["n1", "n2"])
            async with router.stream(old) as watching:
                rows = [
                    content("n1", 1),
                    revocation("n1"),
                    content("n1", 2),
                    content("n2", 3),
                ]
                await trio.to_thread.run_sync(write, rows)
                await watching.to_the_end()
            await router.running.hub.adapter.wait_consumed(5)  # 3 events, 2 copies
            async with router.stream(old) as after:
                await router.flush(after)
        assert errors(watching)[-1]["code"] == "access-changed"
        assert 2 not in versions(watching.data(), "n1")
        assert after.data() == []  # n1's later event is for no stream of u1's old token


async def test_the_control_api_wants_its_own_role_and_well_formed_controls() -> None:
    async with running_router(**ROOMY) as router:
        revoke = {"control": "revoke", "user_id": "u1", "novel_id": "n1"}
        publisher = auth("backend", roles=["publisher"])
        answer = await router.client.post("/api/v1/control", json=revoke, headers=publisher)
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "forbidden")
        answer = await router.client.post("/api/v1/control", json=revoke)
        assert answer.status_code == 401
        for bad, code in [
            ({"control": "grant", "user_id": "u1", "novel_id": "n1"}, "bad-field"),
            ({"control": "revoke", "user_id": "u1"}, "missing-field"),
            ([revoke, {"control": "revoke", "novels": ["n1"]}], "bad-field"),
            ({"event_type": "Content.Updated"}, "bad-field"),
            ({**revoke, "issued_at": "2099-01-01T00:00:00Z"}, "bad-field"),  # held too long
        ]:
            answer = await router.client.post("/api/v1/control", json=bad, headers=CONTROLLER)
            assert (answer.status_code, answer.json()["error"]["code"]) == (400, code), answer.text
        assert router.running.hub.access.held(time.time()) == 0  # nothing of a refused batch
        answer = await router.client.post("/api/v1/events", json=revoke, headers=publisher)
        assert answer.status_code == 400  # a control is not an event


async def test_the_control_api_refuses_a_bad_body_as_publishing_does() -> None:
    """Both read a batch body the one way (router/http/json_batch.py): the same status and code."""
    revoke = {"control": "revoke", "user_id": "u1", "novel_id": "n1"}
    as_text = {**CONTROLLER, "Content-Type": "text/plain"}
    as_json = {**CONTROLLER, "Content-Type": "application/json"}
    async with running_router(publish_max_batch=2, **ROOMY) as router:
        for body, headers, status, code in [
            (b"{}", as_text, 415, "unsupported-media-type"),
            (b"{nope", as_json, 400, "bad-json"),
            (b"[]", as_json, 400, "empty-batch"),
            (json.dumps([revoke] * 3).encode(), as_json, 413, "batch-too-large"),
        ]:
            answer = await router.client.post("/api/v1/control", content=body, headers=headers)
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
        assert router.running.hub.access.held(time.time()) == 0


async def test_the_connections_listing_shows_streams_never_tokens() -> None:
    async with running_router(**ROOMY) as router:
        token = auth("u1", novels=["n1"], sid="s1")
        async with (
            router.stream(token, params={"novel_id": "n1"}),
            router.stream(auth("u2", novels=["n2"])),
        ):
            answer = await router.client.get(
                "/api/v1/connections", params={"user_id": "u1"}, headers=CONTROLLER
            )
            assert answer.status_code == 200
            (listed,) = answer.json()["connections"]
            assert listed["user_id"] == "u1"
            assert listed["session_id"] == "s1"
            assert listed["filter"] == {"novel_ids": ["n1"], "session_id": None, "event_types": []}
            assert listed["transport"] == "sse"
            assert listed["events_sent"] == 0
            assert listed["opened_at"].endswith("Z")
            assert len(listed["connection_id"]) == 16
            assert token["Authorization"].split()[1] not in answer.text
            everyone = await router.client.get("/api/v1/connections", headers=CONTROLLER)
            assert len(everyone.json()["connections"]) == 2
            denied = await router.client.get(
                "/api/v1/connections", headers=auth("u1", roles=["publisher"])
            )
            assert denied.status_code == 403


async def test_metrics_count_controls_and_what_they_ended() -> None:
    async with running_router(**ROOMY) as router:
        async with router.stream(issued(60, novels=["n1"])) as watching:
            await send_control(router, revocation("n1"))
            await watching.to_the_end()
        await router.running.hub.adapter.wait_consumed(2)
        exposition = (await router.client.get("/metrics")).text
    assert 'sse_controls_applied_total{action="revoke"} 2.0' in exposition  # two copies
    assert 'sse_control_streams_ended_total{action="revoke"} 1.0' in exposition
    assert "sse_controls_held 1.0" in exposition
    closed = 'sse_connection_duration_seconds_count{reason="access-changed",transport="sse"} 1.0'
    assert closed in exposition


@pytest.mark.parametrize("raw", [b'{"control": "revoke", "user_id": "u1"}', b'{"control": 1}'])
async def test_a_malformed_control_on_the_bus_is_skipped_and_counted(raw: bytes) -> None:
    async with running_router(**ROOMY) as router:
        hub = router.running.hub

        class Carried:
            """What a producer writing to the bus itself might write."""

            scope = Scope(user_id="u1")

            def to_bytes(self) -> bytes:
                return raw

        async with router.stream(issued(60, novels=["n1"])) as watching:
            await hub.bus.publish([Carried()])
            await hub.adapter.wait_consumed(1)
            await router.publish(content("n1", 1))
            await watching.events_count(1)
        exposition = (await router.client.get("/metrics")).text
    assert "sse_controls_rejected_total 1.0" in exposition
    assert versions(watching.data(), "n1") == [1]
