"""`python -m bench.health_round`: what the health monitor's round costs, in CPU time.

Two figures, each the CPU seconds of this process (``time.process_time``, robust to a busy
machine's other load), over several runs so the spread shows:

- one round of :meth:`actors.overload.OverloadMonitor.measure` over N sessions holding nothing
  (the common case: streams keeping up, whose sockets are not asked);
- one read of a socket's unsent bytes (``SIOCOUTQ``, router/http/socket_backlog.py), the cost
  added per stream that holds bytes in the router.
"""

from __future__ import annotations

import argparse
import socket
import time

import trio

from actors.overload import OverloadMonitor
from actors.session import Session, SessionSettings
from router.core.permissions import Principal, StreamFilter
from router.http.socket_backlog import unsent_bytes

ME = Principal(user_id="u1", novels=frozenset({"n1"}))


async def rounds(sessions: int, runs: int, per_run: int) -> list[float]:
    """Milliseconds of CPU per round, one figure per run."""
    expires = time.time() + 3600
    idle = [
        Session(ME, StreamFilter(), expires, settings=SessionSettings()) for _ in range(sessions)
    ]
    monitor = OverloadMonitor(lambda: idle, lambda: 0)
    figures = []
    for _ in range(runs):
        started = time.process_time()
        for _ in range(per_run):
            await monitor.measure(loop_lag=0.0)
        figures.append((time.process_time() - started) / per_run * 1e3)
    return figures


def socket_reads(runs: int, per_run: int) -> list[float]:
    """Microseconds of CPU per read of a connected TCP socket's send queue, one per run."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()), listener.accept()[0] as accepted:
            sock = trio.socket.from_stdlib_socket(accepted)
            figures = []
            for _ in range(runs):
                started = time.process_time()
                for _ in range(per_run):
                    unsent_bytes(sock)
                figures.append((time.process_time() - started) / per_run * 1e6)
            return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    per_round = sorted(trio.run(rounds, args.sessions, args.runs, 10))
    per_read = sorted(socket_reads(args.runs, 100_000))
    print(f"health round over {args.sessions} idle sessions, ms CPU: {per_round[0]:.2f} to "
          f"{per_round[-1]:.2f}, median {per_round[len(per_round) // 2]:.2f}")  # fmt: skip
    print(f"SIOCOUTQ read, us CPU: {per_read[0]:.2f} to {per_read[-1]:.2f}, "
          f"median {per_read[len(per_read) // 2]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
