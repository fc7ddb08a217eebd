"""End to end: a real hypercorn on a loopback port, real HTTP clients streaming the response."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import pytest
import trio

from actors.session import CloseReason
from router.core.cursor import parse_cursor
from tests.conftest import RouterFactory
from tests.e2e_helpers import (
    STREAM_PATH,
    EventStream,
    RouterUnderTest,
    auth,
    content,
    envelope,
    progress,
    running_router,
    signed_token,
    token,
)


async def test_a_published_event_arrives_on_the_stream(
    router_on_each_bus: RouterFactory,
) -> None:
    async with router_on_each_bus() as router, router.stream() as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.response.headers["cache-control"] == "no-cache"
        assert stream.response.headers["x-accel-buffering"] == "no"
        assert stream.response.headers["sse-replay"] == "complete"
        assert stream.response.headers["x-server-version"] == "0.1.0"
        (event_id,) = await router.publish(content("n1", 7))
        (event,) = await stream.events_count(1)
        assert event.event == "content.updated"
        data = stream.data()[0]
        assert data == {
            "event_id": event_id,
            "occurred_at": "2026-11-28T10:00:00.000000Z",
            "novel_id": "n1",
            "content_version": 7,
        }
        assert event.last_event_id.split(":")[0] == event_id.split(":")[0]  # same source@epoch


async def test_the_token_may_come_from_the_cookie_or_the_query() -> None:
    async with running_router() as router:
        by_cookie = {"Cookie": f"access_token={token(novels=['n1'])}"}
        async with router.stream(headers=by_cookie) as stream:
            assert stream.response.status_code == 200
        async with router.stream(headers={}, params={"token": token()}) as stream:
            assert stream.response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic dTE6cHc="}, "malformed"),
        ({"Authorization": "Bearer not-a-token"}, "malformed"),
        ({"Authorization": f"Bearer {token(ttl_seconds=-10)}"}, "expired"),
        ({"Authorization": "Bearer " + token()[:-4] + "AAAA"}, "bad-signature"),
        ({"Cookie": "access_token=%ED%A0%80"}, "malformed"),  # a lone surrogate, in UTF-8
    ],
)
async def test_a_missing_or_bad_token_is_401_with_a_json_body(
    headers: dict[str, str], code: str
) -> None:
    async with running_router() as router:
        response = await router.client.get(STREAM_PATH, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "claims_json",
    [
        f'{{"sub": "u1", "exp": {10**400}}}',
        '{"sub": "u1", "exp": 1e400}',
        '{"sub": "u1", "exp": NaN}',
        '{"sub": "u1", "exp": ' + "9" * 5000 + "}",
        f'{{"sub": "u1", "exp": 4102444800, "nbf": {10**400}}}',
        '{"sub": "u\\ud800", "exp": 4102444800}',
    ],
    ids=["exp-10e400", "exp-1e400", "exp-nan", "exp-5000-digits", "nbf-10e400", "sub-surrogate"],
)
async def test_a_validly_signed_token_with_hostile_claims_is_401_not_500(claims_json: str) -> None:
    headers = {"Authorization": f"Bearer {signed_token(claims_json)}"}
    async with running_router() as router:
        for response in (
            await router.client.get(STREAM_PATH, headers=headers),
            await router.client.post("/api/v1/events", json=content("n1"), headers=headers),
        ):
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] in {"malformed", "bad-claims"}


@pytest.mark.parametrize(
    ("params", "status", "parameter"),
    [
        ([("novel_id", "n2")], 403, "novel_id"),
        ([("novels", "n1")], 400, "novels"),
        ([("types", "content.nope")], 400, "types"),
        ([("last_event_id", "memory:0:-1")], 400, "last_event_id"),
    ],
)
async def test_bad_stream_requests_name_the_parameter(
    params: list[tuple[str, str]], status: int, parameter: str
) -> None:
    async with running_router() as router:
        response = await router.client.get(STREAM_PATH, params=params, headers=auth(novels=["n1"]))
    assert response.status_code == status
    assert response.json()["error"]["parameter"] == parameter


@pytest.mark.parametrize(
    ("query", "last_event_id", "parameter"),
    [
        ("types=%ED%A0%80", None, "types"),  # a lone surrogate, percent-encoded as UTF-8
        ("last_event_id=%ED%A0%80", None, "last_event_id"),
        ("last_event_id=memory@e:0:" + "9" * 5000, None, "last_event_id"),
        ("", b"\xed\xa0\x80", "Last-Event-ID"),  # the same, raw in the header
        ("", b"memory@e:0:" + b"9" * 450, "Last-Event-ID"),
        ("", b"memory@e:0:" + b"9" * 5000, "Last-Event-ID"),
        ("", b"memory@e:0:1e400", "Last-Event-ID"),
    ],
    ids=["types", "query-cursor", "query-huge", "header", "header-huge", "header-5000", "1e400"],
)
async def test_hostile_stream_parameters_are_400_naming_them(
    query: str, last_event_id: bytes | None, parameter: str
) -> None:
    headers: dict[str, str | bytes] = {**auth(novels=["n1"])}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with running_router() as router:
        response = await router.client.get(f"{STREAM_PATH}?{query}", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == parameter


async def test_a_malformed_last_event_id_header_is_400() -> None:
    async with running_router() as router:
        response = await router.client.get(
            STREAM_PATH, headers={**auth(), "Last-Event-ID": "not a cursor"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == "Last-Event-ID"


async def test_streams_per_user_are_capped() -> None:
    async with (
        running_router(max_streams_per_user=2) as router,
        router.stream(),
        router.stream(),
    ):
        response = await router.client.get(STREAM_PATH, headers=auth(novels=["n1"]))
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "too-many-streams"
        assert response.headers["retry-after"] == "10"
        async with router.stream(headers=auth("u2")) as other_user:
            assert other_user.response.status_code == 200


EVENT_SOURCE = {"Accept": "text/event-stream"}  # what every browser EventSource sends


async def refused_in_band(router: RouterUnderTest, headers: dict[str, str]) -> EventStream:
    """A stream asked for the way an EventSource asks, read to its end."""
    async with router.stream({**headers, **EVENT_SOURCE}) as stream:
        assert stream.response is not None
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "sse-replay" not in stream.response.headers  # no stream was opened
        await stream.to_the_end()
    return stream


@pytest.mark.parametrize("refusal", ["rate-limited", "too-many-streams", "shutting-down"])
async def test_an_event_source_is_refused_in_band_so_the_browser_retries(
    refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.http.admission")
    async with running_router(connects_per_minute=2, max_streams_per_user=1) as router:
        if refusal == "rate-limited":
            for _ in range(2):
                async with router.stream():
                    pass
        if refusal == "shutting-down":
            router.running.hub.close_sessions()  # the moment shutdown begins
        async with router.stream() if refusal == "too-many-streams" else nullcontext():
            caplog.clear()
            stream = await refused_in_band(router, auth(novels=["n1"]))
        scraped = (await router.client.get("/metrics")).text
    (event,) = stream.events  # one block, then the end of the stream: the browser reconnects
    assert event.event == "sse.error"
    assert stream.data() == [
        {"code": refusal, "message": stream.data()[0]["message"], "retryable": True}
    ]
    assert event.last_event_id == ""  # no id: the browser keeps its Last-Event-ID
    wait_ms = {"rate-limited": (59_000, 60_000), "too-many-streams": (10_000, 10_000)}
    low, high = wait_ms.get(refusal, (1000, 1000))
    assert event.retry is not None
    assert low <= event.retry <= high
    (logged,) = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert logged.__dict__["code"] == refusal
    assert logged.__dict__["answered"] == "in-band"
    counted = {"rate-limited": "connects-per-user", "too-many-streams": "streams-per-user"}
    if refusal in counted:
        assert f'sse_rate_limited_connections_total{{limit="{counted[refusal]}"}} 1.0' in scraped


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, [], 401),
        (auth(novels=["n1"]), [("novel_id", "n2")], 403),
        (auth(novels=["n1"]), [("types", "content.nope")], 400),
    ],
)
async def test_an_event_source_still_gets_the_status_of_a_refusal_not_to_retry(
    headers: dict[str, str], params: list[tuple[str, str]], status: int
) -> None:
    async with running_router() as router:
        response = await router.client.get(
            STREAM_PATH, params=params, headers={**headers, **EVENT_SOURCE}
        )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"


async def test_new_streams_are_rate_limited_with_retry_after() -> None:
    async with running_router(connects_per_minute=2) as router:
        for _ in range(2):
            async with router.stream() as stream:
                assert stream.response.status_code == 200
        response = await router.client.get(STREAM_PATH, headers=auth(novels=["n1"]))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate-limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60


def behind(address: str, user: str = "u1") -> dict[str, str]:
    return {**auth(user, novels=["n1"]), "X-Forwarded-For": address}


async def test_a_user_refused_for_one_address_keeps_their_allowance_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="router.http.admission")
    async with running_router(connects_per_minute=2, trusted_proxies=("127.0.0.1",)) as router:
        for user in ("u1", "u1"):
            async with router.stream(behind("10.0.0.1", user)):
                pass
        refused = await router.client.get(STREAM_PATH, headers=behind("10.0.0.1", "u2"))
        assert refused.status_code == 429
        for _ in range(2):  # u2, from home: the refusal above spent none of u2's allowance
            async with router.stream(behind("10.0.0.2", "u2")) as stream:
                assert stream.response is not None
                assert stream.response.status_code == 200
        scraped = (await router.client.get("/metrics")).text
    (logged,) = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert logged.__dict__["limit"] == "connects-per-address"
    assert 'sse_rate_limited_connections_total{limit="connects-per-address"} 1.0' in scraped
    assert 'sse_rate_limited_connections_total{limit="connects-per-user"} 0.0' in scraped


async def test_nobody_receives_another_users_or_another_novels_events(
    router_on_each_bus: RouterFactory,
) -> None:
    async with (
        router_on_each_bus(heartbeat_seconds=0.05) as router,
        router.stream(headers=auth("u1", novels=["n1"])) as u1,
        router.stream(headers=auth("u2", novels=["n2"])) as u2,
    ):
        await router.publish(
            progress("u2", "t-of-u2", 10),
            content("n2", 1),
            progress("u1", "t-of-u1", 20),
            content("n1", 2),
            content("n1", 3, user_id="u2"),  # n1, but only for u2: u2 is not granted n1
        )
        await router.running.hub.adapter.wait_consumed(5)
        await router.flush(u1, u2)

    def got(stream: EventStream) -> set[tuple[object, object]]:
        return {(d.get("task_id"), d.get("content_version")) for d in stream.data()}

    # Events of different partitions have no order between them: compare as sets.
    assert got(u1) == {("t-of-u1", None), (None, 2)}
    assert got(u2) == {("t-of-u2", None), (None, 1)}
    assert len(u1.data()) == len(u2.data()) == 2


async def test_resume_gets_exactly_the_missed_events_while_publishing_goes_on(
    router_on_each_bus: RouterFactory,
) -> None:
    async with router_on_each_bus() as router:
        novels = ["n1", "n2", "n3", "n4"]
        headers = auth("u1", novels=novels)
        published = 0

        batches: list[tuple[int, int]] = []

        async def publish_next(count: int) -> None:
            nonlocal published
            batch = [content(novels[(published + i) % 4], published + i) for i in range(count)]
            batches.append((published, published + count))
            published += count
            await router.publish(*batch)

        async with router.stream(headers=headers) as first:
            await publish_next(20)
            await first.events_count(20)
            seen = first.data()
            last_id = first.events[-1].last_event_id
        assert len(parse_cursor(last_id).positions) > 1  # several partitions: a real cursor

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_next, 30)  # goes on while the client reconnects
            async with router.stream(headers={**headers, "Last-Event-ID": last_id}) as second:
                assert second.response.headers["sse-replay"] == "complete"
                await publish_next(10)
                await second.events_count(40)
        versions = [d["content_version"] for d in seen + second.data()]
        assert sorted(versions) == list(range(60))  # nothing lost, nothing twice
        # Each novel's events keep the order they were published in. Two publishes that run at
        # once have no order between them, so the order is checked within each publish.
        by_novel_and_publish: dict[tuple[object, int], list[int]] = {}
        for data in seen + second.data():
            version = data["content_version"]
            publish = next(i for i, (low, high) in enumerate(batches) if low <= version < high)
            by_novel_and_publish.setdefault((data["novel_id"], publish), []).append(version)
        assert all(v == sorted(v) for v in by_novel_and_publish.values())


async def test_a_stream_cut_before_its_first_event_resumes_with_the_id_of_its_first_bytes(
    router_on_each_bus: RouterFactory,
) -> None:
    """What a browser does: its stream is cut before any event; it reconnects sending the last
    id it saw, which came with the first bytes; what was published meanwhile arrives."""
    async with router_on_each_bus() as router:
        headers = auth("u1", novels=["n1", "n2"])
        await router.publish(content("n2", 0, user_id="someone-else"))  # routed, not for u1
        async with router.stream(headers=headers) as first:
            assert first.events == []
            last_id = first.last_event_id
        assert last_id, "the first bytes carry no id"
        await router.publish(*(content(f"n{1 + n % 2}", n) for n in range(1, 7)))
        await router.running.hub.adapter.wait_consumed(7)
        async with router.stream(headers={**headers, "Last-Event-ID": last_id}) as second:
            assert second.response is not None
            assert second.response.headers["sse-replay"] == "complete"
            await second.events_count(6)
        assert sorted(d["content_version"] for d in second.data()) == list(range(1, 7))
        assert [e.event for e in second.events] == ["content.updated"] * 6


async def test_replayed_events_are_filtered_like_live_ones(
    router_on_each_bus: RouterFactory,
) -> None:
    async with router_on_each_bus() as router:
        async with router.stream(headers=auth("u1", novels=["n1"])) as first:
            await router.publish(content("n1", 1))
            await first.events_count(1)
            cursor = first.events[-1].last_event_id
        await router.publish(content("n2", 2), progress("u2", "t", 5), content("n1", 3))
        resumed_headers = {**auth("u1", novels=["n1"]), "Last-Event-ID": cursor}
        async with router.stream(headers=resumed_headers) as second:
            await router.publish(content("n1", 4))
            await second.events_count(2)
        assert [d["content_version"] for d in second.data()] == [3, 4]


async def test_a_cursor_from_before_a_restart_is_truncated_history() -> None:
    async with running_router() as old_router, old_router.stream() as stream:
        await old_router.publish(content("n1", 1))
        await stream.events_count(1)
        old_cursor = stream.events[0].last_event_id
    async with running_router() as router:
        await router.publish(content("n1", 2))
        headers = {**auth(novels=["n1"]), "Last-Event-ID": old_cursor}
        async with router.stream(headers=headers) as resumed:
            assert resumed.response.headers["sse-replay"] == "truncated"
            await resumed.events_count(2)
        (error, replayed) = resumed.data()
        assert error["code"] == "history-truncated"
        assert replayed["content_version"] == 2


async def test_types_may_name_sse_error_which_arrives_whatever_types_says() -> None:
    async with running_router() as router:
        headers = {**auth(novels=["n1"]), "Last-Event-ID": "memory@0ther3poch:0:5"}
        for types in ("sse.error,content.updated", "content.updated"):
            async with router.stream(headers, params={"types": types}) as stream:
                assert stream.response.status_code == 200
                assert stream.response.headers["sse-replay"] == "truncated"
                await router.publish(
                    envelope(
                        "System.NotificationSent",
                        {"broadcast": True},
                        level="info",
                        title="filtered",
                        message="away",
                    ),
                    content("n1", 7),
                )
                await stream.events_count(2)
            assert [e.event for e in stream.events] == ["sse.error", "content.updated"]
            assert stream.data()[0]["code"] == "history-truncated"


async def test_a_cursor_older_than_the_retained_window_is_truncated_history() -> None:
    async with running_router(cache_max_events=3) as router:
        async with router.stream() as first:
            await router.publish(content("n1", 0))
            await first.events_count(1)
            cursor = first.events[0].last_event_id
        await router.publish(*(content("n1", n) for n in range(1, 6)))
        headers = {**auth(novels=["n1"]), "Last-Event-ID": cursor}
        async with router.stream(headers=headers) as resumed:
            assert resumed.response.headers["sse-replay"] == "truncated"
            await resumed.events_count(4)
    assert [d.get("code") or d["content_version"] for d in resumed.data()] == [
        "history-truncated",
        3,
        4,
        5,
    ]


async def test_heartbeats_keep_a_quiet_stream_alive() -> None:
    async with running_router(heartbeat_seconds=0.05) as router, router.stream() as stream:
        await stream.read_until(lambda s: s.comments.count("") >= 2)
        assert stream.events == []


async def test_a_stalled_reader_is_cut_off_while_others_keep_receiving() -> None:
    async with running_router(session_buffer=32) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        stalled = trio.socket.socket()
        stalled.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await stalled.connect((host, int(port)))
        request = (
            f"GET {STREAM_PATH}?token={token(novels=['n1'])} HTTP/1.1\r\nHost: x\r\n\r\n"
        ).encode()
        await stalled.send(request)
        await stalled.recv(1)  # the response has begun; from now on nobody reads
        (stalled_session,) = router.running.hub.registry
        try:
            async with router.stream() as reader:
                # Bursts smaller than the session buffer: a reader that keeps up never lags.
                batch = [content("n1", n, summary="x" * 2000) for n in range(10)]
                sent = 0
                while stalled_session.close_reason is None:
                    await router.publish(*batch)
                    sent += len(batch)
                    await reader.events_count(sent)
                assert [d["content_version"] for d in reader.data()] == list(range(10)) * (
                    sent // 10
                )
            stalled_bytes = b""
            with trio.fail_after(20):  # reads at once: the goodbye waits a second for a reader
                while not stalled_bytes.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                    stalled_bytes += await stalled.recv(65536)
        finally:
            stalled.close()
        assert stalled_session.close_reason is CloseReason.LAGGED
        assert b"event: sse.error" in stalled_bytes
        assert b'"code":"lagged"' in stalled_bytes


async def test_cors_answers_allowed_origins_only() -> None:
    allowed = "https://app.example"
    async with running_router(cors_origins=(allowed,)) as router:
        preflight = await router.client.options(
            STREAM_PATH,
            headers={"Origin": allowed, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert "Last-Event-ID" in preflight.headers["access-control-allow-headers"]
        async with router.stream(headers={**auth(novels=["n1"]), "Origin": allowed}) as stream:
            assert stream.response.headers["access-control-allow-origin"] == allowed
            assert stream.response.headers["access-control-allow-credentials"] == "true"
        for origin in ("https://evil.example", "https://app.example.evil"):
            response = await router.client.options(
                STREAM_PATH, headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
            )
            assert "access-control-allow-origin" not in response.headers
            async with router.stream(headers={**auth(novels=["n1"]), "Origin": origin}) as s:
                assert "access-control-allow-origin" not in s.response.headers


async def test_a_client_that_leaves_ends_its_session_promptly() -> None:
    async with running_router() as router:
        registry = router.running.hub.registry
        async with router.stream() as stream:
            (session,) = registry
            assert stream.response.status_code == 200
        with trio.fail_after(20):  # a hang guard: the session must go when its client goes
            await session.finished.wait()
        assert session.close_reason is CloseReason.CLIENT
        assert len(registry) == 0


async def test_behind_a_trusted_proxy_rate_limits_see_the_client_address() -> None:
    def client(address: str, user: str) -> dict[str, str]:
        return {**auth(user, novels=["n1"]), "X-Forwarded-For": f"10.9.9.9, {address}"}

    async with running_router(connects_per_minute=1, trusted_proxies=("127.0.0.1",)) as router:
        async with router.stream(client("192.0.2.1", "u1")) as first:
            assert first.response.status_code == 200
        async with router.stream(client("192.0.2.2", "u2")) as other_client:
            assert other_client.response.status_code == 200
        async with router.stream(client("192.0.2.1", "u3")) as same_address:
            assert same_address.response.status_code == 429
    async with running_router(connects_per_minute=1) as untrusting:
        async with untrusting.stream(client("192.0.2.1", "u1")) as first:
            assert first.response.status_code == 200
        async with untrusting.stream(client("192.0.2.2", "u2")) as forged:
            assert forged.response.status_code == 429  # X-Forwarded-For ignored: same peer
