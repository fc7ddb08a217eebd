"""The replay storm (issue 18): a reconnect storm of clients that all resume from before a full
replay cache, while other streams are live and a broadcast goes on.

What it answers: how long until every resuming client has caught up (the cache's events and
the live ones published meanwhile, nothing missing or repeated), at how many replayed events a
second; how much the router's memory grows during the storm over its idle figure (a storm must
not hold the whole cache once per client at once); and what the streams that were already live
saw of the broadcast meanwhile (their latency, their losses).

The sequence: take a cursor (a stream's first id, before any event), publish ``history``
events (the router's cache holds those and the storm's live events, no more: it is full at the
end), open ``live`` streams, start publishing ``events`` broadcast events at ``rate``, and one
second later connect ``storm`` clients at once, each with that cursor as its ``Last-Event-ID``.
Each storm client expects ``history + events`` events; each live one ``events``.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

from bench.run import MAX_SEQ, Server, consumed, publish, run_client

SAMPLE_SECONDS = 0.1
"""How often the router's RSS is read during the storm."""
STORM_TIMEOUT = 1800.0
"""How long a storm client waits for its streams to open, and then for all their events
(counting the rest as missing): a storm's streams open as their replays take turns, so the
last ones open when nearly all is replayed."""


def storm_options(history: int, events: int) -> list[str]:
    """The router's settings for the storm: a cache that ``history`` events and the ``events``
    published during the storm fill, no more (a smaller one would evict what the storm is
    owed and answer it truncated), and the overload ladder's resume threshold out of the way,
    so the storm measures the replay path rather than the ladder's refusals (bench/overload.py
    measures those)."""
    return ["--cache-max-events", str(history + events), "--overload-replays", "1000000"]


def first_cursor(server: Server) -> str:
    """The id a new stream starts with: the router's position now, before any workload event."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", server.stream_path, headers=_auth(server))
        response = connection.getresponse()
        while line := response.fp.readline():
            text = line.decode().strip()
            if text.startswith("id:"):
                return text[3:].strip()
        raise RuntimeError("the stream ended before its first id")
    finally:
        connection.close()


def _auth(server: Server) -> dict[str, str]:
    name, _, value = server.auth_header.partition(": ")
    return {name: value, "Accept": "text/event-stream"} if name else {}


def fill_cache(server: Server, history: int) -> None:
    """Publish events 0 .. ``history - 1`` in batches and wait until every router read them."""
    ports = server.metrics_ports or [server.port]
    before = {port: consumed(port) for port in ports}  # a start-up event, if it had one
    for seq in range(0, history, 100):
        publish(server, seq, min(100, history - seq))
    for port in ports:
        deadline = time.monotonic() + 120
        while consumed(port) < before[port] + history and time.monotonic() < deadline:
            time.sleep(0.1)
    time.sleep(1.0)  # the cache append follows the routing


class RssSampler:
    """The server's RSS (all its processes) every :data:`SAMPLE_SECONDS` until stopped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.server.rss_kib())
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def replay_storm(
    client: Path, server: Server, *, storm: int, live: int, history: int, events: int, rate: float
) -> dict[str, float]:
    """Run the storm against ``server`` (started with :func:`storm_options`) and return its
    figures; see the module's docstring."""
    assert history + events < MAX_SEQ, "the load client counts sequence numbers below MAX_SEQ"
    cursor = first_cursor(server)
    fill_cache(server, history)
    figures: dict[str, float] = {}
    storm_result: dict[str, float] = {}

    def publish_live() -> None:
        start = time.monotonic()
        for n in range(events):
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
            try:
                publish(server, history + n)
            except (OSError, http.client.HTTPException):
                figures["failed_publishes"] = figures.get("failed_publishes", 0) + 1

    def run_storm() -> None:
        figures["idle_rss_mib"] = server.rss_kib() / 1024
        cpu_before = server.cpu_seconds()
        publisher = threading.Thread(target=publish_live)
        publisher.start()
        time.sleep(1.0)  # the broadcast is under way when the storm comes
        with RssSampler(server) as sampler:
            expected = history + events
            resumed = run_client(
                client, server, storm, expected, STORM_TIMEOUT,
                resume_from=cursor, open_timeout=STORM_TIMEOUT,
            )  # fmt: skip
            storm_result.update(resumed)
        figures["storm_peak_rss_mib"] = sampler.peak_kib / 1024
        figures["storm_server_cpu_s"] = server.cpu_seconds() - cpu_before
        publisher.join()

    storm_thread = threading.Thread(target=run_storm)
    live_result = run_client(
        client, server, live, events, STORM_TIMEOUT, on_open=storm_thread.start
    )
    storm_thread.join()
    caught_up = max(storm_result["elapsed_seconds"], 1e-9)
    grown = figures["storm_peak_rss_mib"] - figures["idle_rss_mib"]
    return {
        "storm_streams_opened": storm_result["opened"],
        "storm_failed": storm_result["failed"],
        "storm_open_s": storm_result["open_seconds"],
        "storm_caught_up_s": caught_up,
        "storm_events_per_s": storm_result["events"] / caught_up,
        "storm_missing": storm_result["missing"],
        "storm_duplicates": storm_result["duplicates"],
        "idle_rss_mib": figures["idle_rss_mib"],
        "storm_peak_rss_mib": figures["storm_peak_rss_mib"],
        "storm_rss_growth_mib": grown,
        "storm_kib_per_stream": 1024 * grown / max(1.0, storm_result["opened"]),
        "storm_server_cpu_s": figures["storm_server_cpu_s"],
        "live_p50_ms": live_result["p50_ms"],
        "live_p99_ms": live_result["p99_ms"],
        "live_max_ms": live_result["max_ms"],
        "live_missing": live_result["missing"],
        "live_duplicates": live_result["duplicates"],
        "failed_publishes": figures.get("failed_publishes", 0),
    }
