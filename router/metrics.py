"""Prometheus metrics: what an operator needs to see the router work.

Per-stream observations (connections, events sent, delivery lag, queue fill) come through the
actors' :class:`~actors.observer.StreamObserver` hooks. Counts the actors, the bus and the cache
keep anyway (events consumed and rejected, offers, resumes, errors) are read when Prometheus
scrapes, by a collector, so the hot path pays nothing for them. Every label value comes from a
bounded set: never a user id or a token.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.adapter import Failure
from actors.hub import Hub
from actors.session import CloseReason, Offer
from router.auth import AuthProblem
from router.core.events import EVENT_CLASSES
from router.core.mapping import Problem
from router.core.refusal import Limit
from router.tally import Buckets, LabelledCount

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OVERFLOW_POLICIES = {Offer.COALESCED: "coalesced", Offer.DISCONNECTED: "disconnected"}


class Metrics:
    """One router's metrics, in a registry of its own (several routers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.current_connections = Gauge(
            "sse_current_connections", "Open event streams.", registry=r
        )
        self.connection_duration = Histogram(
            "sse_connection_duration_seconds",
            "How long streams lasted, observed when they close, by why they closed.",
            ["reason"],
            buckets=(1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        for reason in CloseReason:
            self.connection_duration.labels(reason.value)
        # Observed on every write to every stream: lock-free tallies, read at scrape time.
        self.events_sent = LabelledCount(
            "sse_events_sent",
            "Events written to clients, by SSE event name.",
            "event",
            (event_class.EVENT for event_class in EVENT_CLASSES),
        )
        self.delivery_lag = Buckets(
            "sse_event_delivery_lag_seconds",
            "Time from an event's occurred_at to its write to a client (the events of one write"
            " are observed at the age of the oldest).",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue_size = Buckets(
            "sse_queue_size",
            "Events still waiting in a stream's inbox when it writes to its client.",
            (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        r.register(_TallyCollector((self.events_sent, self.delivery_lag, self.queue_size)))
        self.auth_failures = Counter(
            "sse_auth_failures",
            "Requests refused for their token, by reason.",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sse_rate_limited_connections",
            "New streams refused by a limit: streams-per-user, connects-per-user or "
            "connects-per-address.",
            ["limit"],
            registry=r,
        )
        # Every label value exists from the start, at zero: rates and alerts see a series at once.
        for limit in Limit:
            self.rate_limited.labels(limit.value)
        for problem in AuthProblem:
            self.auth_failures.labels(problem.value)

    # -- StreamObserver --------------------------------------------------------------------------

    def opened(self) -> None:
        self.current_connections.inc()

    def sent(self, events: Mapping[str, int], oldest_age: float | None, queued: int) -> None:
        self.queue_size.observe(queued)
        counts = self.events_sent.counts
        written = 0
        for name, count in events.items():
            counts[name] += count
            written += count
        if oldest_age is not None:
            # Each event of a write is observed at the oldest one's age: an upper bound, at one
            # observation per write instead of one per event.
            self.delivery_lag.observe(max(0.0, oldest_age), count=written)

    def closed(self, reason: str, seconds: float) -> None:
        self.current_connections.dec()
        self.connection_duration.labels(reason).observe(seconds)

    # -- exposition ------------------------------------------------------------------------------

    def watch(self, hub: Hub) -> None:
        """Also export what ``hub``, its bus and its cache count, read at scrape time."""
        self.registry.register(_HubCollector(hub))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TallyCollector(Collector):
    def __init__(self, tallies: Sequence[LabelledCount | Buckets]) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[Metric]:
        for tally in self.tallies:
            yield tally.family()


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        stats = hub.adapter.stats
        consumed = CounterMetricFamily("sse_events_consumed", "Records read from the bus.")
        consumed.add_metric([], stats.consumed)
        yield consumed
        rejected = CounterMetricFamily(
            "sse_events_rejected", "Records skipped, by reason.", labels=["reason"]
        )
        for reason in [*(problem.value for problem in Problem), "duplicate"]:
            rejected.add_metric([reason], stats.rejected.get(reason, 0))
        yield rejected
        reused = CounterMetricFamily(
            "sse_event_id_reused",
            "Events delivered though their producer event_id came recently with another event.",
        )
        reused.add_metric([], stats.id_reused)
        yield reused
        failures = CounterMetricFamily(
            "sse_actor_failures",
            "Unexpected failures contained to one record, one stream or one bus read, by what"
            " failed: the router logged each one and carried on.",
            labels=["failed"],
        )
        for failure in Failure:
            failures.add_metric([failure.value], stats.failures.get(failure, 0))
        yield failures
        overflow = CounterMetricFamily(
            "sse_queue_overflow",
            "Events that met a full stream inbox, by what the policy did.",
            labels=["policy"],
        )
        for offer, policy in OVERFLOW_POLICIES.items():
            overflow.add_metric([policy], stats.offers.get(offer, 0))
        overflow.add_metric(["dropped"], 0)  # this policy coalesces or disconnects, never drops
        yield overflow
        replays = CounterMetricFamily(
            "sse_replays",
            "Resumes served, by outcome (complete, truncated) and source (cache, bus).",
            labels=["outcome", "source"],
        )
        for outcome in ("complete", "truncated"):
            for source in ("cache", "bus"):
                replays.add_metric([outcome, source], hub.replays.get((outcome, source), 0))
        yield replays
        errors = CounterMetricFamily(
            "sse_backend_errors", "Failed calls to the bus or the cache.", labels=["backend"]
        )
        errors.add_metric(["bus"], hub.bus.errors)
        errors.add_metric(["cache"], hub.cache.errors)
        yield errors
        lag = GaugeMetricFamily(
            "sse_bus_consumer_lag",
            "Records the bus holds that the router has not read yet, by partition.",
            labels=["partition"],
        )
        for partition, behind in sorted(hub.bus.consumer_lag().items()):
            lag.add_metric([partition], behind)
        yield lag
        records = GaugeMetricFamily(
            "sse_consumer_queue_size", "Record batches waiting between consumer and adapter."
        )
        records.add_metric([], hub.records_waiting())
        yield records
