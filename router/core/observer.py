"""What the router's parts report about their work, and the bounded words they report it in.

The hub, the adapter, the consumer, the sessions, the outbox relay, the front door
(``router/admission.py``) and the HTTP body writer each report to one :class:`Observer`;
``router/metrics.py`` implements it for Prometheus, and nothing here knows it exists. Tests and
embedders that want nothing pass :data:`NO_OBSERVER`. Every value a report carries comes from a
bounded set below (or a count), so each is fit for a metric label.

The hot path stays cheap: a session's offer outcomes are counted by the adapter in a plain
``Counter`` and reported once per routing step (:meth:`Observer.offered`), not once per offer.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from router.core.admission import Reason
from router.core.breaker import BreakerState
from router.core.control import ControlAction
from router.core.mapping import Problem
from router.core.overload import Level, Sample
from router.core.refusal import Limit


class CloseReason(enum.StrEnum):
    """Why a stream ended: a bounded set, fit for a metric label."""

    CLIENT = "client"
    LAGGED = "lagged"
    TOKEN_EXPIRED = "token-expired"
    SERVER_SHUTDOWN = "server-shutdown"
    ERROR = "error"
    ACCESS_CHANGED = "access-changed"
    """A grant the stream could use was revoked (see router.core.control)."""
    DISCONNECTED = "disconnected"
    """Its user or session was disconnected by a back end."""
    NO_PONG = "no-pong"
    """A WebSocket left a ping unanswered for ``--ws-pong-timeout-seconds`` (router.core.pong)."""


class Transport(enum.StrEnum):
    """What carries a stream to its client: a bounded set, fit for a metric label."""

    SSE = "sse"
    WEBSOCKET = "websocket"


class Offer(enum.StrEnum):
    """What became of an event offered to a session (a ``StrEnum``: counted on the hot path, and
    a string hashes faster than an ``Enum``)."""

    QUEUED = "queued"
    COALESCED = "coalesced"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


class Failure(enum.StrEnum):
    """What failed unexpectedly (a bug, not bad input) and was contained to itself: a bounded
    set, fit for a metric label."""

    RECORD = "record"
    """One record could not be converted or placed: skipped, its position still consumed."""
    OFFER = "offer"
    """Offering events to one session raised: that stream was ended with ``error``."""
    BUS_READ = "bus-read"
    """Reading the bus raised: the consumer backed off and read on from where it was."""


DUPLICATE = "duplicate"
"""The reason a record is rejected when its producer ``event_id`` and content came recently."""
REJECTION_REASONS: tuple[str, ...] = (*(problem.value for problem in Problem), DUPLICATE)
"""Every reason :meth:`Observer.rejected` may be given: the mapping's problems, and duplicates."""


class ReplayOutcome(enum.StrEnum):
    COMPLETE = "complete"
    TRUNCATED = "truncated"
    REFUSED = "refused"
    """Not served now (the cache could not be read): the client was told to come back."""


class ReplaySource(enum.StrEnum):
    CACHE = "cache"
    BUS = "bus"


class WriteFallback(enum.StrEnum):
    """Why a stream's body, or a WebSocket's frames, went through the server's ASGI ``send``
    instead of straight onto its socket (``router/http/direct_body.py``,
    ``router/http/direct_websocket.py``), which costs about half the broadcast throughput, or
    more for a WebSocket."""

    NOT_HYPERCORN = "not-hypercorn"
    """The ASGI send is not hypercorn's HTTP stream's (another server, or hypercorn changed)."""
    NOT_HTTP11 = "not-http11"
    """Not hypercorn's HTTP/1.1 protocol: HTTP/2 or HTTP/3."""
    NOT_CHUNKED = "not-chunked"
    """The body is not chunked: an HTTP/1.0 client, whose body ends with the connection."""
    NOT_PLAIN_TCP = "not-plain-tcp"
    """Not a plain TCP socket: TLS, or a server shape the direct writer does not know."""
    NOT_UPGRADED = "not-upgraded"
    """A WebSocket not (yet) accepted on an upgraded HTTP/1.1 connection, as hypercorn says."""


