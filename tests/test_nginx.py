"""nginx (docs/deploy/nginx.conf) in front of two router processes on Kafka and Redis."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, aclosing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Event, Ping, RejectConnection, Request, TextMessage

from tests.e2e_helpers import PUBLISHER, SECRET, auth, content, token
from tests.kafka_broker import Broker, create_topic, free_port, new_topic_name, wait_until_listening
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix
from tests.sse_http_client import open_stream
from tests.sse_spec_parser import ReceivedStream

CONFIG = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM = "/api/v1/events/stream"
WS_PATH = "/api/v1/events/ws"


@contextmanager
def router_process(port: int, log: Path, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "router.cli", "serve", "--port", str(port), *flags]
    environ = {**os.environ, "SSE_ROUTER_JWT_SECRET": SECRET}
    with log.open("wb") as output, subprocess.Popen(command, stdout=output, env=environ) as process:
        try:
            wait_until_listening(port)
            yield process
        finally:
            process.kill()


@contextmanager
def nginx(port: int, upstreams: tuple[int, int], read_timeout: str) -> Iterator[None]:
    config = CONFIG.read_text()
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    config = config.replace("127.0.0.1:8001", f"127.0.0.1:{upstreams[0]}")
    config = config.replace("127.0.0.1:8002", f"127.0.0.1:{upstreams[1]}")
    config = re.sub(r"proxy_read_timeout \S+;", f"proxy_read_timeout {read_timeout};", config)
    prefix = Path(tempfile.mkdtemp(prefix="sse-router-nginx-"))
    (prefix / "nginx.conf").write_text(config)
    command = [NGINX, "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"]
    with subprocess.Popen(command, stderr=subprocess.DEVNULL) as process:
        try:
            wait_until_listening(port)
            yield
        finally:
            process.terminate()
            process.wait()
            shutil.rmtree(prefix, ignore_errors=True)


def served_by(log: Path) -> set[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {line["connection_id"] for line in lines if line["event"] == "stream opened"}


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is installed by .ci/run")
async def test_streams_through_nginx_survive_a_router_going_away(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    import httpx

    topic, prefix = new_topic_name(), new_prefix()
    await create_topic(kafka_broker.bootstrap, topic, partitions=3)
    ports = (free_port(), free_port())
    front = free_port()
    flags = (
        "--bus", "kafka", "--kafka-bootstrap", kafka_broker.bootstrap, "--kafka-topic", topic,
        "--kafka-epoch", kafka_broker.router_settings["kafka_epoch"],
        "--cache", "redis", "--redis-url", REDIS_URL, "--redis-key-prefix", prefix,
        "--heartbeat-seconds", "0.2", "--trusted-proxies", "127.0.0.1",
        "--shutdown-retry-spread-ms", "0",
    )  # fmt: skip
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    url = f"http://127.0.0.1:{front}"
    headers = auth("u1", novels=["n1", "n2"])
    try:
        with ExitStack() as stack:
            routers = [
                stack.enter_context(router_process(port, log, *flags))
                for port, log in zip(ports, logs, strict=True)
            ]
            stack.enter_context(nginx(front, ports, read_timeout="1s"))
            async with httpx.AsyncClient(base_url=url) as client:

                async def publish(start: int, count: int) -> None:
                    batch = [content(f"n{1 + n % 2}", n) for n in range(start, start + count)]
                    response = await client.post("/api/v1/events", json=batch, headers=PUBLISHER)
                    assert response.status_code == 202, response.text

                first = ReceivedStream()
                async with (
                    open_stream(url, STREAM, headers) as response,
                    aclosing(response.chunks()) as chunks,
                ):
                    assert response.status_code == 200
                    with trio.fail_after(20):  # hang guards: nginx must pass bytes at once
                        while b": ok" not in first.raw:
                            first.raw += await anext(chunks)
                        await publish(0, 5)
                        while len(first.events) < 5:
                            first.raw += await anext(chunks)
                        # Quiet longer than nginx's 1 s read timeout: heartbeats keep it open.
                        beats = first.comments.count("")
                        while first.comments.count("") < beats + 8:
                            first.raw += await anext(chunks)
                    serving = 0 if served_by(logs[0]) else 1
                    routers[serving].send_signal(signal.SIGTERM)
                    with trio.fail_after(20):
                        async for chunk in chunks:
                            first.raw += chunk
                assert first.data()[-1]["code"] == "server-shutdown"
                assert await trio.to_thread.run_sync(routers[serving].wait) == 0
                await publish(5, 5)  # while the client is away, through the other router

                resume = {**headers, "Last-Event-ID": first.events[-2].last_event_id}
                second = ReceivedStream()
                async with (
                    open_stream(url, STREAM, resume) as response,
                    aclosing(response.chunks()) as chunks,
                ):
                    assert response.status_code == 200
                    assert response.headers["sse-replay"] == "complete"
                    with trio.fail_after(20):
                        while len(second.events) < 5:
                            second.raw += await anext(chunks)
                assert served_by(logs[1 - serving])
        versions = sorted(d["content_version"] for d in first.data()[:-1] + second.data())
        assert versions == list(range(10))  # nothing lost, nothing twice
    finally:
        delete_prefix(REDIS_URL, prefix)


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is installed by .ci/run")
async def test_tabs_behind_one_nat_refused_for_now_are_told_in_band_through_nginx(
    tmp_path: Path,
) -> None:
    """Behind one address, more new streams than the connect rate allows: an EventSource gets the
    refusal as a stream it will retry by itself (a 429 would stop it), nginx passing it as is."""
    import httpx

    port, front = free_port(), free_port()
    flags = ("--connects-per-minute", "2", "--trusted-proxies", "127.0.0.1")
    url = f"http://127.0.0.1:{front}"
    event_source = {"Accept": "text/event-stream"}
    with (
        router_process(port, tmp_path / "router.log", *flags),
        nginx(front, (port, port), read_timeout="5s"),
    ):
        for user in ("u1", "u2"):  # two tabs of the office are in
            async with open_stream(url, STREAM, {**auth(user), **event_source}) as response:
                assert response.status_code == 200
        refused = ReceivedStream()
        async with (
            open_stream(url, STREAM, {**auth("u3"), **event_source}) as response,
            aclosing(response.chunks()) as chunks,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            with trio.fail_after(20):  # a hang guard: the refusal is one block, then the end
                async for chunk in chunks:
                    refused.raw += chunk
        async with httpx.AsyncClient(base_url=url) as client:
            plain = await client.get(STREAM, headers=auth("u4"))
    (event,) = refused.events
    assert event.event == "sse.error"
    assert refused.data() == [
        {"code": "rate-limited", "message": refused.data()[0]["message"], "retryable": True}
    ]
    assert event.retry is not None
    assert 50_000 < event.retry <= 60_000
    assert plain.status_code == 429
    assert 50 < int(plain.headers["retry-after"]) <= 60
    logged = [json.loads(line) for line in (tmp_path / "router.log").read_text().splitlines()]
    refusals = [line for line in logged if line["event"] == "request refused"]
    assert [(r["limit"], r["answered"], r["remote"]) for r in refusals] == [
        ("connects-per-address", "in-band", "127.0.0.1"),
        ("connects-per-address", "status", "127.0.0.1"),
    ]


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is installed by .ci/run")
async def test_nginx_serves_the_api_but_not_the_metrics(tmp_path: Path) -> None:
    """/metrics is scraped from inside; the public listener does not pass it on."""
    import httpx

    port, front = free_port(), free_port()
    with (
        router_process(port, tmp_path / "router.log"),
        nginx(front, (port, port), read_timeout="5s"),
    ):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front}") as client:
            health = await client.get("/healthz")
            metrics = await client.get("/metrics")
            direct = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert health.status_code == 200
    assert metrics.status_code == 404
    assert direct.status_code == 200  # the router itself still answers its scraper


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is installed by .ci/run")
async def test_a_websocket_through_nginx_gets_its_hello_then_events_past_the_read_timeout(
    tmp_path: Path,
) -> None:
    """The example's WebSocket location passes the upgrade, and the browser's Host with its
    port: a page the router serves through nginx passes the Origin check. The socket stays quiet
    longer than nginx's read timeout (1 s here), kept open by the router's pings."""
    import httpx

    port, front = free_port(), free_port()
    flags = ("--heartbeat-seconds", "0.2", "--trusted-proxies", "127.0.0.1")
    host = f"127.0.0.1:{front}"
    with (
        router_process(port, tmp_path / "router.log", *flags),
        nginx(front, (port, port), read_timeout="1s"),
    ):
        client = RawWebSocket(await trio.open_tcp_stream("127.0.0.1", front))
        async with client.stream:
            target = f"{WS_PATH}?token={token(novels=['n1'])}"
            origin = [(b"origin", f"http://{host}".encode())]  # the router's own page
            await client.send(Request(host=host, target=target, extra_headers=origin))
            with trio.fail_after(20):  # hang guards: nginx must pass frames at once
                await client.until(lambda: bool(client.frames))
                await client.until(lambda: client.pings >= 8)  # 1.6 s of heartbeats
                async with httpx.AsyncClient(base_url=f"http://{host}") as http:
                    response = await http.post(
                        "/api/v1/events", json=[content("n1", 1)], headers=PUBLISHER
                    )
                    assert response.status_code == 202, response.text
                await client.until(lambda: any(f["type"] == "event" for f in client.frames))
    assert client.frames[0]["type"] == "hello"
    (event,) = [f for f in client.frames if f["type"] == "event"]
    assert (event["data"]["novel_id"], event["data"]["content_version"]) == ("n1", 1)


class RawWebSocket:
    """A wsproto client on a TCP stream: answers pings (and counts them), keeps the JSON frames,
    fails on a close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.protocol = WSConnection(ConnectionType.CLIENT)
        self.frames: list[dict[str, Any]] = []
        self.pings = 0

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.protocol.send(event))

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.protocol.receive_data(await self.stream.receive_some())
            for event in self.protocol.events():
                if isinstance(event, Ping):
                    self.pings += 1
                    await self.send(event.response())
                elif isinstance(event, TextMessage):
                    self.frames.append(json.loads(event.data))
                elif isinstance(event, CloseConnection | RejectConnection):
                    raise AssertionError(f"the socket was closed: {event}, after {self.frames}")
