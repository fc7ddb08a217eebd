"""Limits and blocking over HTTP (issue 17): the wiring of the front door's caps, the address rules
and their reload on SIGHUP with streams open, the bad-token flood, and the request bounds
(``431``, ``414``, ``400``, a head that never completes). The rules themselves are tested in
test_admission_limits, test_address_rules and test_history_bytes."""

from __future__ import annotations

import logging
import os
import re
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from router.cli import main
from router.core.cursor import MAX_CURSOR_LENGTH
from router.core.request_bounds import HARD_HEAD_LIMIT, MAX_QUERY_BYTES, REQUEST_HEAD_LIMIT
from tests.e2e_helpers import (
    PUBLISHER,
    SECRET,
    STREAM_PATH,
    RouterUnderTest,
    auth,
    content,
    running_router,
)

EVENT_SOURCE = {"Accept": "text/event-stream"}


def scraped_value(scraped: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", scraped, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def metric(router: RouterUnderTest, name: str) -> float:
    return scraped_value((await router.client.get("/metrics")).text, name)


async def until(check: Callable[[], bool]) -> None:
    with trio.fail_after(10):  # a hang guard, never a measurement
        while not check():
            await trio.sleep(0.01)


# -- the stream caps -------------------------------------------------------------------------------


async def test_a_full_instance_refuses_in_band_so_the_browser_retries_later() -> None:
    async with running_router(max_streams=2) as router, router.stream(), router.stream(auth("u2")):
        plain = await router.client.get(STREAM_PATH, headers=auth("u3", novels=["n1"]))
        assert plain.status_code == 429
        assert plain.json()["error"]["code"] == "too-many-streams"
        assert 2 <= int(plain.headers["retry-after"]) <= 10
        async with router.stream({**auth("u3", novels=["n1"]), **EVENT_SOURCE}) as refused:
            await refused.to_the_end()
        assert refused.data()[0]["code"] == "too-many-streams"
        assert refused.events[0].retry is not None
        assert 2000 <= refused.events[0].retry <= 10_000
        name = 'sse_rate_limited_connections_total{limit="streams-per-instance"}'
        assert await metric(router, name) == 2


async def test_one_address_is_capped_and_a_closed_stream_frees_its_slot() -> None:
    async with running_router(max_streams_per_address=1, trusted_proxies=("127.0.0.1",)) as router:
        office = {**auth("u1", novels=["n1"]), "X-Forwarded-For": "198.51.100.1"}
        async with router.stream(office):
            same_office = {**auth("u2", novels=["n1"]), "X-Forwarded-For": "198.51.100.1"}
            refused = await router.client.get(STREAM_PATH, headers=same_office)
            assert refused.status_code == 429
            home = {**auth("u2", novels=["n1"]), "X-Forwarded-For": "198.51.100.2"}
            async with router.stream(home) as other:
                assert other.response is not None
                assert other.response.status_code == 200
        await until(lambda: len(router.running.hub.registry) == 0)
        async with router.stream(same_office) as freed:
            assert freed.response is not None
            assert freed.response.status_code == 200
        name = 'sse_rate_limited_connections_total{limit="streams-per-address"}'
        assert await metric(router, name) == 1


# -- a flood of bad tokens -------------------------------------------------------------------------


async def test_a_flood_of_bad_tokens_is_refused_before_the_signature_is_checked() -> None:
    async with running_router(bad_tokens_per_minute=3) as router:
        forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"}
        for _ in range(3):
            assert (await router.client.get(STREAM_PATH, headers=forged)).status_code == 401
        flooded = await router.client.get(STREAM_PATH, headers=forged)
        publish = await router.client.post("/api/v1/events", json=content(), headers=PUBLISHER)
        failures = await metric(router, 'sse_auth_failures_total{reason="bad-signature"}')
        limited = await metric(
            router, 'sse_rate_limited_connections_total{limit="bad-tokens-per-address"}'
        )
    assert flooded.status_code == 429
    assert flooded.json()["error"]["code"] == "rate-limited"
    assert 1 <= int(flooded.headers["retry-after"]) <= 60
    assert publish.status_code == 429  # even a good token from that address waits its turn
    assert failures == 3  # the refused ones were never verified
    assert limited == 2


# -- the address rules -----------------------------------------------------------------------------


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "addresses.rules"
    path.write_text(text)
    return path


BLOCKED = "203.0.113.7"


def from_address(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """A request forwarded by the proxy the routers below trust (the test client, 127.0.0.1)
    for a client at ``address``: the test scrapes /metrics unforwarded, from an address let in."""
    return {**(headers if headers is not None else {}), "X-Forwarded-For": address}


async def test_a_blocked_address_gets_403_before_any_token_work(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "block 203.0.113.0/24\nblock 2001:db8:bad::/48\n")
    async with running_router(address_rules=path, trusted_proxies=("127.0.0.1",)) as router:
        get = router.client.get
        stream = await get(STREAM_PATH, headers=from_address(BLOCKED, {**auth(), **EVENT_SOURCE}))
        no_token = await get(STREAM_PATH, headers=from_address(BLOCKED))
        ipv6 = await get(STREAM_PATH, headers=from_address("2001:db8:bad::1"))
        publish = await router.client.post(
            "/api/v1/events", json=content(), headers=from_address(BLOCKED, PUBLISHER)
        )
        health = await get("/healthz", headers=from_address(BLOCKED))
        ready = await get("/readyz", headers=from_address(BLOCKED))
        # The proxy judges by the last address it added, not one the client wrote before it.
        lying = from_address(f"{BLOCKED}, 198.51.100.1", auth(novels=["n1"]))
        async with router.stream(lying) as allowed:
            assert allowed.response is not None
            assert allowed.response.status_code == 200
        scraped = (await get("/metrics")).text
    for refused in (stream, no_token, ipv6, publish):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "address-blocked"
    assert (health.status_code, ready.status_code) == (200, 200)  # probes come from the balancer
    assert scraped_value(scraped, "sse_addresses_blocked_total") == 4
    # The request without a token was refused before its token was looked at.
    assert scraped_value(scraped, 'sse_auth_failures_total{reason="missing"}') == 0


async def test_sighup_rereads_the_rules_without_dropping_open_streams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.address_gate")
    path = rules_file(tmp_path, "block 192.0.2.0/24\n")
    async with running_router(address_rules=path, trusted_proxies=("127.0.0.1",)) as router:
        client = from_address(BLOCKED, auth(novels=["n1"]))
        async with router.stream(client) as stream:
            path.write_text("block 192.0.2.0/24\nblock 203.0.113.0/24\n")
            os.kill(os.getpid(), signal.SIGHUP)
            await until_reloaded(router, "ok")
            new = await router.client.get(STREAM_PATH, headers=client)
            assert new.status_code == 403  # the new rules hold for every request from now on
            await router.publish(content("n1", 7))
            (event,) = await stream.events_count(1)  # and the open stream still delivers
            assert event.event == "content.updated"

            path.write_text("block 203.0.113.0/33\n")  # a typo: the rules before it stay
            os.kill(os.getpid(), signal.SIGHUP)
            await until_reloaded(router, "failed")
            assert (await router.client.get(STREAM_PATH, headers=client)).status_code == 403
            await router.publish(content("n1", 8))
            assert len(await stream.events_count(2)) == 2
            assert not stream.ended
    logged = {record.getMessage(): record.__dict__ for record in caplog.records}
    assert logged["address rules reloaded"]["rules"] == 2
    assert (
        "line 1: not an address range"
        in logged["address rules not reloaded: the rules before stay"]["error"]
    )


async def until_reloaded(router: RouterUnderTest, outcome: str) -> None:
    name = f'sse_address_rules_reloads_total{{outcome="{outcome}"}}'
    with trio.fail_after(10):  # a hang guard, never a measurement
        while await metric(router, name) < 1:
            await trio.sleep(0.01)


def test_a_bad_rules_file_stops_the_router_at_start_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rules_file(tmp_path, "allow 10.0.0.0/8\nallow 10.0.0.300\n")
    argv = ["serve", "--port", "0", "--jwt-secret", SECRET, "--address-rules", str(path)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{path}: line 2: not an address range" in error
    assert "--address-rules" in error


# -- request bounds --------------------------------------------------------------------------------


async def raw_exchange(router: RouterUnderTest, request: bytes) -> bytes:
    host, port = router.url.removeprefix("http://").rsplit(":", 1)
    received = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(request)
        with trio.fail_after(20):  # a hang guard: the server must answer and close
            while b"\r\n\r\n" not in received or not received.endswith(b"}"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
    return received


async def test_a_too_large_head_is_431_with_a_json_body() -> None:
    filler = "x" * (REQUEST_HEAD_LIMIT - 1000)
    async with running_router() as router:
        response = await router.client.get(
            "/healthz", headers={"X-Filler": filler, "X-More": "y" * 2000}
        )
        beyond = await raw_exchange(
            router,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: "
            + b"x" * HARD_HEAD_LIMIT
            + b"\r\n\r\n",
        )
        still = await router.client.get("/healthz")
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers-too-large"
    assert beyond.startswith(b"HTTP/1.1 431")  # past the hard bound: the server's bare 431
    assert still.status_code == 200


async def test_a_too_long_query_string_is_414_with_a_json_body() -> None:
    async with running_router() as router:
        response = await router.client.get(
            STREAM_PATH, params={"novel_id": "n" * (MAX_QUERY_BYTES + 1)}, headers=auth()
        )
        ordinary = await router.client.get(STREAM_PATH, params={"novel_id": "n" * 1000})
    assert response.status_code == 414
    assert response.json()["error"]["code"] == "uri-too-long"
    assert ordinary.status_code == 401  # a long but bounded query is read as usual


async def test_a_too_long_cursor_is_400_naming_it() -> None:
    async with running_router() as router:
        cursor = "memory@e:0:" + "1" * MAX_CURSOR_LENGTH
        response = await router.client.get(STREAM_PATH, headers={**auth(), "Last-Event-ID": cursor})
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == "Last-Event-ID"


async def test_a_connection_that_dribbles_its_head_is_closed_unanswered() -> None:
    """Slowloris: bytes that keep coming do not keep a connection whose request head never
    completes; ``--keep-alive-seconds`` runs from the connection's start until a whole head."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200
    async with running_router(keep_alive_seconds=0.5) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            sent = 0
            received = b""
            with trio.fail_after(20):  # a hang guard: the dribble alone would last 40 s
                while sent < len(head):
                    try:
                        await stream.send_all(head[sent : sent + 1])
                    except trio.BrokenResourceError:
                        break
                    sent += 1
                    with trio.move_on_after(0.2):
                        received = await stream.receive_some(1024)
                        break
        alive = await router.client.get("/healthz")
    assert received == b""  # closed, never answered
    assert sent < len(head)  # before the head was complete
    assert alive.status_code == 200


async def test_an_open_files_limit_below_the_stream_cap_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="router.server")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-files limit to be below")
    async with running_router(max_streams=soft):  # no room left for anything but streams
        pass
    async with running_router(max_streams=10):
        pass
    (warned,) = [r for r in caplog.records if "open-files limit" in r.getMessage()]
    assert warned.__dict__["max_streams"] == soft