class PongWatchFallback(enum.StrEnum):
    """Why a WebSocket's pongs are not watched (``router/http/pong_watch.py``), so that a peer
    that stops answering pings is not closed ``4008`` but left to the kernel's timeout."""

    NOT_HYPERCORN = "not-hypercorn"
    """The ASGI send is not hypercorn's WebSocket stream's (another server, or hypercorn
    changed)."""
    NOT_WSPROTO = "not-wsproto"
    """hypercorn's stream holds no open wsproto connection of the shape the watch knows."""


class BacklogUnknown(enum.StrEnum):
    """Why the bytes a stream's socket has not sent yet cannot be read
    (``router/http/socket_backlog.py``): the health monitor then counts what the router holds."""

    NO_SOCKET = "no-socket"
    """The stream is not written straight to its socket (a ``WriteFallback``): none to ask."""
    UNSUPPORTED = "unsupported"
    """The platform has no ``SIOCOUTQ`` ioctl (not Linux)."""
    REFUSED = "refused"
    """The socket refused the ioctl."""


class AcceptFallback(enum.StrEnum):
    """Why the router accepts connections with hypercorn's own loop, one per scheduling round,
    instead of emptying the listening queue each turn (``router/http/accept.py``)."""

    NOT_HYPERCORN = "not-hypercorn"
    """hypercorn's server parts are not in the shape the draining loop knows (another version)."""
    NOT_PLAIN_HTTP = "not-plain-http"
    """TLS, QUIC or a request cap per worker: served as hypercorn serves them."""


class StreamObserver(Protocol):
    """What a session reports about its stream."""

    def opened(self, transport: Transport) -> None:
        """A stream started, carried by ``transport``."""

    def sent(
        self,
        events: Mapping[str, int],
        oldest_age: float | None,
        queued: int,
        transport: Transport,
    ) -> None:
        """A write to a client: how many events of each name it carried, how old the oldest of
        them was in seconds (``None`` if unknown, as for a replayed event), how many events
        were still waiting in the session's inbox, and the stream's transport."""

    def closed(self, reason: str, seconds: float, transport: Transport) -> None:
        """A stream carried by ``transport`` ended after ``seconds``, for ``reason`` (a
        CloseReason value)."""


