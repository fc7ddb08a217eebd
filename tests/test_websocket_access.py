"""Who may hold a WebSocket, end to end: the ``Origin`` of the handshake (cross-site WebSocket
hijacking), revocations that narrow the open socket in place, sign-outs, blocked addresses and
an overloaded instance. trio-websocket is the client (see tests/test_websocket.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import trio

from router.core.overload import Level
from tests.conftest import RouterFactory
from tests.e2e_helpers import (
    HANG_GUARD_SECONDS,
    RouterUnderTest,
    auth,
    running_router,
    token,
)
from tests.test_access_control import (
    ROOMY,
    Publishing,
    across_instances,
    assert_nothing_of_n1_after,
    issued,
    revocation,
    rfc3339,
    send_control,
)
from tests.test_websocket import Client, connect, flush, hello

ALLOWED = "https://app.example"
OWN = "http://127.0.0.1"
"""The router's own origin as these tests' client reaches it (its ``Host`` is the address)."""


def scraped(exposition: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def metric(router: RouterUnderTest, name: str) -> float:
    return scraped((await router.client.get("/metrics")).text, name)


# -- the Origin ----------------------------------------------------------------------------------


async def test_a_page_of_another_origin_cannot_open_a_socket_with_the_visitor_s_cookie() -> None:
    cookie = {"Cookie": f"access_token={token(novels=['n1'])}"}
    async with running_router(cors_origins=(ALLOWED,)) as router:
        for foreign in ("https://evil.example", "null", "https://app.example.evil"):
            async with connect(router, {**cookie, "Origin": foreign}) as hijacker:
                assert await hijacker.closed() == (4003, "origin-not-allowed")
            (error,) = hijacker.frames  # no hello, no event: the refusal, then the close
            assert error["type"] == "error"
            assert error["code"] == "origin-not-allowed"
            assert error["message"]
            assert "retry_ms" not in error
        assert await metric(router, "sse_ws_origins_refused_total") == 3
        # A configured origin and the router's own page are let in; so is a client that is not
        # a browser (it sends no Origin, and holds no visitor's cookie).
        for origin in (ALLOWED, OWN, None):
            headers = cookie if origin is None else {**cookie, "Origin": origin}
            async with connect(router, headers) as page:
                await hello(page)
        assert await metric(router, "sse_ws_origins_refused_total") == 3


async def test_another_origin_is_refused_whatever_the_credentials() -> None:
    """The rule is decided before any credential is read: a token in the header, the query or
    an ``auth`` message from a foreign page is refused too (as the event stream gives such a
    page no CORS header), and no ``auth`` message is waited for."""
    foreign = {"Origin": "https://evil.example"}
    async with running_router(ws_auth_timeout_seconds=30) as router:
        async with connect(router, {**auth(novels=["n1"]), **foreign}) as by_header:
            assert await by_header.closed() == (4003, "origin-not-allowed")
        async with connect(router, foreign, {"token": token(novels=["n1"])}) as by_query:
            assert await by_query.closed() == (4003, "origin-not-allowed")
        with trio.fail_after(HANG_GUARD_SECONDS / 2):  # far less than the auth timeout
            async with connect(router, foreign) as by_message:
                assert await by_message.closed() == (4003, "origin-not-allowed")


# -- the front door's other screens ---------------------------------------------------------------


async def test_a_blocked_address_closes_4003_before_its_token_is_looked_at(tmp_path: Path) -> None:
    rules = tmp_path / "addresses"
    rules.write_text("block 203.0.113.0/24\n")
    async with running_router(address_rules=rules, trusted_proxies=("127.0.0.1",)) as router:
        bad_token = {"Authorization": "Bearer not-a-token", "X-Forwarded-For": "203.0.113.7"}
        async with connect(router, bad_token) as blocked:
            assert await blocked.closed() == (4003, "address-blocked")
        async with connect(
            router, {**auth(novels=["n1"]), "X-Forwarded-For": "198.51.100.1"}
        ) as ok:
            await hello(ok)
        assert blocked.frames[0]["code"] == "address-blocked"
        assert await metric(router, "sse_addresses_blocked_total") == 1
        assert await metric(router, 'sse_auth_failures_total{reason="malformed"}') == 0


async def test_an_overloaded_router_refuses_a_socket_4503_with_a_retry() -> None:
    async with running_router(max_memory=1, overload_rise_seconds=0.01) as router:
        overload = router.running.overload
        with trio.fail_after(HANG_GUARD_SECONDS):
            while overload.level is not Level.SHED:
                await overload.changed.wait()
        async with connect(router) as refused:
            assert await refused.closed() == (4503, "overloaded")
        assert refused.frames[0]["retry_ms"] > 0


# -- controls: a revocation narrows the socket in place, a sign-out ends it -----------------------


async def revoke_while_publishing(a: RouterUnderTest, b: RouterUnderTest) -> None:
    """u1's socket on ``b`` follows n1 and n2 while a publisher writes both through ``a``; n1 is
    revoked through ``a`` mid-stream. The socket stays open and is told; not one event of n1
    after the revocation's place in n1's partition reaches it; n2 flows with no gap."""
    publishing = Publishing(a)
    old = issued(60, novels=["n1", "n2"])
    following = {"novel_id": ["n1", "n2"]}
    async with connect(b, old, following) as client, trio.open_nursery() as nursery:
        await hello(client)
        nursery.start_soon(publishing.run)
        await client.until(lambda _: len(client.events()) >= 10)
        *_, on_n1 = await send_control(a, revocation("n1"))
        told = await client.until(lambda f: f["type"] == "access-changed")
        told_at = len(client.frames)
        await client.until(lambda _: len(client.frames) >= told_at + 10)  # n2 flows on
        await publishing.stop(a, b)  # every event and both copies of the control routed
        await flush(b, client)
        assert client.close is None
        (stream,) = b.running.hub.streams("u1")  # the same session, narrowed
        assert stream.principal.novels == frozenset({"n2"})
    assert told == {"type": "access-changed", "novel_id": "n1", "session_id": None}
    assert_nothing_of_n1_after([d for novel, d in data_of(client) if novel == "n1"], on_n1)
    after = [f for f in client.frames[told_at:] if f.get("event") == "content.updated"]
    assert {f["data"]["novel_id"] for f in after} == {"n2"}
    assert [d["content_version"] for novel, d in data_of(client) if novel == "n2"] == list(
        range(publishing.published)
    )  # no gap, no duplicate


def data_of(client: Client) -> list[tuple[str, dict[str, object]]]:
    return [(f["data"]["novel_id"], f["data"]) for f in client.events("content.updated")]


async def test_a_revocation_narrows_an_open_socket_in_place_on_the_memory_bus() -> None:
    async with running_router(memory_partitions=3, **ROOMY) as router:
        await revoke_while_publishing(router, router)
        exposition = (await router.client.get("/metrics")).text
    # Two copies of the control, one per partition: the first narrows, the second finds it so.
    assert scraped(exposition, 'sse_control_streams_narrowed_total{action="revoke"}') == 1
    assert scraped(exposition, 'sse_control_streams_ended_total{action="revoke"}') == 0


async def test_a_revocation_through_one_instance_narrows_a_socket_on_another(
    shared_bus: RouterFactory,
) -> None:
    await across_instances(shared_bus, revoke_while_publishing)


async def test_a_sign_out_closes_the_socket_4006_and_its_token_is_refused_after() -> None:
    old = issued(60, novels=["n1"], sid="s1")
    async with running_router(**ROOMY) as router:
        async with connect(router, old) as client:
            await hello(client)
            await send_control(
                router,
                {"control": "disconnect", "user_id": "u1", "issued_at": rfc3339(time.time() - 30)},
            )
            assert await client.closed() == (4006, "disconnected")
        goodbye = client.frames[-1]
        assert goodbye["event"] == "sse.error"
        assert (goodbye["data"]["code"], goodbye["data"]["retryable"]) == ("disconnected", False)
        async with connect(router, old) as again:
            assert await again.closed() == (4001, "revoked")
        async with connect(router, auth("u1", novels=["n1"], sid="s1")) as fresh:
            await hello(fresh)
