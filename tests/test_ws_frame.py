"""RFC 6455 server framing (router/core/ws_frame.py), read back by wsproto's own client."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from router.core.ws_frame import text_frame, text_frames
from router.core.ws_wire import Frames


def decoded(wire: bytes) -> list[str]:
    """Whole text messages a client reads from ``wire`` (wsproto raises on any framing error,
    and a server frame that were masked would be one)."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(wire)
    messages: list[str] = []
    for frame in client.received_frames():
        assert frame.opcode is Opcode.TEXT
        assert frame.message_finished
        assert frame.frame_finished
        messages.append(str(frame.payload))
    return messages


# Each length field's edges: 7 bits up to 125, 16 bits up to 65,535, then 64 bits.
EDGES = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]


def test_each_length_field_is_read_back_whole() -> None:
    for length in EDGES:
        message = "x" * length
        assert decoded(text_frame(message)) == [message]


def test_the_length_is_of_the_utf8_bytes_not_the_characters() -> None:
    message = "é" * 100  # 100 characters, 200 bytes: past the 7-bit field
    assert decoded(text_frame(message)) == [message]


@given(st.lists(st.text(st.characters(exclude_categories=["Cs"])), max_size=8))
def test_consecutive_frames_are_read_back_in_order(messages: list[str]) -> None:
    assert decoded(text_frames(messages)) == messages


def test_the_frames_of_a_chunk_are_framed_once_and_kept() -> None:
    frames = Frames(('{"type":"cursor","id":"1"}', '{"type":"cursor","id":"2"}'))
    assert frames.on_the_wire is frames.on_the_wire
    assert decoded(frames.on_the_wire) == list(frames)
