"""RFC 6455 framing of the messages a server sends: what a WebSocket transport puts on the wire.

A server's frames are never masked (RFC 6455 §5.1), so a whole text message is a two-to-ten-byte
header (FIN and the text opcode, then the payload's length in 7, 16 or 64 bits, §5.2) and its
UTF-8 bytes. Framing a message once and writing the same bytes to every socket is what lets a
broadcast go out as one write per socket (``router/http/direct_websocket.py``). No extension bit
is ever set: under ``permessage-deflate`` a message without RSV1 is an uncompressed one, which
RFC 7692 §6 allows an endpoint to send at any time.

Pure: no I/O, nothing but encoding. ``tests/test_ws_frame.py`` decodes it with wsproto.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_FIN_TEXT = 0x81
_LENGTH_16 = 126
_LENGTH_64 = 127


def text_frame(message: str) -> bytes:
    """``message`` as one unmasked, final text frame."""
    payload = message.encode()
    length = len(payload)
    if length < _LENGTH_16:
        header = struct.pack("!BB", _FIN_TEXT, length)
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", _FIN_TEXT, _LENGTH_16, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, _LENGTH_64, length)
    return header + payload


def text_frames(messages: Iterable[str]) -> bytes:
    """``messages`` as consecutive text frames, in order, ready for one write."""
    return b"".join(text_frame(message) for message in messages)
