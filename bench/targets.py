"""The goals of issue 18, judged from a ``just bench`` table: printed after it as met or missed.

- p99 delivery latency at most 250 ms at 20 broadcast events/s to 10,000 streams, with nothing
  lost (no event missing or repeated, no publish or connection failed);
- two workers sustain at least 1.7 times one worker's rate, on the same bus: judged on the
  throughput workload (published as fast as the server takes it) when the run has it, else on
  the broadcast, but only when one worker fell short of the rate asked (a rate both keep says
  nothing of how far either could go). Beside it, the most this machine could show: the load
  client runs on the same cores, and its CPU grows with the rate (:func:`scaling_ceiling`);
- 10,000 streams opening at once under the kernel's default backlog: none failed, all open
  within 8 s on one worker and 5 s on two;
- at most 30 KiB of resident memory per idle stream at 10,000;
- the Redis bus within 0.9 of the embedded bus's sustained broadcast rate;
- targeted events at most 1.5 times the peer's CPU per event, over HTTP publish and produced to
  Kafka (the peer's figure is its HTTP publish, the only way in it has);
- the replay storm (:func:`judge_storm`): nothing lost, its clients holding what idle streams
  do, and the live streams' latency meanwhile reported.

A run at other stream counts is judged the same way and says so: the goals are set at 10,000.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

P99_TARGET_MS = 250.0
SCALING_TARGET = 1.7
OPEN_TARGET_SECONDS = {1: 8.0, 2: 5.0}
"""All streams open within this, by the number of workers."""
KIB_PER_STREAM_TARGET = 30.0
REDIS_BUS_TARGET = 0.9
TARGETED_TARGET = 1.5
TARGET_STREAMS = 10_000
TWO_WORKERS = {"redis-2w": "redis", "kafka-2w": "kafka+redis"}
"""Each two-worker server and the one-worker server on the same bus it is compared with."""
PEERS = ("peer", "nchan")
"""The servers that are not the router: no goal is judged on them but the latency's."""

Row = tuple[str, int, str, Mapping[str, float]]


KEPT_THE_RATE = 0.95
"""A server that sustained this share of the broadcast rate asked kept it."""


def judge(rows: Sequence[Row], servers: Sequence[str], rate: float) -> list[str]:
    """One line per target and server the table has figures for; ``rate``: the broadcast
    events a second each stream was asked to take."""
    lines = _latency(rows, servers, rate)
    for workload in ("throughput", "broadcast"):
        scaling = _scaling(rows, servers, workload, rate)
        if scaling:
            lines += scaling
            break
    return lines + _opening(rows, servers) + _redis_bus(rows, servers) + _targeted(rows)


def judge_storm(figures: Mapping[str, Mapping[str, float]], storm: int) -> list[str]:
    """The replay storm's lines, one per router (``bench/replay_storm.py``'s figures) for a
    storm of ``storm`` clients (below 10,000 a per-client figure carries more of the fixed
    costs, as the idle one does)."""
    lines = []
    for name, measured in figures.items():
        lost = sum(measured.get(metric, 0) for metric in ("storm_missing", "storm_duplicates",
                                                          "storm_failed", "live_missing",
                                                          "live_duplicates"))  # fmt: skip
        kib = measured.get("storm_kib_per_stream", math.nan)
        met = lost == 0 and kib <= KIB_PER_STREAM_TARGET
        lines.append(
            f"  {_verdict(met)} {name:<12} replay storm: {lost:,.0f} lost or failed (0),"
            f" {kib:.1f} KiB per storm client (<= {KIB_PER_STREAM_TARGET:.0f}); the live"
            f" streams' p99 meanwhile {measured.get('live_p99_ms', math.nan):,.0f} ms{_note(storm)}"
        )
    return lines


def scaling_ceiling(server_us: float, client_us: float, cores: int | None = None) -> float:
    """The most two workers could sustain over one on this machine, where the load client runs
    on the same ``cores``: one worker saturating a core spends ``server_us`` of CPU per event
    delivered and the client ``client_us``; with perfect scaling two workers and the client
    still share the cores (and no more than 2x in any case)."""
    cores = cores or os.cpu_count() or 1
    if not server_us > 0 or math.isnan(client_us):
        return math.nan
    return min(2.0, cores / (1 + client_us / server_us))


def _figures(rows: Sequence[Row], workload: str) -> dict[tuple[int, str], Mapping[str, float]]:
    return {(streams, metric): values for kind, streams, metric, values in rows if kind == workload}


def _note(streams: int) -> str:
    return "" if streams == TARGET_STREAMS else f" (the goal is at {TARGET_STREAMS:,})"


def _latency(rows: Sequence[Row], servers: Sequence[str], rate: float) -> list[str]:
    """The p99 goal, judged only on a run whose publisher kept the rate asked (a schedule that
    slipped offers less and stamps its events late: its latency says too little)."""
    broadcast = _figures(rows, "broadcast")
    lines: list[str] = []
    for streams in sorted({streams for streams, _ in broadcast}):
        p99 = broadcast.get((streams, "p99_ms"), {})
        for name in servers:
            if math.isnan(p99.get(name, math.nan)):
                continue
            lost = sum(
                broadcast.get((streams, metric), {}).get(name, 0)
                for metric in ("missing", "duplicates", "failed_connections", "failed_publishes")
            )
            published = broadcast.get((streams, "published_per_second"), {}).get(name, math.nan)
            short = not math.isnan(published) and published < KEPT_THE_RATE * rate
            met = p99[name] <= P99_TARGET_MS and lost == 0 and not short
            offered = f"; only {published:.1f} events/s published of {rate:g}" if short else ""
            lines.append(
                f"  {_verdict(met)} {name:<12} {streams:>6} streams: p99 {p99[name]:,.0f} ms"
                f" (<= {P99_TARGET_MS:.0f}), {lost:,.0f} lost or failed (0){offered}"
                f"{_note(streams)}"
            )
    return lines


