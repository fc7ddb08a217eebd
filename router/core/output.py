"""Where a session writes its stream: the Protocols the session actor (``actors/session.py``)
writes to and each transport's output (``router/http/``, a memory channel in tests) provides."""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Output", "SendQueue"]

_Chunk = TypeVar("_Chunk", contravariant=True)


class Output(Protocol[_Chunk]):
    """Where a session writes its stream: ``send`` waits while the client is not reading;
    ``close`` ends the stream. A ``trio.MemorySendChannel[bytes]`` is one."""

    async def send(self, value: _Chunk, /) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class SendQueue(Protocol):
    """An :class:`Output` that can tell the bytes it gave its socket that the kernel has not
    sent yet, or ``None`` when it cannot (router/http/socket_backlog.py): never checkpoints."""

    def unsent_bytes(self) -> int | None: ...
