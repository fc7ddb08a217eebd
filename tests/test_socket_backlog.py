"""The bytes a stream's socket has not sent yet (router/http/socket_backlog.py): read from the
kernel on real sockets, reported once when they cannot be, and exported from the real router."""

from __future__ import annotations

import os

import pytest
import trio

import router.http.socket_backlog
from router.core.observer import BacklogUnknown, NoObserver, Transport
from router.http.asgi import OBSERVER_KEY, SEND_KEY, ResponseBodyWriter
from router.http.direct_body import ChunkedSocketWriter
from router.http.socket_backlog import SocketBacklog, unsent_bytes
from router.metrics import Metrics
from tests.e2e_helpers import content, running_router, slow_reader_stream, token


class Recorder(NoObserver):
    def __init__(self) -> None:
        self.unknown: list[BacklogUnknown] = []
        self.transports: list[Transport] = []

    def socket_backlog_unknown(self, reason: BacklogUnknown, transport: Transport) -> None:
        self.unknown.append(reason)
        self.transports.append(transport)


async def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A connected TCP pair on loopback whose reading end takes little at a time."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    reader = trio.socket.socket()
    reader.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await reader.connect(listener.getsockname())
    writer, _ = await listener.accept()
    listener.close()
    return writer, reader


def fill(sender: trio.socket.SocketType) -> int:
    """Write until the send buffer is full (the peer reads nothing); the bytes written."""
    written = 0
    try:
        while True:
            written += os.write(sender.fileno(), b"x" * 65536)
    except BlockingIOError:
        return written


async def test_the_bytes_a_peer_has_not_read_are_unsent_until_it_reads_them() -> None:
    sender, reader = await tcp_pair()
    with sender, reader:
        assert unsent_bytes(sender) == 0
        written = fill(sender)
        unsent = unsent_bytes(sender)
        assert isinstance(unsent, int)
        assert 0 < unsent <= written
        received = 0
        with trio.fail_after(20):
            while received < written:
                received += len(await reader.recv(65536))
            while unsent_bytes(sender) != 0:  # the last acknowledgement is the kernel's
                await trio.sleep(0.01)


async def test_a_closed_socket_has_nothing_unsent() -> None:
    sender, reader = await tcp_pair()
    reader.close()
    sender.close()
    assert unsent_bytes(sender) == 0


async def test_a_direct_writer_reads_its_own_socket() -> None:
    sender, reader = await tcp_pair()
    with sender, reader:
        writer = ChunkedSocketWriter(trio.SocketStream(sender), trio.Lock())
        recorder = Recorder()
        backlog = SocketBacklog(recorder, Transport.SSE)
        assert backlog.read(writer) == 0
        fill(sender)
        unsent = backlog.read(writer)
        assert unsent is not None
        assert unsent > 0
        assert recorder.unknown == []


def test_a_stream_written_through_the_servers_send_has_no_socket_to_ask_said_once() -> None:
    recorder = Recorder()
    backlog = SocketBacklog(recorder, Transport.SSE)
    assert backlog.read(None) is None
    assert backlog.read(None) is None
    assert recorder.unknown == [BacklogUnknown.NO_SOCKET]


async def test_without_the_ioctl_it_is_unknown_reported_once_per_stream_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(router.http.socket_backlog, "_SIOCOUTQ", None)
    monkeypatch.setattr(router.http.socket_backlog, "_unknown_logged", set())
    sender, reader = await tcp_pair()
    with sender, reader:
        writer = ChunkedSocketWriter(trio.SocketStream(sender), trio.Lock())
        recorder = Recorder()
        streams = [SocketBacklog(recorder, Transport.SSE), SocketBacklog(recorder, Transport.SSE)]
        for backlog in streams * 2:
            assert backlog.read(writer) is None
    assert recorder.unknown == [BacklogUnknown.UNSUPPORTED] * 2
    logged = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(logged) == 1


