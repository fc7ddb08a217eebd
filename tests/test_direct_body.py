"""Stream bodies written straight onto the socket (router/http/direct_body.py), on the real server.

The client side parses every response with h11, so a chunk framed wrongly, cut in two or
interleaved would fail these tests as a protocol error, not only as a missing event.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest
import trio

import router.http.asgi
from router.http.direct_body import ChunkedSocketWriter, direct_writer
from tests.e2e_helpers import STREAM_PATH, content, running_router, slow_reader_stream, token
from tests.sse_spec_parser import parse_stream


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[ChunkedSocketWriter | None]:
    """What :func:`direct_writer` found for each stream the router opened."""
    found: list[ChunkedSocketWriter | None] = []

    def recording(asgi_send: Any) -> ChunkedSocketWriter | None:
        found.append(direct_writer(asgi_send))
        return found[-1]

    monkeypatch.setattr(router.http.asgi, "direct_writer", recording)
    return found


async def test_an_http11_stream_is_written_straight_to_its_socket(
    writers: list[ChunkedSocketWriter | None],
) -> None:
    async with running_router() as router, router.stream() as stream:
        await router.publish(*(content("n1", n) for n in range(5)))
        await stream.events_count(5)
    assert [d["content_version"] for d in stream.data()] == [0, 1, 2, 3, 4]
    assert len(writers) == 1
    assert isinstance(writers[0], ChunkedSocketWriter)


async def test_an_http10_stream_is_left_to_the_server_and_still_works(
    writers: list[ChunkedSocketWriter | None],
) -> None:
    async with running_router() as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        with trio.socket.socket() as client:
            await client.connect((host, int(port)))
            path = f"{STREAM_PATH}?token={token(novels=['n1'])}"
            await client.send(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            received = b""
            while b"retry:" not in received:
                received += await client.recv(65536)
            await router.publish(content("n1", 7))
            with trio.fail_after(20):
                while b"content_version" not in received:
                    received += await client.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()  # HTTP/1.0: the body ends with the connection
    assert writers == [None]
    (event,) = parse_stream(body).events
    assert event.event == "content.updated"


async def test_a_slow_reader_gets_every_chunk_whole_and_in_order(
    writers: list[ChunkedSocketWriter | None],
) -> None:
    """More than the socket buffers hold: writes are cut short and finish under the send lock.
    The inbox holds all 2.4 MB (no byte bound): what is tested is the socket's writes."""
    async with (
        running_router(session_buffer=512, session_buffer_bytes=0) as router,
        slow_reader_stream(router, ["n1"]) as (client, connection),
    ):
        (writer,) = writers
        assert writer is not None
        big = [content("n1", n, summary="x" * 8000) for n in range(300)]
        for start in range(0, len(big), 50):
            await router.publish(*big[start : start + 50])
        await router.running.hub.adapter.wait_consumed(len(big))
        body = b""
        with trio.fail_after(20):
            while body.count(b"content_version") < len(big) or not body.endswith(b"\n\n"):
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await client.recv(65536))
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
    assert writer.waits > 0
    events = parse_stream(body).events
    assert [e.event for e in events] == ["content.updated"] * len(big)
    versions = [json.loads(e.data)["content_version"] for e in events]
    assert versions == list(range(len(big)))


def test_anything_but_hypercorns_http11_send_is_left_alone() -> None:
    async def plain_send(message: object) -> None:
        pass

    assert direct_writer(plain_send) is None
    assert direct_writer(object()) is None


async def test_a_write_cancelled_after_part_of_its_chunk_went_out_still_finishes_it() -> None:
    """A stream stopped (lagged, shed) while its last write had only part of a chunk on the
    wire: the rest must follow before anything else, or the goodbye written after it lands inside
    the chunk, the client's parser takes it as that event's data, and the event is lost (its id
    was already read, so the resume skips it)."""
    left, right = trio.socket.socketpair()
    for end in (left, right):
        end.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
        end.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    writer = ChunkedSocketWriter(trio.SocketStream(left), trio.Lock())
    big = b"x" * 200_000  # far more than the socket takes at once
    received = bytearray()

    async def read_all() -> None:
        while data := await right.recv(65536):
            received.extend(data)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            with trio.CancelScope() as scope:
                scope.cancel()  # already cancelled: the write meets it at its first checkpoint
                await writer.send(big)
            await writer.send(b"goodbye")
            left.shutdown(trio.socket.SHUT_WR)
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    connection.receive_data(head + bytes(received) + b"0\r\n\r\n")
    bodies = []
    while (event := connection.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        if isinstance(event, h11.Data):
            bodies.append(bytes(event.data))
        if isinstance(event, h11.EndOfMessage):
            break
    assert b"".join(bodies) == big + b"goodbye"
    left.close()
    right.close()