def _scaling(rows: Sequence[Row], servers: Sequence[str], workload: str, rate: float) -> list[str]:
    figures = _figures(rows, workload)
    lines: list[str] = []
    for streams in sorted(
        {streams for streams, metric in figures if metric == "sustained_per_second"}
    ):
        values = figures[streams, "sustained_per_second"]
        for two, one in TWO_WORKERS.items():
            if two not in servers or one not in servers or not values.get(one):
                continue
            if math.isnan(values[two]):
                continue
            where = f"{two:<12} {streams:>6} streams, {workload}:"
            if workload == "broadcast" and values[one] >= KEPT_THE_RATE * rate * streams:
                lines.append(f"  n/a    {where} {one} kept the rate asked; run throughput")
                continue
            ratio = values[two] / values[one]
            server_us = figures.get((streams, "server_cpu_us_per_delivered"), {}).get(one, math.nan)
            client_us = figures.get((streams, "client_cpu_us_per_delivered"), {}).get(one, math.nan)
            busy = figures.get((streams, "server_cores_busy"), {}).get(one, math.nan)
            ceiling = scaling_ceiling(server_us, client_us)
            beside = "" if math.isnan(ceiling) else f"; this machine could show {ceiling:.2f}x"
            if not math.isnan(busy):
                beside += f"; {one} kept {busy:.2f} of a core busy"
            lines.append(
                f"  {_verdict(ratio >= SCALING_TARGET)} {where} {ratio:.2f}x {one}'s sustained"
                f" rate (>= {SCALING_TARGET}{beside}){_note(streams)}"
            )
    return lines


def _opening(rows: Sequence[Row], servers: Sequence[str]) -> list[str]:
    idle = _figures(rows, "idle")
    lines: list[str] = []
    for streams in sorted({streams for streams, _ in idle}):
        kib = idle.get((streams, "kib_per_stream@default"), {})
        for name in servers:
            if name in PEERS:
                continue
            for label, how in (("default", "one token"), ("default,tokens", "a token each")):
                opened = idle.get((streams, f"open_seconds@{label}"), {}).get(name, math.nan)
                if math.isnan(opened):
                    continue
                workers = 2 if name in TWO_WORKERS else 1
                most = OPEN_TARGET_SECONDS[workers]
                lost = idle.get((streams, f"failed@{label}"), {}).get(name, 0)
                lines.append(
                    f"  {_verdict(opened <= most and lost == 0)} {name:<12} {streams:>6} streams"
                    f" opening at once (default backlog, {how}): {opened:.1f} s (<= {most:.0f}"
                    f" with {workers} worker(s)), {lost:,.0f} failed (0){_note(streams)}"
                )
            per_stream = kib.get(name, math.nan)
            if math.isnan(per_stream):
                continue
            lines.append(
                f"  {_verdict(per_stream <= KIB_PER_STREAM_TARGET)} {name:<12} {streams:>6}"
                f" idle streams: {per_stream:.1f} KiB each (<= {KIB_PER_STREAM_TARGET:.0f})"
                f"{_note(streams)}"
            )
    return lines


def _redis_bus(rows: Sequence[Row], servers: Sequence[str]) -> list[str]:
    if "redis" not in servers or "router" not in servers:
        return []
    broadcast = _figures(rows, "broadcast")
    lines: list[str] = []
    for streams in sorted({streams for streams, _ in broadcast}):
        sustained = broadcast.get((streams, "sustained_per_second"), {})
        embedded, redis = sustained.get("router", math.nan), sustained.get("redis", math.nan)
        if math.isnan(embedded) or math.isnan(redis) or not embedded:
            continue
        ratio = redis / embedded
        lines.append(
            f"  {_verdict(ratio >= REDIS_BUS_TARGET)} redis        {streams:>6} streams:"
            f" {ratio:.2f}x the embedded bus's sustained broadcast (>= {REDIS_BUS_TARGET})"
            f"{_note(streams)}"
        )
    return lines


def _targeted(rows: Sequence[Row]) -> list[str]:
    posted = _figures(rows, "targeted")
    produced = _figures(rows, "targeted-kafka")
    lines: list[str] = []
    for figures, how in ((posted, "POST"), (produced, "produced to Kafka")):
        for (streams, metric), values in sorted(figures.items()):
            if metric != "server_cpu_ms_per_event":
                continue
            peer = posted.get((streams, metric), {}).get("peer", math.nan)
            for name, value in values.items():
                if name in PEERS or math.isnan(value) or math.isnan(peer) or not peer:
                    continue
                ratio = value / peer
                lines.append(
                    f"  {_verdict(ratio <= TARGETED_TARGET)} {name:<12} {streams:>6} streams,"
                    f" targeted, {how}: {ratio:.2f}x the peer's CPU per event"
                    f" ({value:.3f} against {peer:.3f} ms; <= {TARGETED_TARGET})"
                )
    return lines


def _verdict(met: bool) -> str:
    return "met   " if met else "MISSED"