class Observer(StreamObserver, Protocol):
    """Everything the router counts, as it happens. Every method is called on the trio thread
    and must return at once (no I/O, no checkpoint): the reporters call it mid-step."""

    def consumed(self, records: int) -> None:
        """The adapter took ``records`` more records from the bus (rejected ones included)."""

    def rejected(self, reason: str) -> None:
        """A record was skipped, for ``reason`` (one of :data:`REJECTION_REASONS`)."""

    def id_reused(self) -> None:
        """An event was delivered though its producer ``event_id`` came with another one."""

    def failed(self, failure: Failure) -> None:
        """A failure no rule foresaw was contained to one record, one stream or one bus read."""

    def lost_on_bus(self, records: int) -> None:
        """The bus had deleted ``records`` records before the router read them."""

    def offered(self, outcomes: Mapping[Offer, int]) -> None:
        """One routing step's offers to the sessions, counted by outcome (once per step)."""

    def replayed(self, outcome: ReplayOutcome, source: ReplaySource) -> None:
        """A resume was served."""

    def relay_published(self, events: int) -> None:
        """The outbox relay published ``events`` rows to the bus (and settled them)."""

    def relay_rejected(self, rows: int) -> None:
        """The outbox relay settled ``rows`` rows without publishing them: not an envelope."""

    def relay_failed(self) -> None:
        """Opening the outbox, or a relay round, failed: the relay backs off and tries again."""

    def body_fell_back(self, reason: WriteFallback) -> None:
        """A stream's body is written through the server's ASGI ``send``, for ``reason``."""

    def pong_watch_fell_back(self, reason: PongWatchFallback) -> None:
        """A WebSocket's pongs cannot be watched, for ``reason``: it is never closed ``4008``."""

    def socket_backlog_unknown(self, reason: BacklogUnknown, transport: Transport) -> None:
        """The bytes a stream's socket has not sent cannot be read, for ``reason`` (once per
        stream carried by ``transport``, the first time the health monitor asks)."""

    def accept_fell_back(self, reason: AcceptFallback) -> None:
        """The server accepts with hypercorn's loop, one connection per round (once a start)."""

    def refused_token(self, reason: Reason) -> None:
        """The front door refused a request for its token, for ``reason`` (one of
        :data:`router.core.admission.UNAUTHORIZED`)."""

    def refused_by_limit(self, limit: Limit) -> None:
        """The front door refused a new stream by ``limit`` (once, by the limit with the longest
        wait)."""

    def control_applied(
        self, action: ControlAction, streams_ended: int, streams_narrowed: int = 0
    ) -> None:
        """A control envelope was applied (read from the bus, or loaded from the control store
        at start), which ended ``streams_ended`` open streams of this instance and narrowed
        ``streams_narrowed`` others in place."""

    def control_rejected(self) -> None:
        """A control envelope read from the bus was malformed: skipped (and logged)."""

    def address_blocked(self) -> None:
        """The front door refused a request for its address (``--address-rules``)."""

    def origin_refused(self) -> None:
        """A WebSocket handshake was refused for its ``Origin`` (router.core.origin)."""

    def address_rules_loaded(self, ok: bool) -> None:
        """The address rules file was read again (on SIGHUP): ``ok``, or it could not be used,
        and the rules before it stay."""

    def breaker_changed(self, state: BreakerState) -> None:
        """The bus's publishing breaker moved to ``state``."""

    def breaker_refused(self) -> None:
        """A publish was refused at once: the bus's breaker is open (or probing)."""

    def health_measured(self, sample: Sample, pressure: float) -> None:
        """The health monitor measured ``sample``, which is ``pressure`` (1.0: at a threshold)."""

    def overload_changed(self, level: Level) -> None:
        """The overload ladder moved to ``level``."""

    def shed(self, streams: int) -> None:
        """The overload ladder ended ``streams`` of the slowest streams as lagged."""


class NoObserver:
    """Hears every report and keeps none: the default, and a base for an observer that wants a
    few of them."""

    def opened(self, transport: Transport) -> None:
        pass

    def sent(
        self,
        events: Mapping[str, int],
        oldest_age: float | None,
        queued: int,
        transport: Transport,
    ) -> None:
        pass

    def closed(self, reason: str, seconds: float, transport: Transport) -> None:
        pass

    def consumed(self, records: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def id_reused(self) -> None:
        pass

    def failed(self, failure: Failure) -> None:
        pass

    def lost_on_bus(self, records: int) -> None:
        pass

    def offered(self, outcomes: Mapping[Offer, int]) -> None:
        pass

    def replayed(self, outcome: ReplayOutcome, source: ReplaySource) -> None:
        pass

    def relay_published(self, events: int) -> None:
        pass

    def relay_rejected(self, rows: int) -> None:
        pass

    def relay_failed(self) -> None:
        pass

    def body_fell_back(self, reason: WriteFallback) -> None:
        pass

    def pong_watch_fell_back(self, reason: PongWatchFallback) -> None:
        pass

    def socket_backlog_unknown(self, reason: BacklogUnknown, transport: Transport) -> None:
        pass

    def accept_fell_back(self, reason: AcceptFallback) -> None:
        pass

    def refused_token(self, reason: Reason) -> None:
        pass

    def refused_by_limit(self, limit: Limit) -> None:
        pass

    def control_applied(
        self, action: ControlAction, streams_ended: int, streams_narrowed: int = 0
    ) -> None:
        pass

    def control_rejected(self) -> None:
        pass

    def address_blocked(self) -> None:
        pass

    def origin_refused(self) -> None:
        pass

    def address_rules_loaded(self, ok: bool) -> None:
        pass

    def breaker_changed(self, state: BreakerState) -> None:
        pass

    def breaker_refused(self) -> None:
        pass

    def health_measured(self, sample: Sample, pressure: float) -> None:
        pass

    def overload_changed(self, level: Level) -> None:
        pass

    def shed(self, streams: int) -> None:
        pass


NO_OBSERVER: Observer = NoObserver()
