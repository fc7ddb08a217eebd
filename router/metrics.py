"""Prometheus metrics: what an operator needs to see the router work.

:class:`Metrics` is the router's :class:`~router.core.observer.Observer`: the hub, the adapter, the
consumer, the sessions, the outbox relay, the front door and the HTTP body writer report to it what
they count, as it happens, and it imports none of them. Counts land in plain integers and tallies
(``router/tally.py``), turned into metric families when Prometheus scrapes; what is a level, not a
count (the bus's consumer lag, the records waiting for the adapter, the backends' errors), is read
at scrape time from what :meth:`Metrics.watch` was given. Every label value comes from a bounded
set: never a user id or a token.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.auth import AuthProblem
from router.bus.base import EventBus
from router.cache.base import ReplayCache
from router.core.admission import Reason
from router.core.breaker import BreakerState
from router.core.control import ControlAction
from router.core.events import EVENT_CLASSES
from router.core.observer import (
    REJECTION_REASONS,
    AcceptFallback,
    BacklogUnknown,
    CloseReason,
    Failure,
    Offer,
    PongWatchFallback,
    ReplayOutcome,
    ReplaySource,
    Transport,
    WriteFallback,
)
from router.core.overload import Level, Sample
from router.core.refusal import Limit
from router.core.token_cache import TokenCache
from router.tally import Buckets, LabelledCount, SplitCount

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OVERFLOW_POLICIES = {Offer.COALESCED: "coalesced", Offer.DISCONNECTED: "disconnected"}


class Metrics:
    """One router's metrics, in a registry of its own (several routers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.current_connections = Gauge(
            "sse_current_connections",
            "Open event streams, by transport.",
            ["transport"],
            registry=r,
        )
        self.streams_opened = Counter(
            "sse_streams_opened", "Event streams opened, by transport.", ["transport"], registry=r
        )
        self.connection_duration = Histogram(
            "sse_connection_duration_seconds",
            "How long streams lasted, observed when they close, by why they closed and transport.",
            ["reason", "transport"],
            buckets=(1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        for transport in Transport:
            self.current_connections.labels(transport.value)
            self.streams_opened.labels(transport.value)
            for reason in CloseReason:
                self.connection_duration.labels(reason.value, transport.value)
        # Observed on every write to every stream: lock-free tallies, read at scrape time.
        self.events_sent = SplitCount(
            "sse_events_sent",
            "Events written to clients, by SSE event name and transport.",
            ("event", "transport"),
            (event_class.EVENT for event_class in EVENT_CLASSES),
            (transport.value for transport in Transport),
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
        # Counted as the actors report it (see the Observer methods below).
        self.records_consumed = 0
        self.records_rejected = LabelledCount(
            "sse_events_rejected", "Records skipped, by reason.", "reason", REJECTION_REASONS
        )
        self.ids_reused = 0
        self.failures = LabelledCount(
            "sse_actor_failures",
            "Unexpected failures contained to one record, one stream or one bus read, by what"
            " failed: the router logged each one and carried on.",
            "failed",
            (failure.value for failure in Failure),
        )
        self.records_lost = 0
        self.offers: Tally[Offer] = Tally()
        self.replays: Tally[tuple[ReplayOutcome, ReplaySource]] = Tally()
        self.outbox_published = 0
        self.outbox_rejected = 0
        self.outbox_failures = 0
        self.controls_applied = LabelledCount(
            "sse_controls_applied",
            "Control envelopes applied (read from the bus, or loaded at start), by action.",
            "action",
            (action.value for action in ControlAction),
        )
        self.control_streams_ended = LabelledCount(
            "sse_control_streams_ended",
            "Open streams ended by a control envelope, by the control's action.",
            "action",
            (action.value for action in ControlAction),
        )
        self.control_streams_narrowed = LabelledCount(
            "sse_control_streams_narrowed",
            "Open streams a control envelope narrowed in place (a WebSocket), by the control's"
            " action.",
            "action",
            (action.value for action in ControlAction),
        )
        self.controls_rejected = 0
        self.write_fallbacks = LabelledCount(
            "sse_direct_write_fallbacks",
            "Streams whose body (or WebSocket frames) went through the server's ASGI send instead"
            " of straight onto the socket, at about half the throughput or less, by why.",
            "reason",
            (reason.value for reason in WriteFallback),
        )
        self.pong_watch_fallbacks = LabelledCount(
            "sse_ws_pong_watch_fallbacks",
            "WebSockets whose pongs the router cannot watch, so a peer that stops answering pings"
            " is never closed 4008 (left to the kernel's timeout), by why.",
            "reason",
            (reason.value for reason in PongWatchFallback),
        )
        self.accept_fallbacks = LabelledCount(
            "sse_accept_fallbacks",
            "Server starts that accept connections with hypercorn's loop, one per scheduling"
            " round, instead of emptying the listening queue each turn, by why.",
            "reason",
            (reason.value for reason in AcceptFallback),
        )
        r.register(
            _TallyCollector(
                (
                    self.accept_fallbacks,
                    self.events_sent,
                    self.delivery_lag,
                    self.queue_size,
                    self.records_rejected,
                    self.failures,
                    self.write_fallbacks,
                    self.pong_watch_fallbacks,
                    self.controls_applied,
                    self.control_streams_ended,
                    self.control_streams_narrowed,
                )
            )
        )
        r.register(_CountsCollector(self))
        self._auth_failures = Counter(
            "sse_auth_failures",
            "Requests refused for their token, by reason.",
            ["reason"],
            registry=r,
        )
        self._rate_limited = Counter(
            "sse_rate_limited_connections",
            "Requests refused by a limit, by limit: the stream caps (per instance, address,"
            " user), the connect rates (per user, address), bad tokens per address.",
            ["limit"],
            registry=r,
        )
        self._addresses_blocked = Counter(
            "sse_addresses_blocked",
            "Requests refused for their client address (--address-rules).",
            registry=r,
        )
        self._origins_refused = Counter(
            "sse_ws_origins_refused",
            "WebSocket handshakes refused for their Origin: a page of an origin neither in"
            " --cors-origins nor the router's own.",
            registry=r,
        )
        self._address_rules_loads = Counter(
            "sse_address_rules_reloads",
            "Times the address rules file was read again on SIGHUP, by outcome: ok, or failed"
            " (the rules before it stay).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "failed"):
            self._address_rules_loads.labels(outcome)
        # Every label value exists from the start, at zero: rates and alerts see a series at once.
        for limit in Limit:
            self._rate_limited.labels(limit.value)
        for problem in AuthProblem:
            self._auth_failures.labels(problem.value)
        self._add_overload_metrics()

    def _add_overload_metrics(self) -> None:
        """The health monitor's measurements, the overload ladder and the bus breaker."""
        r = self.registry
        self.loop_lag = Gauge(
            "sse_loop_lag_seconds",
            "How late the health probe last woke: the event loop's lag.",
            registry=r,
        )
        self.streams_behind = Gauge(
            "sse_streams_behind",
            "Open streams with at least half their inbox waiting, by events or by bytes (inbox,"
            " writer's hand and socket): the write backlog.",
            registry=r,
        )
        self.bytes_waiting = Gauge(
            "sse_stream_bytes_waiting",
            "Bytes waiting for the open streams, by where: in the router (inboxes and writers'"
            " hands) or on their sockets, not yet sent by the kernel.",
            ["where"],
            registry=r,
        )
        self.bytes_waiting_max = Gauge(
            "sse_stream_bytes_waiting_max",
            "The most bytes waiting for one stream (router and socket together), and on one"
            " stream's socket.",
            ["where"],
            registry=r,
        )
        self.backlog_unknown = SplitCount(
            "sse_socket_backlog_unknown",
            "Streams whose socket's unsent bytes cannot be read (the monitor counts what the"
            " router holds for them only), by why and transport.",
            ("reason", "transport"),
            (reason.value for reason in BacklogUnknown),
            (transport.value for transport in Transport),
        )
        r.register(_TallyCollector((self.backlog_unknown,)))
        for where in ("router", "socket"):  # exported at 0 before the monitor's first round
            self.bytes_waiting.labels(where)
        for where in ("stream", "socket"):
            self.bytes_waiting_max.labels(where)
        self.replays_in_flight = Gauge(
            "sse_replays_in_flight", "Resumes being read from the cache or the bus.", registry=r
        )
        self.resident_memory = Gauge(
            "sse_resident_memory_bytes",
            "The process's resident set, as the health monitor last read it.",
            registry=r,
        )
        self.overload_pressure = Gauge(
            "sse_overload_pressure",
            "The highest measurement over its threshold (1: at a threshold).",
            registry=r,
        )
        self.overload_level = Gauge(
            "sse_overload_level",
            "The overload ladder's rung: 0 normal, 1 coalesce, 2 refuse, 3 shed.",
            registry=r,
        )
        self._overload_changes = Counter(
            "sse_overload_changes",
            "Times the overload ladder moved, by the rung it moved to.",
            ["level"],
            registry=r,
        )
        self._streams_shed = Counter(
            "sse_streams_shed",
            "Streams the overload ladder ended as lagged (they resume from the cache).",
            registry=r,
        )
        self._breaker_state = Gauge(
            "sse_bus_breaker_state",
            "The bus's publishing breaker: 1 for the state it is in.",
            ["state"],
            registry=r,
        )
        self._breaker_refused = Counter(
            "sse_bus_breaker_refused",
            "Publishes refused at once (503) because the bus's breaker was open.",
            registry=r,
        )
        for level in Level:
            self._overload_changes.labels(level.label)
        for state in BreakerState:
            self._breaker_state.labels(state.value).set(state is BreakerState.CLOSED)

    # -- StreamObserver --------------------------------------------------------------------------

    def opened(self, transport: Transport) -> None:
        self.current_connections.labels(transport.value).inc()
        self.streams_opened.labels(transport.value).inc()

    def sent(
        self,
        events: Mapping[str, int],
        oldest_age: float | None,
        queued: int,
        transport: Transport,
    ) -> None:
        self.queue_size.observe(queued)
        counts = self.events_sent.counts[transport]
        written = 0
        for name, count in events.items():
            counts[name] += count
            written += count
        if oldest_age is not None:
            # Each event of a write is observed at the oldest one's age: an upper bound, at one
            # observation per write instead of one per event.
            self.delivery_lag.observe(max(0.0, oldest_age), count=written)

    def closed(self, reason: str, seconds: float, transport: Transport) -> None:
        self.current_connections.labels(transport.value).dec()
        self.connection_duration.labels(reason, transport.value).observe(seconds)

    # -- Observer: counts ------------------------------------------------------------------------

    def consumed(self, records: int) -> None:
        self.records_consumed += records

    def rejected(self, reason: str) -> None:
        self.records_rejected.counts[reason] += 1

    def id_reused(self) -> None:
        self.ids_reused += 1

    def failed(self, failure: Failure) -> None:
        self.failures.counts[failure.value] += 1

    def lost_on_bus(self, records: int) -> None:
        self.records_lost += records

    def offered(self, outcomes: Mapping[Offer, int]) -> None:
        self.offers.update(outcomes)

    def replayed(self, outcome: ReplayOutcome, source: ReplaySource) -> None:
        self.replays[outcome, source] += 1

    def relay_published(self, events: int) -> None:
        self.outbox_published += events

    def relay_rejected(self, rows: int) -> None:
        self.outbox_rejected += rows

    def relay_failed(self) -> None:
        self.outbox_failures += 1

    def body_fell_back(self, reason: WriteFallback) -> None:
        self.write_fallbacks.counts[reason.value] += 1

    def pong_watch_fell_back(self, reason: PongWatchFallback) -> None:
        self.pong_watch_fallbacks.counts[reason.value] += 1

    def socket_backlog_unknown(self, reason: BacklogUnknown, transport: Transport) -> None:
        self.backlog_unknown.counts[transport][reason.value] += 1

    def accept_fell_back(self, reason: AcceptFallback) -> None:
        self.accept_fallbacks.counts[reason.value] += 1

    def refused_token(self, reason: Reason) -> None:
        self._auth_failures.labels(reason.value).inc()

    def refused_by_limit(self, limit: Limit) -> None:
        self._rate_limited.labels(limit.value).inc()

    def control_applied(
        self, action: ControlAction, streams_ended: int, streams_narrowed: int = 0
    ) -> None:
        self.controls_applied.counts[action.value] += 1
        self.control_streams_ended.counts[action.value] += streams_ended
        self.control_streams_narrowed.counts[action.value] += streams_narrowed

    def control_rejected(self) -> None:
        self.controls_rejected += 1

    def address_blocked(self) -> None:
        self._addresses_blocked.inc()

    def origin_refused(self) -> None:
        self._origins_refused.inc()

    def address_rules_loaded(self, ok: bool) -> None:
        self._address_rules_loads.labels("ok" if ok else "failed").inc()

    # -- Observer: overload and the bus breaker ---------------------------------------------------

    def breaker_changed(self, state: BreakerState) -> None:
        for each in BreakerState:
            self._breaker_state.labels(each.value).set(each is state)

    def breaker_refused(self) -> None:
        self._breaker_refused.inc()

    def health_measured(self, sample: Sample, pressure: float) -> None:
        self.loop_lag.set(sample.loop_lag)
        self.streams_behind.set(sample.streams_behind)
        self.bytes_waiting.labels("router").set(sample.bytes_waiting - sample.socket_bytes)
        self.bytes_waiting.labels("socket").set(sample.socket_bytes)
        self.bytes_waiting_max.labels("stream").set(sample.bytes_waiting_max)
        self.bytes_waiting_max.labels("socket").set(sample.socket_bytes_max)
        self.replays_in_flight.set(sample.replays_in_flight)
        if sample.resident_bytes is not None:
            self.resident_memory.set(sample.resident_bytes)
        self.overload_pressure.set(pressure)

    def overload_changed(self, level: Level) -> None:
        self.overload_level.set(level)
        self._overload_changes.labels(level.label).inc()

    def shed(self, streams: int) -> None:
        self._streams_shed.inc(streams)

    # -- exposition ------------------------------------------------------------------------------

    def watch(self, bus: EventBus, cache: ReplayCache, records_waiting: Callable[[], int]) -> None:
        """Also export, read at scrape time, the errors of ``bus`` and ``cache``, the bus's
        consumer lag, and how many record batches wait for the adapter."""
        self.registry.register(_LevelsCollector(bus, cache, records_waiting))

    def watch_controls(self, held: Callable[[], int], store_errors: Callable[[], int]) -> None:
        """Also export, read at scrape time, how many controls this instance holds in force, and
        the control store's failed calls."""
        self.registry.register(_ControlsCollector(held, store_errors))

    def watch_token_cache(self, cache: TokenCache[Any]) -> None:
        """Also export, read at scrape time, the token cache's size, hits and misses."""
        self.registry.register(_TokenCacheCollector(cache))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TallyCollector(Collector):
    def __init__(self, tallies: Sequence[LabelledCount | SplitCount | Buckets]) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[Metric]:
        for tally in self.tallies:
            yield tally.family()


class _CountsCollector(Collector):
    """The unlabelled and two-label counts :class:`Metrics` keeps as plain numbers."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        yield _count("sse_events_consumed", "Records read from the bus.", metrics.records_consumed)
        yield _count(
            "sse_event_id_reused",
            "Events delivered though their producer event_id came recently with another event.",
            metrics.ids_reused,
        )
        yield _count(
            "sse_bus_records_lost",
            "Records the bus deleted before the router read them: every stream behind them was"
            " ended as lagged.",
            metrics.records_lost,
        )
        overflow = CounterMetricFamily(
            "sse_queue_overflow",
            "Events that met a full stream inbox, by what the policy did.",
            labels=["policy"],
        )
        for offer, policy in OVERFLOW_POLICIES.items():
            overflow.add_metric([policy], metrics.offers.get(offer, 0))
        overflow.add_metric(["dropped"], 0)  # this policy coalesces or disconnects, never drops
        yield overflow
        replays = CounterMetricFamily(
            "sse_replays",
            "Resumes served, by outcome (complete, truncated) and source (cache, bus).",
            labels=["outcome", "source"],
        )
        for outcome in ReplayOutcome:
            for source in ReplaySource:
                count = metrics.replays.get((outcome, source), 0)
                replays.add_metric([outcome.value, source.value], count)
        yield replays
        yield _count(
            "sse_outbox_published",
            "Outbox rows the relay published to the bus.",
            metrics.outbox_published,
        )
        yield _count(
            "sse_outbox_rejected",
            "Outbox rows the relay settled without publishing them: not a valid envelope.",
            metrics.outbox_rejected,
        )
        yield _count(
            "sse_outbox_failures",
            "Times opening the outbox or a relay round failed: the relay backed off and retried.",
            metrics.outbox_failures,
        )
        yield _count(
            "sse_controls_rejected",
            "Control envelopes read from the bus that were malformed: skipped and logged.",
            metrics.controls_rejected,
        )


class _ControlsCollector(Collector):
    def __init__(self, held: Callable[[], int], store_errors: Callable[[], int]) -> None:
        self.held, self.store_errors = held, store_errors

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "sse_controls_held",
            "Controls (revocations and disconnects) this instance holds in force: each until"
            " every token it concerns has expired.",
        )
        held.add_metric([], self.held())
        yield held
        yield _count(
            "sse_control_store_errors",
            "Failed reads and writes of the control store (Redis with --cache redis).",
            self.store_errors(),
        )


class _TokenCacheCollector(Collector):
    def __init__(self, cache: TokenCache[Any]) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "sse_token_cache_size",
            "Verified tokens remembered until they expire (--token-cache-size).",
        )
        size.add_metric([], len(self.cache))
        yield size
        lookups = CounterMetricFamily(
            "sse_token_cache_lookups",
            "Tokens looked up in the cache of verified tokens: a hit skips the signature check,"
            " never the controls.",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self.cache.hits)
        lookups.add_metric(["miss"], self.cache.misses)
        yield lookups


def _count(name: str, documentation: str, value: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class _LevelsCollector(Collector):
    def __init__(
        self, bus: EventBus, cache: ReplayCache, records_waiting: Callable[[], int]
    ) -> None:
        self.bus, self.cache, self.records_waiting = bus, cache, records_waiting

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "sse_backend_errors", "Failed calls to the bus or the cache.", labels=["backend"]
        )
        errors.add_metric(["bus"], self.bus.errors)
        errors.add_metric(["cache"], self.cache.errors)
        yield errors
        lag = GaugeMetricFamily(
            "sse_bus_consumer_lag",
            "Records the bus holds that the router has not read yet, by partition.",
            labels=["partition"],
        )
        for partition, behind in sorted(self.bus.consumer_lag().items()):
            lag.add_metric([partition], behind)
        yield lag
        records = GaugeMetricFamily(
            "sse_consumer_queue_size", "Record batches waiting between consumer and adapter."
        )
        records.add_metric([], self.records_waiting())
        yield records
