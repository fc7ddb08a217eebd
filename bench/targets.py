"""The goals of issue 18, judged from a ``just bench`` table: printed after it as met or missed.

- p99 delivery latency at most 250 ms at 20 broadcast events/s to 10,000 streams, with nothing
  lost (no event missing or repeated, no publish or connection failed);
- two workers sustain at least 1.7 times one worker's broadcast rate, on the same bus.

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


def judge(rows: Sequence[Row], servers: Sequence[str]) -> list[str]:
    """One line per target and server the table has figures for (the broadcast workload)."""
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
        sustained = broadcast.get((streams, "sustained_per_second"), {})
        for two, one in TWO_WORKERS.items():
            if two in servers and one in servers and sustained.get(one):
                ratio = sustained[two] / sustained[one]
                lines.append(
                    f"  {_verdict(ratio >= SCALING_TARGET)} {two:<12} {streams:>6} streams:"
                    f" {ratio:.2f}x {one}'s sustained rate (>= {SCALING_TARGET}){note}"
                )
    return lines


def _verdict(met: bool) -> str:
    return "met   " if met else "MISSED"