async def test_a_streams_unknown_backlog_is_counted_under_its_transport() -> None:
    """Each output reads its socket for its own transport, and /metrics says which."""
    recorder = Recorder()
    sent: list[object] = []

    async def server_send(message: object) -> None:
        sent.append(message)

    writer = ResponseBodyWriter({SEND_KEY: server_send, OBSERVER_KEY: recorder})
    async for _ in writer.body():
        pass
    await writer.send(b"data: x\n\n")  # no socket behind this send: it falls back
    assert writer.unsent_bytes() is None
    assert recorder.transports == [Transport.SSE]

    metrics = Metrics()
    SocketBacklog(metrics, Transport.WEBSOCKET).read(None)
    exposition = metrics.exposition().decode()
    assert (
        'sse_socket_backlog_unknown_total{reason="no-socket",transport="websocket"} 1.0'
        in exposition
    )
    assert 'sse_socket_backlog_unknown_total{reason="no-socket",transport="sse"} 0.0' in exposition


def test_a_descriptor_that_refuses_the_ioctl_is_unknown() -> None:
    read_end, write_end = os.pipe()

    class NotASocket:
        def fileno(self) -> int:
            return read_end

    try:
        assert unsent_bytes(NotASocket()) is BacklogUnknown.REFUSED  # type: ignore[arg-type]
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_client_that_reads_nothing_shows_its_socket_bytes_in_the_metrics() -> None:
    """The health monitor reads the send queue of a stream whose writer is stuck (its batch in
    hand), and /metrics says how many bytes wait on sockets, and the most on one."""
    async with (
        running_router(session_buffer=512, session_buffer_bytes=0) as router,
        slow_reader_stream(router, ["n1"]) as (_client, _connection),
    ):
        await router.publish(*(content("n1", n, summary="x" * 8000) for n in range(100)))
        await router.running.hub.adapter.wait_consumed(100)
        with trio.fail_after(20):
            while True:
                exposition = (await router.client.get("/metrics")).text
                gauges = _gauges(exposition)
                if gauges.get('sse_stream_bytes_waiting{where="socket"}', 0) > 0:
                    break
                await trio.sleep(0.05)
    assert _unknown(exposition) == 0
    assert gauges['sse_stream_bytes_waiting_max{where="socket"}'] > 0
    assert (
        gauges['sse_stream_bytes_waiting_max{where="stream"}']
        >= (gauges['sse_stream_bytes_waiting_max{where="socket"}'])
    )
    assert gauges['sse_stream_bytes_waiting{where="router"}'] > 0  # the writer's batch in hand


def _unknown(exposition: str) -> float:
    """How many streams' socket bytes could not be read, whatever the reason."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("sse_socket_backlog_unknown_total{")
    )


def _gauges(exposition: str) -> dict[str, float]:
    found = {}
    for line in exposition.splitlines():
        if line.startswith("sse_stream_bytes_waiting"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


async def test_a_websocket_that_reads_nothing_shows_its_socket_bytes_in_the_metrics() -> None:
    """The same for a WebSocket written straight to its socket (router/http/direct_websocket.py):
    the bytes its client has not taken are read from the kernel, and counted."""
    async with running_router(session_buffer=512, session_buffer_bytes=0) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        with trio.socket.socket() as client:
            client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
            await client.connect((host, int(port)))
            await client.send(
                f"GET /api/v1/events/ws?token={token(novels=['n1'])} HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
            )
            received = b""
            with trio.fail_after(20):
                while b'"hello"' not in received:  # the upgrade, then the router's hello frame
                    received += await client.recv(65536)
            await router.publish(*(content("n1", n, summary="x" * 8000) for n in range(100)))
            await router.running.hub.adapter.wait_consumed(100)
            with trio.fail_after(20):
                while True:
                    exposition = (await router.client.get("/metrics")).text
                    if _gauges(exposition).get('sse_stream_bytes_waiting{where="socket"}', 0) > 0:
                        break
                    await trio.sleep(0.05)
    assert _unknown(exposition) == 0  # read from the kernel, not given up on
