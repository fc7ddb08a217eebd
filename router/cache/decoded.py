"""The replay cache's entries as read back from Redis, decoded once and shared by the replays.

A reconnect storm after a deploy is thousands of resumes reading the same newest entries of
the stream. Decoding an entry (its fields as text, the data's and the scope's JSON, the event's
SSE encoding) was most of what a replay cost per entry, 39-82 us, and each replay held a decoded
copy of its own (docs/performance.md, "The replay storm"). :class:`DecodedEntries` keeps each
entry decoded once, by its stream id, with the fields and the epoch it was decoded from: an entry
is served from here only when both are the same again, so an id that came back with other
fields (a stream deleted and written again) is decoded afresh, never served stale.

Bounded like the stream it mirrors: at most ``max_events`` entries and ``max_bytes`` of their
encoded events (``entry_size``); past either, the first decoded go first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from router.core.history import Entry, entry_size

Fields = Mapping[bytes, bytes]


class DecodedEntries:
    __slots__ = ("_bytes", "_entries", "decoded", "max_bytes", "max_events")

    def __init__(self, max_events: int, max_bytes: int | None) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._entries: dict[bytes, tuple[Fields, str, Entry]] = {}
        self._bytes = 0
        self.decoded = 0
        """How many entries were decoded, rather than found decoded (for tests and figures)."""

    def __len__(self) -> int:
        return len(self._entries)

    def entry(
        self, stream_id: bytes, fields: Fields, epoch: str, decode: Callable[[], Entry]
    ) -> Entry:
        """The entry at ``stream_id`` read back with ``fields`` in ``epoch``: the one decoded
        before from the same, else ``decode()``'s, kept. What ``decode`` raises goes through,
        and nothing is kept for it."""
        known = self._entries.get(stream_id)
        if known is not None and known[1] == epoch and known[0] == fields:
            return known[2]
        entry = decode()
        self.decoded += 1
        if known is not None:
            self._forget(stream_id)
        self._entries[stream_id] = (fields, epoch, entry)
        self._bytes += entry_size(entry)
        while len(self._entries) > self.max_events or (
            self.max_bytes is not None and self._bytes > self.max_bytes and self._entries
        ):
            self._forget(next(iter(self._entries)))
        return entry

    def _forget(self, stream_id: bytes) -> None:
        _, _, entry = self._entries.pop(stream_id)
        self._bytes -= entry_size(entry)
