"""Bytes a WebSocket's pong watch adds per socket (router/http/pong_watch.py), by tracemalloc.

Run: ``python bench/pong_watch_memory.py [sockets]`` (10,000 by default). It watches that many
wsproto server connections, as the WebSocket route does once a socket is admitted, and prints
what the watches, their deadlines and their ``on_silent`` callbacks hold, per socket.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

from wsproto.connection import Connection, ConnectionType

from router.http.pong_watch import PongWatch


def bytes_per_watch(sockets: int) -> float:
    connections = [Connection(ConnectionType.SERVER) for _ in range(sockets)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    watches = [PongWatch(c, 30.0, lambda: None) for c in connections]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(watches) == sockets
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / sockets


if __name__ == "__main__":
    sockets = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(f"{bytes_per_watch(sockets):.0f} bytes per watched socket ({sockets:,} sockets)")
