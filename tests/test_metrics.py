"""GET /metrics after scripted traffic: every metric moves by what happened."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.session import CloseReason, SessionSettings
from router.bus.base import Record
from router.core.cursor import EventIdentity
from router.core.permissions import Principal, StreamFilter
from router.http import asgi
from tests.e2e_helpers import (
    HANG_GUARD_SECONDS,
    STREAM_PATH,
    RouterUnderTest,
    auth,
    content,
    running_router,
    token,
)
from tests.outbox_helpers import sqlite_business_transaction, sqlite_outbox
from tests.test_websocket import connect

WS = {"transport": "websocket"}
SSE = {"transport": "sse"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(router: RouterUnderTest) -> Samples:
    response = await router.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_the_traffic() -> None:
    async with running_router(max_streams_per_user=1, session_buffer=1) as router:
        before = await scrape(router)
        assert value(before, "sse_current_connections", transport="sse") == 0

        assert (await router.client.get(STREAM_PATH)).status_code == 401
        async with router.stream(auth("u1", novels=["n1"])) as stream:
            assert value(await scrape(router), "sse_current_connections", transport="sse") == 1
            refused = await router.client.get(STREAM_PATH, headers=auth("u1", novels=["n1"]))
            assert refused.status_code == 429
            await router.publish(content("n1", 1))
            await stream.events_count(1)
            await router.publish(content("n1", 2))
            await stream.events_count(2)
            cursor = stream.events[0].last_event_id
        # Malformed, in a partition the bus does not write to: its place moves the router's
        # cursor, and must not cover the events the bus writes next.
        garbage = Record(EventIdentity("memory", "9", (999,), router.running.hub.epoch), b"{")
        await router.running.hub.adapter.process([garbage])

        resume = {**auth("u1", novels=["n1"]), "Last-Event-ID": cursor}
        async with router.stream(resume) as resumed:
            await resumed.events_count(1)
        # A client that reads nothing, with an inbox of 1: a burst is taken whole, and a step
        # that finds the inbox still full cuts the stream.
        hub = router.running.hub
        opened = await hub.open(
            Principal("u2", frozenset({"n1"})),
            StreamFilter(),
            expires_at=time.time() + 3600,
            settings=SessionSettings(session_buffer=1, goodbye_timeout_seconds=0),
        )
        stalled = opened.session
        await router.publish(*(content("n1", n) for n in range(10)))  # taken out to be written
        await hub.adapter.wait_consumed(2 + 1 + 10)
        await router.publish(content("n1", 10))  # waits in the inbox, which is full
        await hub.adapter.wait_consumed(2 + 1 + 11)
        await router.publish(content("n1", 11))
        with trio.fail_after(10):
            await stalled.finished.wait()
        assert stalled.close_reason is CloseReason.LAGGED

        after = await scrape(router)
    assert value(after, "sse_auth_failures_total", reason="missing") == 1
    assert value(after, "sse_rate_limited_connections_total", limit="streams-per-user") == 1
    sse = {"transport": "sse"}
    assert value(after, "sse_events_sent_total", event="content.updated", **sse) >= 3
    # The lagged goodbye never left (that client reads nothing), so it is not counted as sent;
    # tests/test_session_actor.py counts the router's own errors that do leave.
    assert value(after, "sse_events_sent_total", event="sse.error", **sse) == 0
    assert value(after, "sse_event_delivery_lag_seconds_count") >= 2  # replays carry none
    assert value(after, "sse_queue_size_count") >= 2
    assert value(after, "sse_connection_duration_seconds_count", reason="client", **sse) == 2
    assert value(after, "sse_connection_duration_seconds_count", reason="lagged", **sse) == 1
    assert value(after, "sse_current_connections", **sse) == 0
    assert value(after, "sse_streams_opened_total", **sse) == 3
    assert value(after, "sse_events_consumed_total") == 14 + 1
    assert value(after, "sse_events_rejected_total", reason="malformed") == 1
    assert value(after, "sse_replays_total", outcome="complete", source="cache") == 1
    assert value(after, "sse_queue_overflow_total", policy="disconnected") >= 1
    assert value(after, "sse_queue_overflow_total", policy="dropped") == 0
    assert value(after, "sse_backend_errors_total", backend="bus") == 0
    assert ("sse_consumer_queue_size", ()) in after


async def test_a_websocket_stream_is_counted_under_its_own_transport() -> None:
    """Opened, events sent and closed (by reason), each under ``transport="websocket"``, and
    none of it under ``sse``."""
    async with running_router() as router:
        async with connect(router) as client:
            first = await client.next()
            assert first["type"] == "hello"
            await router.publish(content("n1", 1), content("n1", 2))
            await client.until(lambda frame: frame.get("data", {}).get("content_version") == 2)
            during = await scrape(router)
        with trio.fail_after(HANG_GUARD_SECONDS):
            while value(after := await scrape(router), "sse_current_connections", **WS) != 0:
                await trio.sleep(0.01)
    assert value(during, "sse_current_connections", **WS) == 1
    assert value(during, "sse_current_connections", transport="sse") == 0
    assert value(after, "sse_streams_opened_total", **WS) == 1
    assert value(after, "sse_streams_opened_total", transport="sse") == 0
    assert value(after, "sse_events_sent_total", event="content.updated", **WS) == 2
    assert value(after, "sse_events_sent_total", event="content.updated", transport="sse") == 0
    assert value(after, "sse_connection_duration_seconds_count", reason="client", **WS) == 1
    closed_sse = value(after, "sse_connection_duration_seconds_count", reason="client", **SSE)
    assert closed_sse == 0


async def test_no_label_carries_a_user_id_or_a_token() -> None:
    async with running_router() as router:
        async with router.stream(auth("secret-user-42", novels=["n1"])) as stream:
            await router.publish(content("n1", 1))
            await stream.events_count(1)
        await router.client.get(STREAM_PATH, params={"token": "leaky-token-value"})
        text = (await router.client.get("/metrics")).text
    assert "secret-user-42" not in text
    assert "leaky-token-value" not in text


def test_tallies_expose_what_prometheus_client_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from router.metrics import _TallyCollector
    from router.tally import Buckets

    bounds = (0.1, 1.0, 10.0)
    ours = Buckets("lag_seconds", "Lag.", bounds)
    reference_registry = CollectorRegistry()
    reference = Histogram("lag_seconds", "Lag.", buckets=bounds, registry=reference_registry)
    for times, observed in enumerate((0.0, 0.1, 0.5, 1.0, 3.0, 10.0, 11.0, 1e9), start=1):
        ours.observe(observed, count=times)
        for _ in range(times):
            reference.observe(observed)
    ours_registry = CollectorRegistry()
    ours_registry.register(_TallyCollector((ours,)))
    expected = [
        line
        for line in generate_latest(reference_registry).decode().splitlines()
        if "lag_seconds_created" not in line
    ]
    assert generate_latest(ours_registry).decode().splitlines() == expected


async def metric_reaches(router: RouterUnderTest, name: str, wanted: float, **labels: str) -> None:
    """Scrape until ``name`` reaches ``wanted`` (what it counts happens in another actor)."""
    with trio.fail_after(HANG_GUARD_SECONDS):
        while value(await scrape(router), name, **labels) < wanted:
            await trio.sleep(0.02)


async def test_the_outbox_relays_counts_are_exported(tmp_path: Path) -> None:
    not_an_envelope = {"event_type": "Content.Updated"}
    with sqlite_outbox(tmp_path) as dsn:
        async with running_router(outbox_dsn=dsn, outbox_poll_seconds=0.05) as router:
            before = await scrape(router)
            sqlite_business_transaction(dsn, [content("n1", 1), not_an_envelope, content("n1", 2)])
            await metric_reaches(router, "sse_outbox_rejected_total", 1)
            after = await scrape(router)
    for name in ("sse_outbox_published_total", "sse_outbox_rejected_total"):
        assert value(before, name) == 0
    assert value(after, "sse_outbox_published_total") == 2
    assert value(after, "sse_outbox_rejected_total") == 1
    assert value(after, "sse_outbox_failures_total") == 0
    # An outbox without its table: every round fails, and the relay backs off and tries again.
    async with running_router(outbox_dsn=f"sqlite:///{tmp_path / 'no-table.db'}") as router:
        await metric_reaches(router, "sse_outbox_failures_total", 2)
        assert value(await scrape(router), "sse_outbox_published_total") == 0


async def open_http10_stream(router: RouterUnderTest) -> trio.socket.SocketType:
    """A stream asked for in HTTP/1.0, whose body is not chunked; returned once it has begun."""
    host, port = router.url.removeprefix("http://").rsplit(":", 1)
    client = trio.socket.socket()
    await client.connect((host, int(port)))
    path = f"{STREAM_PATH}?token={token(novels=['n1'])}"
    await client.send(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    received = b""
    with trio.fail_after(HANG_GUARD_SECONDS):
        while b"retry:" not in received:
            received += await client.recv(65536)
    return client


async def test_a_body_the_direct_writer_cannot_take_is_counted_and_logged_once_per_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fallback to the server's send still works, at about half the throughput: it must
    show, in the metrics for every stream and in the log once, not pass silently."""
    monkeypatch.setattr(asgi, "_fallbacks_logged", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="router.http.asgi")
    async with running_router() as served:
        async with served.stream(auth("u1", novels=["n1"])):  # HTTP/1.1: written directly
            assert value(await scrape(served), "sse_direct_write_fallbacks_total") == 0
        with await open_http10_stream(served), await open_http10_stream(served):
            samples = await scrape(served)
    assert value(samples, "sse_direct_write_fallbacks_total", reason="not-chunked") == 2
    for reason in ("not-hypercorn", "not-http11", "not-plain-tcp"):
        assert (("sse_direct_write_fallbacks_total", (("reason", reason),))) in samples
    logged = [r for r in caplog.records if "not straight to its socket" in r.getMessage()]
    assert [getattr(r, "reason", None) for r in logged] == ["not-chunked"]


async def test_the_token_cache_and_the_accept_loop_are_exported() -> None:
    async with running_router() as router:
        before = await scrape(router)
        headers = auth("cached-user")
        for _ in range(2):  # HEAD: admitted, with no stream to hold open
            answer = await router.client.head(STREAM_PATH, headers=headers)
            assert answer.status_code == 200
        after = await scrape(router)
    hits = "sse_token_cache_lookups_total"
    assert value(after, hits, result="miss") - value(before, hits, result="miss") == 1
    assert value(after, hits, result="hit") - value(before, hits, result="hit") == 1
    assert value(after, "sse_token_cache_size") >= 1
    for reason in ("not-hypercorn", "not-plain-http"):  # the draining accept loop serves
        assert ("sse_accept_fallbacks_total", (("reason", reason),)) in after
        assert value(after, "sse_accept_fallbacks_total", reason=reason) == 0
