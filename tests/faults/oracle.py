"""The fault suite's oracle: what each client should have received, and what it did.

Pure: no trio, no sockets, no clock of its own. Times are whatever the harness stamped (trio's
clock), compared only with each other, never with a bound.

The promise it checks, for every client (a browser tab, across all its connections):

- every event it may see (``router.core.permissions.admits``) that was published after its first
  stream opened arrives **exactly once**, in per-partition order, or an explicit
  ``history-truncated`` comes first;
- a truncation is **justified** only when it kept the client from a silent loss: an event it
  may see and had not received was really gone from the replay window when it resumed, or the
  whole history its cursor came from was lost (a reset: the router cannot know what that history
  held, so it must say so). A truncation when nothing owed was gone is a false alarm that costs the
  client a refetch of its state, and counts as unjustified;
- it never receives an event it may not see (a **leak**), nor one nobody published.

The permission rule is the router's own public function, not a restatement: the suite tests
delivery under faults (the routing, replay, resume and hand-over paths), and
``tests/test_permissions.py`` proves the rule itself over every combination. Applying it here,
outside the delivery path, still catches an event routed to the wrong stream or replayed past the
check. Events published before a client first connected are optional for it: they may arrive (an
event routed after the stream registered) but at most once and in order, and never if not visible.

After a truncation the client refetches its state, so the router may replay what it had before:
such a repeat is not a duplicate. Receiving is split into *segments* at each truncation, and
exactly-once holds within a segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.core.cursor import CursorError, Offset, parse_cursor, parse_identity
from router.core.permissions import Principal, StreamFilter, admits
from router.core.scope import Scope
from router.core.sse import SSEMessage

MARKER_PREFIX = "fault:"
"""Every published event carries ``fault:<key>`` in a payload text field; the key names it."""


@dataclass(frozen=True, slots=True)
class Published:
    """One event the publisher wrote, and when (the harness's clock)."""

    key: str
    event: str
    """The SSE event name it becomes, e.g. ``content.updated``: filters narrow by it."""
    scope: Scope
    sent_at: float
    """Just before the publish request (or the outbox transaction) began."""
    acked_at: float
    """Just after the router answered ``202`` (or the transaction committed)."""
    identity: str | None = None
    """Its bus identity, from the publish endpoint's ``event_ids``; ``None`` by the outbox."""
    uncertain: bool = False
    """The publish was not answered (a router killed under it): it may arrive, it is not owed."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """One event as a client received it."""

    key: str | None
    """The ``fault:`` key in its data; ``None`` for an event that carries none (nobody's)."""
    identity: str
    """The ``event_id`` in its data: its bus identity, hence its partition and offset."""


@dataclass(frozen=True, slots=True)
class Truncation:
    """An ``sse.error`` ``history-truncated``: at the start of a resume, or in the middle of a live
    stream (the router found the history under it lost)."""

    index: int
    """How many events of the connection came before it."""
    at: float
    cursor: str | None
    """The tab's ``Last-Event-ID`` when it arrived: the position the router said was lost."""


@dataclass
class Connection:
    """One HTTP stream of a client: what it sent, and what came back in order."""

    opened_at: float
    last_event_id: str | None
    status: int = 0
    replay: str | None = None
    """The ``SSE-Replay`` header."""
    delivered: list[Delivered] = field(default_factory=list)
    truncations: list[Truncation] = field(default_factory=list)

    def truncate(self, at: float | None = None, cursor: str | None = None) -> None:
        """Record a ``history-truncated`` after the events delivered so far."""
        when = self.opened_at if at is None else at
        given = self.last_event_id if cursor is None else cursor
        self.truncations.append(Truncation(len(self.delivered), when, given))

    @property
    def truncated(self) -> bool:
        return bool(self.truncations)

    errors: list[str] = field(default_factory=list)
    """The codes of every ``sse.error`` received, in order."""
    refused: bool = False
    """Refused in-band (a ``200`` whose only event is a retryable refusal): no session opened."""


@dataclass
class Client:
    name: str
    group: str
    principal: Principal
    stream_filter: StreamFilter = field(default_factory=StreamFilter)
    connections: list[Connection] = field(default_factory=list)

    @property
    def first_opened_at(self) -> float | None:
        opened = [c.opened_at for c in self.connections if c.status == 200 and not c.refused]
        return min(opened) if opened else None


class Retention(Protocol):
    """What the replay window (cache and bus together) still held at a moment."""

    def gone(self, event: Published, at: float) -> bool:
        """Whether ``event`` could no longer be replayed at ``at``."""
        ...

    def history_lost(self, epoch: str | None, at: float) -> bool:
        """Whether the whole history of ``epoch`` was lost (reset) before ``at``."""
        ...


@dataclass(frozen=True)
class KeepsEverything:
    """A bus that drops no event in the test's lifetime (Kafka; Redis Streams under MAXLEN)."""

    def gone(self, event: Published, at: float) -> bool:
        return False

    def history_lost(self, epoch: str | None, at: float) -> bool:
        return False


@dataclass
class WindowOfLast:
    """A replay window of the last ``size`` events published, with nothing behind it (the
    embedded default: the in-memory bus keeps nothing the cache dropped). ``published`` is the
    publisher's own list, read as it grows."""

    size: int
    published: Sequence[Published]

    def gone(self, event: Published, at: float) -> bool:
        index = next(i for i, e in enumerate(self.published) if e is event)
        newer = sum(1 for e in self.published[index + 1 :] if e.acked_at <= at)
        return newer >= self.size

    def history_lost(self, epoch: str | None, at: float) -> bool:
        return False


@dataclass
class LostAt:
    """Histories lost at known moments: a Redis restarted empty under ``--bus redis``, a router
    on the embedded default restarted. Every event published before a loss, and every epoch seen
    before it, is gone after it."""

    moments: list[float] = field(default_factory=list)
    epochs: dict[float, frozenset[str]] = field(default_factory=dict)

    def lose(self, at: float, epochs: Iterable[str] = ()) -> None:
        self.moments.append(at)
        self.epochs[at] = frozenset(epochs)

    def gone(self, event: Published, at: float) -> bool:
        # Only what was surely written before the loss: an event whose publish straddled it may
        # have been written after, so it counts as kept (the harness pauses publishing meanwhile).
        return any(event.acked_at < moment <= at for moment in self.moments)

    def history_lost(self, epoch: str | None, at: float) -> bool:
        return any(
            moment <= at and (epoch is None or epoch in self.epochs[moment])
            for moment in self.moments
        )


@dataclass
class Judgement:
    client: str
    group: str
    expected: int
    received: int
    lost: list[str] = field(default_factory=list)
    """Keys of owed events that never arrived and no justified truncation excuses."""
    excused: int = 0
    """Owed events that never arrived, covered by a justified truncation."""
    duplicated: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    """Keys of events the client may not see, or of events nobody published."""
    out_of_order: list[str] = field(default_factory=list)
    truncations_justified: int = 0
    truncations_unjustified: int = 0
    reconnects: int = 0
    blind_reconnects: int = 0
    """Reconnects that sent no ``Last-Event-ID``: the stream had given the tab no position."""

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.leaked
            or self.out_of_order
            or self.truncations_unjustified
        )


def may_see(client: Client, event: Published) -> bool:
    message = SSEMessage(event=event.event, data={}, scope=event.scope)
    return admits(message, client.principal, client.stream_filter)


def _place(identity: str) -> tuple[tuple[str, str | None, str], Offset] | None:
    """``((source, epoch, partition), offset)`` of an event identity; ``None`` if unreadable."""
    try:
        parsed = parse_identity(identity)
    except CursorError:
        return None
    return (parsed.source, parsed.epoch, parsed.partition), parsed.offset


def _cursor_epoch(last_event_id: str | None) -> tuple[bool, str | None]:
    """``(parsed, epoch)`` of a ``Last-Event-ID`` as sent."""
    if last_event_id is None:
        return False, None
    try:
        return True, parse_cursor(last_event_id).epoch
    except CursorError:
        return False, None


def judge(
    client: Client, published: Sequence[Published], retention: Retention = KeepsEverything()
) -> Judgement:
    """Check one client against everything published; see the module docstring for the rules."""
    by_key: Mapping[str, Published] = {event.key: event for event in published}
    start = client.first_opened_at
    visible = [event for event in published if may_see(client, event)]
    owed = {e.key for e in visible if start is not None and e.sent_at >= start and not e.uncertain}
    verdict = Judgement(
        client.name,
        client.group,
        expected=len(owed),
        received=sum(len(c.delivered) for c in client.connections),
        reconnects=max(0, len(client.connections) - 1),
        blind_reconnects=sum(1 for c in client.connections[1:] if c.last_event_id is None),
    )

    seen_ever: set[str] = set()
    segment: set[str] = set()
    last_offset: dict[tuple[str, str | None, str], Offset] = {}
    for connection in client.connections:
        marks = {t.index: t for t in connection.truncations}
        for index, item in enumerate([*connection.delivered, None]):
            if index in marks:
                if _truncation_justified(client, marks[index], visible, seen_ever, retention):
                    verdict.truncations_justified += 1
                else:
                    verdict.truncations_unjustified += 1
                segment = set()
                last_offset = {}
            if item is None:
                break
            if item.key is None or item.key not in by_key:
                verdict.leaked.append(item.key or item.identity)
                continue
            if not may_see(client, by_key[item.key]):
                verdict.leaked.append(item.key)
                continue
            if item.key in segment:
                verdict.duplicated.append(item.key)
                continue
            segment.add(item.key)
            seen_ever.add(item.key)
            place = _place(item.identity)
            if place is not None:
                partition, offset = place
                if partition in last_offset and offset <= last_offset[partition]:
                    verdict.out_of_order.append(item.key)
                last_offset[partition] = offset

    for key in sorted(owed - seen_ever, key=_natural):
        if _excused(client, by_key[key], retention):
            verdict.excused += 1
        else:
            verdict.lost.append(key)
    return verdict


def _truncation_justified(
    client: Client,
    truncation: Truncation,
    visible: Sequence[Published],
    received: set[str],
    retention: Retention,
) -> bool:
    """Whether the client was really owed something gone, or its cursor's history was lost."""
    at = truncation.at
    parsed, epoch = _cursor_epoch(truncation.cursor)
    if parsed and retention.history_lost(epoch, at):
        return True
    start = client.first_opened_at
    return start is not None and any(
        event.key not in received and start <= event.sent_at < at and retention.gone(event, at)
        for event in visible
    )


def _excused(client: Client, event: Published, retention: Retention) -> bool:
    """An owed event that never arrived is excused by a truncation after it was gone."""
    return any(
        event.sent_at < truncation.at and retention.gone(event, truncation.at)
        for connection in client.connections
        for truncation in connection.truncations
    )


def _natural(key: str) -> tuple[int, str]:
    digits = key.rsplit("-", 1)[-1]
    return (int(digits), key) if digits.isdigit() else (0, key)


# -- figures -------------------------------------------------------------------------------------


@dataclass
class Figures:
    """One line of the table: a group of clients, summed."""

    label: str
    clients: int = 0
    published: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    leaked: int = 0
    out_of_order: int = 0
    truncations_justified: int = 0
    truncations_unjustified: int = 0
    excused: int = 0
    reconnects: int = 0

    def add(self, verdict: Judgement) -> None:
        self.clients += 1
        self.expected += verdict.expected
        self.received += verdict.received
        self.lost += len(verdict.lost)
        self.duplicated += len(verdict.duplicated)
        self.leaked += len(verdict.leaked)
        self.out_of_order += len(verdict.out_of_order)
        self.truncations_justified += verdict.truncations_justified
        self.truncations_unjustified += verdict.truncations_unjustified
        self.excused += verdict.excused
        self.reconnects += verdict.reconnects


COLUMNS = (
    ("fault / group", "label", 40),
    ("clients", "clients", 7),
    ("published", "published", 9),
    ("expected", "expected", 8),
    ("received", "received", 8),
    ("lost", "lost", 4),
    ("dup", "duplicated", 3),
    ("leak", "leaked", 4),
    ("order", "out_of_order", 5),
    ("trunc ok", "truncations_justified", 8),
    ("trunc bad", "truncations_unjustified", 9),
    ("excused", "excused", 7),
    ("reconnects", "reconnects", 10),
)


def figures_by_group(label: str, verdicts: Sequence[Judgement], published: int) -> list[Figures]:
    """A line per group of clients, then their total, each labelled ``label / group``."""
    groups: dict[str, Figures] = {}
    total = Figures(f"{label} / all", published=published)
    for verdict in verdicts:
        line = groups.setdefault(verdict.group, Figures(f"{label} / {verdict.group}"))
        line.published = published
        line.add(verdict)
        total.add(verdict)
    return [*groups.values(), total] if len(groups) > 1 else [total]


def table(lines: Sequence[Figures]) -> str:
    """A Markdown table of ``lines``, fit for a terminal and for docs/reliability.md."""
    header = "| " + " | ".join(name.ljust(width) for name, _, width in COLUMNS) + " |"
    rule = "|" + "|".join("-" * (width + 2) for _, _, width in COLUMNS) + "|"
    rows = [
        "| "
        + " | ".join(str(getattr(line, attribute)).ljust(width) for _, attribute, width in COLUMNS)
        + " |"
        for line in lines
    ]
    return "\n".join([header, rule, *rows])


def describe_failures(verdicts: Sequence[Judgement], limit: int = 5) -> str:
    """What went wrong, client by client, for an assertion message."""
    parts = []
    for verdict in verdicts:
        if verdict.clean:
            continue
        found = {
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "leaked": verdict.leaked,
            "out of order": verdict.out_of_order,
        }
        said = [f"{what} {keys[:limit]}" for what, keys in found.items() if keys]
        if verdict.truncations_unjustified:
            said.append(f"{verdict.truncations_unjustified} unjustified truncation(s)")
        if verdict.blind_reconnects:
            said.append(f"{verdict.blind_reconnects} reconnect(s) without a Last-Event-ID")
        parts.append(f"{verdict.client} ({verdict.group}): " + "; ".join(said))
    return "\n".join(parts)
