"""bench/targets.py: how a ``just bench`` table is judged against issue 18's goals."""

from __future__ import annotations

import math

from bench.targets import judge


def broadcast_rows(streams: int, p99: dict[str, float], sustained: dict[str, float]) -> list:
    zero = dict.fromkeys(p99, 0.0)
    return [
        ("broadcast", streams, "p99_ms", p99),
        ("broadcast", streams, "sustained_per_second", sustained),
        *(("broadcast", streams, metric, zero) for metric in ("missing", "duplicates")),
    ]


def test_p99_and_losses_are_judged_per_server_and_the_scale_says_where_the_goal_is() -> None:
    rows = broadcast_rows(1000, {"redis": 120.0, "peer": 400.0}, {"redis": 1.0, "peer": 1.0})
    rows.append(("broadcast", 1000, "failed_publishes", {"redis": 2.0, "peer": 0.0}))
    lines = judge(rows, ["redis", "peer"], rate=20.0)
    assert lines[0].split()[:2] == ["MISSED", "redis"]  # fast, but two publishes failed
    assert lines[1].split()[:2] == ["MISSED", "peer"]
    assert all("the goal is at 10,000" in line for line in lines)


def test_two_workers_are_judged_only_against_a_rate_one_worker_did_not_keep() -> None:
    p99 = {"redis": 100.0, "redis-2w": 90.0}
    kept = broadcast_rows(10_000, p99, {"redis": 199_000.0, "redis-2w": 200_000.0})
    verdicts = judge(kept, ["redis", "redis-2w"], rate=20.0)
    assert any(line.startswith("  n/a") and "redis-2w" in line for line in verdicts)

    short = broadcast_rows(20_000, p99, {"redis": 200_000.0, "redis-2w": 360_000.0})
    (scaling,) = [v for v in judge(short, ["redis", "redis-2w"], rate=20.0) if "1.80x" in v]
    assert scaling.startswith("  met")


def test_throughput_is_preferred_for_scaling_and_a_server_not_run_is_left_out() -> None:
    rows = broadcast_rows(1000, {"redis": 10.0, "redis-2w": 10.0, "nchan": math.nan}, {})
    rows.append(("throughput", 1000, "sustained_per_second", {"redis": 100.0, "redis-2w": 150.0}))
    verdicts = judge(rows, ["redis", "redis-2w", "nchan"], rate=20.0)
    assert not any("nchan" in line for line in verdicts)
    (scaling,) = [line for line in verdicts if "throughput" in line]
    assert scaling.startswith("  MISSED")
    assert "1.50x" in scaling
