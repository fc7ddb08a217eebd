"""The goals of issue 18, judged from a ``just bench`` table: printed after it as met or missed.

- p99 delivery latency at most 250 ms at 20 broadcast events/s to 10,000 streams, with nothing
  lost (no event missing or repeated, no publish or connection failed);
- two workers sustain at least 1.7 times one worker's rate, on the same bus: judged on the
  throughput workload (published as fast as the server takes it) when the run has it, else on
  the broadcast, but only when one worker fell short of the rate asked (a rate both keep says
  nothing of how far either could go).

A run at other stream counts is judged the same way and says so: the goals are set at 10,000.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

P99_TARGET_MS = 250.0
SCALING_TARGET = 1.7
TARGET_STREAMS = 10_000
TWO_WORKERS = {"redis-2w": "redis", "kafka-2w": "kafka+redis"}
"""Each two-worker server and the one-worker server on the same bus it is compared with."""

Row = tuple[str, int, str, Mapping[str, float]]


KEPT_THE_RATE = 0.95
"""A server that sustained this share of the broadcast rate asked kept it."""


def judge(rows: Sequence[Row], servers: Sequence[str], rate: float) -> list[str]:
    """One line per target and server the table has figures for; ``rate``: the broadcast
    events a second each stream was asked to take."""
    lines = _latency(rows, servers)
    for workload in ("throughput", "broadcast"):
        scaling = _scaling(rows, servers, workload, rate)
        if scaling:
            return lines + scaling
    return lines


def _latency(rows: Sequence[Row], servers: Sequence[str]) -> list[str]:
    broadcast: dict[tuple[int, str], Mapping[str, float]] = {
        (streams, metric): values for workload, streams, metric, values in rows
        if workload == "broadcast"
    }  # fmt: skip
    lines: list[str] = []
    for streams in sorted({streams for streams, _ in broadcast}):
        note = "" if streams == TARGET_STREAMS else f" (the goal is at {TARGET_STREAMS:,})"
        p99 = broadcast.get((streams, "p99_ms"), {})
        for name in servers:
            if math.isnan(p99.get(name, math.nan)):
                continue
            lost = sum(
                broadcast.get((streams, metric), {}).get(name, 0)
                for metric in ("missing", "duplicates", "failed_connections", "failed_publishes")
            )
            met = p99[name] <= P99_TARGET_MS and lost == 0
            lines.append(
                f"  {_verdict(met)} {name:<12} {streams:>6} streams: p99 {p99[name]:,.0f} ms"
                f" (<= {P99_TARGET_MS:.0f}), {lost:,.0f} lost or failed (0){note}"
            )
    return lines


def _scaling(rows: Sequence[Row], servers: Sequence[str], workload: str, rate: float) -> list[str]:
    sustained = {
        streams: values for name, streams, metric, values in rows
        if name == workload and metric == "sustained_per_second"
    }  # fmt: skip
    lines: list[str] = []
    for streams, values in sorted(sustained.items()):
        note = "" if streams == TARGET_STREAMS else f" (the goal is at {TARGET_STREAMS:,})"
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
            lines.append(
                f"  {_verdict(ratio >= SCALING_TARGET)} {where} {ratio:.2f}x {one}'s sustained"
                f" rate (>= {SCALING_TARGET}){note}"
            )
    return lines


def _verdict(met: bool) -> str:
    return "met   " if met else "MISSED"
