"""Counters and histograms for the per-write hot path, exported when Prometheus scrapes.

prometheus-client takes a lock and looks up a labelled child on every ``inc`` and ``observe``:
when one event goes to thousands of streams that was a sixth of the router's CPU. Everything that
touches these runs on the trio thread (the sessions write, the ``/metrics`` handler reads), so
plain integers and floats do, and the exposition is the same families Prometheus expects.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily


class LabelledCount:
    """A counter with one label, whose values are added as they are first counted."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.counts: Counter[str] = Counter(dict.fromkeys(values, 0))

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        return family


class SplitCount:
    """A counter with two labels, the second of a small set known at the start (a transport):
    ``counts[second][first]``, so the per-write path adds to a plain ``Counter`` it looks up
    once."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, str],
        values: Iterable[str],
        split: Iterable[str],
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        known = tuple(values)
        self.counts: dict[str, Counter[str]] = {
            second: Counter(dict.fromkeys(known, 0)) for second in split
        }

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for second, counts in sorted(self.counts.items()):
            for value, count in sorted(counts.items()):
                family.add_metric([value, second], count)
        return family


class Buckets:
    """A histogram with fixed upper bounds (``+Inf`` is added)."""

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += count
        self.total += value * count

    def family(self) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append((_bound_label(bound), running))
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.total
        )


def _bound_label(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))
