"""The checks of docs/security.md that no other test proved end to end: markup in events leaves
the router as JSON text, no token or query string reaches the log, refusals carry CORS for the
configured origin only, and a replay read again from the bus shows only what the token grants."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import trio

from router.core.observer import ReplayOutcome, ReplaySource
from router.logs import configure_logging
from tests.conftest import RouterFactory
from tests.e2e_helpers import (
    PUBLISHER,
    STREAM_PATH,
    auth,
    content,
    envelope,
    progress,
    running_router,
    token,
)
from tests.sse_spec_parser import parse_stream

MARKUP = [
    "<script>alert(1)</script>",
    '</script><img src=x onerror="alert(2)">',
    "<svg/onload=alert(3)>&lt;b&gt;",
    "\u2028<script>\u2029",
]
"""What a producer may put in a text field, meaning harm in a page that renders it as HTML."""


async def test_markup_in_a_payload_arrives_as_json_text_in_an_event_stream() -> None:
    async with running_router() as router:
        async with router.stream(headers=auth(novels=["n1"])) as stream:
            await router.publish(
                *(content("n1", n, summary=text) for n, text in enumerate(MARKUP)),
                envelope(
                    "System.NotificationSent",
                    {"broadcast": True},
                    level="info",
                    title=MARKUP[0],
                    message=MARKUP[1],
                ),
            )
            await stream.events_count(len(MARKUP) + 1)
        assert stream.response is not None
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        # What a browser's EventSource hands the page: each data field is JSON whose strings
        # are the producer's text, character for character, never markup of the router's.
        events = parse_stream(stream.raw).events
        summaries = [json.loads(e.data)["summary"] for e in events[: len(MARKUP)]]
        assert summaries == MARKUP
        notification = json.loads(events[-1].data)
        assert (notification["title"], notification["message"]) == (MARKUP[0], MARKUP[1])
        for event in events:
            assert event.data.startswith("{")  # a JSON object, on one data line
            assert "\n" not in event.data


async def test_input_echoed_in_a_refusal_is_json_text_never_a_page() -> None:
    async with running_router() as router:
        response = await router.client.get(
            STREAM_PATH, params={"types": MARKUP[0]}, headers=auth(novels=["n1"])
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert MARKUP[0] in response.json()["error"]["message"]  # quoted, inside a JSON string


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The router's log as the process writes it (JSON lines), for the test's duration."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    # The test's own HTTP client logs the URLs it asks for; it is not the router.
    clients = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    client_levels = [client.level for client in clients]
    for client in clients:
        client.setLevel(logging.WARNING)
    yield out
    root.handlers[:], root.level = handlers, level
    for client, client_level in zip(clients, client_levels, strict=True):
        client.setLevel(client_level)


async def test_no_token_and_no_query_string_reaches_the_log(log_lines: io.StringIO) -> None:
    """Every way a token can come and every answer the router gives it: the log holds neither
    a token nor any part of a query string, at debug level too."""
    reader = token(novels=["n1"])
    expired = token(novels=["n1"], ttl_seconds=-10)
    forged = reader[:-4] + "AAAA"
    secret_marker = "query-marker-7f3a"  # a value only ever sent in query strings
    tokens = [reader, expired, forged, PUBLISHER["Authorization"].removeprefix("Bearer ")]
    async with running_router() as router:
        client = router.client
        async with router.stream(headers={}, params={"token": reader}) as by_query:
            await router.publish(content("n1", 1))
            await by_query.events_count(1)
        cursor = by_query.events[0].last_event_id
        async with router.stream(
            headers={"Cookie": f"access_token={reader}", "Last-Event-ID": cursor}
        ) as by_cookie:
            assert by_cookie.response is not None
            assert by_cookie.response.status_code == 200
        for params in (
            {"token": expired},
            {"token": forged},
            {"token": reader, "novel_id": "n2"},  # forbidden
            {"token": reader, "types": secret_marker},  # bad request
            {"token": reader, "last_event_id": secret_marker},  # bad cursor
            {"token": reader, "unknown": secret_marker},
        ):
            response = await client.get(STREAM_PATH, params=params)
            assert response.status_code in {400, 401, 403}, response.text
        assert (await client.head(STREAM_PATH, params={"token": reader})).status_code == 200
        assert (await client.get("/nowhere", params={"token": reader})).status_code == 404
        refused = await client.post(
            "/api/v1/events", params={"q": secret_marker}, json={"bad": 1}, headers=PUBLISHER
        )
        assert refused.status_code == 400
        for header in (f"Bearer {forged}", f"Bearer {expired}", f"Basic {reader}"):
            response = await client.get(STREAM_PATH, headers={"Authorization": header})
            assert response.status_code == 401
        with trio.fail_after(20):  # a hang guard: the streams' closing lines are logged
            for session in list(router.running.hub.registry):
                await session.finished.wait()
    logged = log_lines.getvalue()
    lines = [json.loads(line) for line in logged.splitlines()]  # every line is JSON
    assert {"stream opened", "stream closed", "request refused"} <= {r["event"] for r in lines}
    for secret in (*tokens, secret_marker, "token="):
        assert secret not in logged
    refusals = [r for r in lines if r["event"] == "request refused"]
    assert len(refusals) >= 10
    assert all("?" not in r["path"] for r in refusals)


async def test_refusals_carry_cors_for_the_configured_origin_so_its_page_can_read_them() -> None:
    allowed, other = "https://app.example", "https://evil.example"
    async with running_router(cors_origins=(allowed,)) as router:
        for origin, expected in ((allowed, allowed), (other, None)):
            for response in (
                await router.client.get(STREAM_PATH, headers={"Origin": origin}),  # 401
                await router.client.get(  # 403
                    STREAM_PATH,
                    params={"novel_id": "n2"},
                    headers={**auth(novels=["n1"]), "Origin": origin},
                ),
                await router.client.get("/nowhere", headers={"Origin": origin}),  # 404
            ):
                assert response.status_code >= 400
                assert response.headers.get("access-control-allow-origin") == expected
                assert "Origin" in response.headers["vary"]  # no cache serves one to another
                if expected is None:
                    assert "access-control-allow-credentials" not in response.headers
        preflight = await router.client.options(
            STREAM_PATH, headers={"Origin": other, "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-methods" not in preflight.headers
        assert "access-control-allow-headers" not in preflight.headers


async def test_a_replay_read_again_from_the_bus_shows_only_what_the_token_grants(
    shared_bus: RouterFactory,
) -> None:
    """Past the cache's window the replay comes from the bus, converted anew: it passes the
    same check as a live event."""
    async with shared_bus(cache_max_events=2) as router:
        headers = auth("u1", novels=["n1"])
        missed = [
            content("n2", 1),  # a novel not granted
            progress("u2", "t2", 10),  # another user's task
            content("n1", 2),  # granted
            progress("u1", "t1", 20),  # the user's own
            content("n1", 3, user_id="u2"),  # a granted novel, for another user
            envelope(
                "System.NotificationSent",
                {"broadcast": True},
                level="info",
                title="everyone",
                message="hello",
            ),
            content("n2", 4),
            progress("u2", "t2", 30),
        ]
        resume = {**headers, "Last-Event-ID": await router.fall_behind(headers, missed)}
        async with router.stream(resume) as resumed:
            await router.flush(resumed)
        assert router.running.hub.replays[ReplayOutcome.COMPLETE, ReplaySource.BUS] == 1
    assert resumed.response is not None
    assert resumed.response.headers["sse-replay"] == "complete"
    shown = [d.get("content_version", d.get("progress", d.get("title"))) for d in resumed.data()]
    # A replay from the bus comes partition by partition: the order holds within each only.
    assert sorted(map(str, shown)) == ["2", "20", "everyone"]
