"""The fault suite's moving parts: a population of users, a publisher, browser-like clients, and
routers in this process or in subprocesses that a test can SIGTERM and SIGKILL.

Everything here is real: HTTP streams on sockets (``tests/sse_http_client.py``), read as a browser
reads them (``tests/sse_spec_parser.py``), routers on a real bus. Randomness comes from one seeded
``random.Random`` per test, so a failing run can be repeated. Waits are for something to happen;
each is bounded and says what it waited for. Nothing measures a time.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope
from tests.e2e_helpers import PUBLISHER, SECRET, STREAM_PATH, envelope, token
from tests.faults.oracle import (
    MARKER_PREFIX,
    Client,
    Connection,
    Delivered,
    Figures,
    Judgement,
    KeepsEverything,
    Published,
    Retention,
    describe_failures,
    figures_by_group,
    judge,
    table,
)
from tests.kafka_broker import free_port
from tests.sse_http_client import open_stream
from tests.sse_spec_parser import parse_stream

ROUTER_SETTINGS: dict[str, Any] = {
    # Limits that protect a real deployment from one client would refuse the suite's reconnects;
    # the suite is about losing events, not about refusals (tests/test_e2e_stream.py has those).
    "connects_per_minute": 1_000_000,
    "max_streams_per_user": 1000,
    "heartbeat_seconds": 1.0,
    "shutdown_grace_seconds": 1.0,
    "shutdown_retry_spread_ms": 200,
}
"""Settings every router of the suite runs with, in this process or as flags of a subprocess."""

TEXT_FIELDS = ("summary", "reason", "title")
"""The payload fields that carry the ``fault:`` key, one per event type the suite publishes."""

REFUSALS = frozenset({"rate-limited", "too-many-streams", "shutting-down"})
"""``sse.error`` codes of a stream refused in-band (a 200 that opened no session)."""


STILL_ROUNDS = 120
"""Settling gives up after this many rounds of 0.1 s in which no tab received anything: what is
missing then is not on its way (the verdict names it). Longer than the longest retry delay of a
router's parts (the outbox relay's reaches 10 s, the buses' and the Redis cache's 5 s): with 4 s,
on a machine loaded enough that a restarted service came back late, a relay or a reader still
waiting out its delay could look like nothing on its way, and a test failed that would have
passed a few seconds later (seen twice, under load 5, in the outbox and Redis-restart tests)."""


def now() -> float:
    return trio.current_time()


# -- who is there --------------------------------------------------------------------------------


class Kind(Enum):
    NOVEL = "content for a novel's readers"
    NOVEL_USER = "content for one reader of a novel"
    USER = "a task status for a user"
    SESSION = "a notification for one session"
    USER_SESSION = "a notification for one of a user's sessions"
    BROADCAST = "a notification for everyone"
    NOBODY = "an event for users and novels no client has"


KIND_WEIGHTS = {
    Kind.NOVEL: 30,
    Kind.NOVEL_USER: 10,
    Kind.USER: 25,
    Kind.SESSION: 8,
    Kind.USER_SESSION: 8,
    Kind.BROADCAST: 4,
    Kind.NOBODY: 15,
}


@dataclass(frozen=True)
class TabSpec:
    """A browser tab to be: who it is, what it asks for, and how it behaves."""

    name: str
    group: str
    user: str
    novels: tuple[str, ...]
    sid: str | None
    novel_filter: tuple[str, ...] = ()
    types_filter: tuple[str, ...] = ()

    def principal(self) -> Principal:
        return Principal(self.user, frozenset(self.novels), self.sid)

    def stream_filter(self) -> StreamFilter:
        return StreamFilter(
            novel_ids=frozenset(self.novel_filter),
            session_id=None,
            event_types=frozenset(self.types_filter),
        )

    def params(self) -> list[tuple[str, str]]:
        listed = [("novel_id", novel) for novel in self.novel_filter]
        if self.types_filter:
            listed.append(("types", ",".join(self.types_filter)))
        return listed


@dataclass
class Population:
    """Busy users (novels, tasks, sessions) and quiet ones (no novel, nothing addressed to them),
    and the events a publisher writes for them, all drawn from ``rng``."""

    rng: random.Random
    busy_users: int = 6
    quiet_users: int = 3
    novels: int = 5
    padding: int = 0
    """Characters added to each event's text, to fill buffers faster."""
    tabs: list[TabSpec] = field(default_factory=list)
    sequence: int = 0
    weights: dict[Kind, int] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    """How often each kind of event is drawn; a test may change it as it goes."""

    def __post_init__(self) -> None:
        novel_ids = [f"n{k}" for k in range(self.novels)]
        for u in range(self.busy_users):
            user = f"u{u}"
            granted = tuple(sorted(self.rng.sample(novel_ids, 2)))
            for t in range(2):
                narrowed = (granted[0],) if t == 1 and self.rng.random() < 0.5 else ()
                types = ("content.updated", "task.status-changed") if u % 3 == 2 and t else ()
                self.tabs.append(
                    TabSpec(f"{user}/{t}", "busy", user, granted, f"s-{user}-{t}", narrowed, types)
                )
        for q in range(self.quiet_users):
            user = f"q{q}"
            self.tabs.append(TabSpec(f"{user}/0", "quiet", user, (), f"s-{user}-0"))

    def add_tab(self, group: str, like: TabSpec | None = None) -> TabSpec:
        """Another tab of a busy user (or of ``like``'s), in ``group``."""
        base = like or self.rng.choice([t for t in self.tabs if t.group == "busy"])
        spec = TabSpec(f"{base.user}/{group}{len(self.tabs)}", group, base.user, base.novels, None)
        self.tabs.append(spec)
        return spec

    def next_event(self) -> tuple[Published, dict[str, Any]]:
        """The next event to publish (its record without times yet) and its envelope."""
        self.sequence += 1
        key = f"e-{self.sequence}"
        text = f"{MARKER_PREFIX}{key}" + (" " + "x" * self.padding if self.padding else "")
        kind = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        busy = [t for t in self.tabs if t.group != "quiet"]
        tab = self.rng.choice(busy)
        novel = self.rng.choice(tab.novels)
        scope: dict[str, Any]
        if kind is Kind.NOVEL:
            scope = {"novel_id": novel}
        elif kind is Kind.NOVEL_USER:
            scope = {"novel_id": novel, "user_id": tab.user}
        elif kind is Kind.USER:
            scope = {"user_id": tab.user}
        elif kind is Kind.SESSION:
            scope = {"session_id": f"s-{tab.user}-{self.rng.randrange(2)}"}
        elif kind is Kind.USER_SESSION:
            scope = {"user_id": tab.user, "session_id": f"s-{tab.user}-{self.rng.randrange(2)}"}
        elif kind is Kind.BROADCAST:
            scope = {"broadcast": True}
        else:
            scope = self.rng.choice([{"user_id": "nobody"}, {"novel_id": "n-nobody"}])
        if "novel_id" in scope:
            body = envelope(
                "Content.Updated",
                scope,
                novel_id=scope["novel_id"],
                content_version=self.sequence,
                summary=text,
            )
            event = "content.updated"
        elif kind in (Kind.USER, Kind.NOBODY):
            body = envelope(
                "Task.StatusChanged",
                scope,
                task_id=f"t{self.sequence}",
                old_status="queued",
                new_status="running",
                reason=text,
            )
            event = "task.status-changed"
        else:
            body = envelope(
                "System.NotificationSent", scope, level="info", title=text, message="fault suite"
            )
            event = "system.notification-sent"
        return Published(key, event, Scope.from_json(scope), 0.0, 0.0), body


def key_of(data: dict[str, Any]) -> str | None:
    for name in TEXT_FIELDS:
        text = data.get(name)
        if isinstance(text, str) and text.startswith(MARKER_PREFIX):
            return text.removeprefix(MARKER_PREFIX).split(" ", 1)[0]
    return None


# -- the publisher -------------------------------------------------------------------------------


@dataclass
class Publisher:
    """Publishes the population's events through ``POST /api/v1/events`` of a router."""

    population: Population
    url: Callable[[], str]
    published: list[Published] = field(default_factory=list)
    failed_batches: int = 0

    async def publish(self, count: int, batch: int = 10, pause: float = 0.0) -> None:
        """``count`` events in batches of ``batch``, with ``pause`` seconds between batches."""
        async with httpx.AsyncClient(timeout=10) as client:
            left = count
            while left > 0:
                size = min(batch, left)
                left -= size
                await self._one_batch(client, size)
                await trio.sleep(pause)

    async def _one_batch(self, client: httpx.AsyncClient, size: int) -> None:
        drawn = [self.population.next_event() for _ in range(size)]
        sent_at = now()
        try:
            response = await client.post(
                f"{self.url()}/api/v1/events", json=[body for _, body in drawn], headers=PUBLISHER
            )
        except httpx.HTTPError:
            response = None
        acked_at = now()
        if response is not None and response.status_code == 202:
            identities: list[str | None] = list(response.json()["event_ids"])
            uncertain = False
        else:
            # Not answered: maybe published, maybe not. Recorded as may-arrive, never owed.
            self.failed_batches += 1
            identities, uncertain = [None] * size, True
        for (record, _), identity in zip(drawn, identities, strict=True):
            self.published.append(
                Published(
                    record.key,
                    record.event,
                    record.scope,
                    sent_at,
                    acked_at,
                    identity,
                    uncertain=uncertain,
                )
            )


# -- clients -------------------------------------------------------------------------------------


class Frontend:
    """What a load balancer does for the tabs: the addresses of the routers that are up."""

    def __init__(self, rng: random.Random, *urls: str) -> None:
        self.rng = rng
        self.urls = list(urls)
        self._open = trio.Event()
        self._open.set()

    def hold(self) -> None:
        """Hold new connections (open streams go on) until :meth:`release`."""
        if self._open.is_set():
            self._open = trio.Event()

    def release(self) -> None:
        self._open.set()

    async def admitted(self) -> None:
        await self._open.wait()

    def pick(self) -> str | None:
        return self.rng.choice(self.urls) if self.urls else None


class DropMode(Enum):
    BEFORE_FIRST_EVENT = "before-first-event"
    AFTER_EVENTS = "after-events"
    AFTER_A_WHILE = "after-a-while"


RESUMING_DROPS = (DropMode.AFTER_EVENTS, DropMode.AFTER_A_WHILE)
"""Drops after the stream gave a position: for tests of another fault than the first bytes'."""


@dataclass
class Behaviour:
    """How a tab treats its streams. Every choice is drawn from the tab's own seeded ``rng``."""

    drops: bool = False
    """Drop the stream at random moments: before its first event, after a few events (mid-replay
    when it resumed behind), or after a random while."""
    away_seconds: float = 0.05
    """Longest wait before reconnecting (drawn from 0 to this)."""
    read_pause_seconds: float = 0.0
    """A slow reader: this long between reads."""
    stall_seconds: float = 0.0
    """A client that reads nothing for this long after each stream opens."""
    reads_again: trio.Event | None = None
    """A client that never reads: after its first stream's first bytes it reads nothing more
    until this is set (the test's end), its socket buffers filling meanwhile."""
    drop_modes: tuple[DropMode, ...] = ()
    """The drops to draw from; all of them when empty."""


@dataclass
class Tab:
    """A browser tab: one ``EventSource`` that reconnects with the last ``id:`` it saw (id-only
    blocks included), possibly dropping its streams on purpose."""

    spec: TabSpec
    behaviour: Behaviour
    rng: random.Random
    record: Client = field(init=False)
    last_event_id: str | None = None
    connected: trio.Event = field(default_factory=trio.Event)
    drops: dict[DropMode, int] = field(default_factory=dict)
    _stream_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _drop_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _calm: bool = False

    @property
    def calm(self) -> bool:
        """While set, the tab drops nothing on purpose and stays connected (settling, or a test
        that wants no resume at some moment); a timed drop already planned is called off."""
        return self._calm

    @calm.setter
    def calm(self, value: bool) -> None:
        self._calm = value
        if value:
            self._drop_scope.deadline = math.inf

    def __post_init__(self) -> None:
        self.record = Client(
            self.spec.name, self.spec.group, self.spec.principal(), self.spec.stream_filter()
        )
        self.token = token(self.spec.user, novels=list(self.spec.novels), sid=self.spec.sid)

    async def run(self, frontend: Frontend) -> None:
        """Connect, read, reconnect, until cancelled."""
        while True:
            await frontend.admitted()
            url = frontend.pick()
            if url is not None:
                with (
                    trio.CancelScope() as self._stream_scope,
                    suppress(OSError, trio.BrokenResourceError, h11.RemoteProtocolError),
                ):
                    await self._one_stream(url)
            away = self.rng.uniform(0, self.behaviour.away_seconds)
            await trio.sleep(away if url is not None else 0.05)

    def cut(self) -> None:
        """Drop the current stream now (the network went away); the tab reconnects as usual."""
        self._stream_scope.cancel()

    def _drop_plan(self) -> tuple[DropMode | None, int, float]:
        if self.calm or not self.behaviour.drops or self.rng.random() < 0.3:
            return None, 0, 0.0
        mode = self.rng.choice(self.behaviour.drop_modes or list(DropMode))
        return mode, self.rng.randint(1, 25), self.rng.uniform(0.01, 0.6)

    async def _one_stream(self, url: str) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        connection = Connection(opened_at=now(), last_event_id=self.last_event_id)
        mode, after_events, after_seconds = self._drop_plan()
        async with open_stream(url, STREAM_PATH, headers, self.spec.params()) as response:
            connection.status = response.status_code
            connection.replay = response.headers.get("sse-replay")
            self.record.connections.append(connection)
            if response.status_code != 200:
                return
            timed = mode is DropMode.AFTER_A_WHILE and not self.calm
            with trio.move_on_after(after_seconds if timed else math.inf) as self._drop_scope:
                await self._read(response, connection, mode, after_events)
            if mode is not None and not self.calm:
                self.drops[mode] = self.drops.get(mode, 0) + 1

    async def _read(
        self, response: Any, connection: Connection, mode: DropMode | None, after_events: int
    ) -> None:
        pending = b""
        first = True
        async with aclosing(response.chunks()) as chunks:
            async for chunk in chunks:
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                complete, pending = pending[: cut + 2], pending[cut + 2 :]
                self._take(complete, connection)
                if first:
                    first = False
                    connection.opened_at = now()  # the session is registered: its start
                    self.connected.set()
                    before_any = not connection.delivered
                    if mode is DropMode.BEFORE_FIRST_EVENT and not self.calm and before_any:
                        return
                    if self.behaviour.stall_seconds:
                        await trio.sleep(self.behaviour.stall_seconds)
                    if self.behaviour.reads_again is not None:
                        await self.behaviour.reads_again.wait()
                enough = len(connection.delivered) >= after_events
                if mode is DropMode.AFTER_EVENTS and not self.calm and enough:
                    return
                if self.behaviour.read_pause_seconds:
                    await trio.sleep(self.behaviour.read_pause_seconds)

    def _take(self, complete: bytes, connection: Connection) -> None:
        """Read whole blocks as a browser does, and remember its ``lastEventId``.

        A probe event after the blocks reports the last event ID buffer as a browser holds it
        after them: set by any block with an ``id:``, one without data included (the spec's
        dispatch step sets ``lastEventId`` before it looks at the data)."""
        parsed = parse_stream(complete + b"data: probe\n\n").events
        *events, probe = parsed
        before = self.last_event_id
        if probe.last_event_id:
            self.last_event_id = probe.last_event_id
        for event in events:
            data = json.loads(event.data)
            if event.event == "sse.error":
                code = str(data.get("code"))
                connection.errors.append(code)
                if code == "history-truncated":
                    connection.truncate(now(), before)
                if code in REFUSALS and not connection.delivered:
                    connection.refused = True
                continue
            connection.delivered.append(Delivered(key_of(data), str(data.get("event_id"))))


# -- routers in subprocesses ---------------------------------------------------------------------


def router_flags(settings: dict[str, Any]) -> list[str]:
    """``Settings`` keyword arguments as ``serve`` flags."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if name == "redis_streams":
            for stream in value:
                flags += ["--redis-stream", stream]
        else:
            flags += [flag, str(value)]
    return flags


@dataclass(eq=False)
class RouterProcess:
    """``python -m router.cli serve`` on a port of its own, logging JSON lines to a file."""

    settings: dict[str, Any]
    port: int = field(default_factory=free_port)
    log: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="sse-router-fault-", suffix=".log")[1])
    )
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait until ``/readyz`` says it reaches its bus."""
        command = [
            sys.executable, "-m", "router.cli", "serve", "--port", str(self.port),
            *router_flags({**ROUTER_SETTINGS, **self.settings}),
        ]  # fmt: skip
        environ = {**os.environ, "SSE_ROUTER_JWT_SECRET": SECRET}
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=environ
            )
        with trio.fail_after(30):  # waiting for: the router process to answer /readyz with 200
            async with httpx.AsyncClient(timeout=2) as client:
                while True:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"the router exited at start: {self.log_tail()}")
                    with suppress(httpx.HTTPError):
                        if (await client.get(f"{self.url}/readyz")).status_code == 200:
                            return
                    await trio.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    async def wait(self, seconds: float = 20) -> int:
        """The exit code, once the process ended."""
        assert self.process is not None
        process = self.process
        with trio.fail_after(seconds):  # waiting for: the router process to exit
            while process.poll() is None:
                await trio.sleep(0.02)
        return process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def crashed(self) -> bool:
        """Whether it ended with a failure nobody asked for."""
        return self.process is not None and self.process.poll() not in (None, 0, -9, -15)


@contextmanager
def router_processes() -> Iterator[list[RouterProcess]]:
    """A list the test adds its router processes to; every one is killed on the way out."""
    started: list[RouterProcess] = []
    try:
        yield started
    finally:
        for router in started:
            router.kill()
            router.log.unlink(missing_ok=True)


# -- a run and its verdict -----------------------------------------------------------------------


@dataclass
class Run:
    """One fault test's clients, publisher and verdict."""

    label: str
    seed: int
    population: Population = field(init=False)
    tabs: list[Tab] = field(default_factory=list)
    publisher: Publisher = field(init=False)
    retention: Retention = field(default_factory=KeepsEverything)
    population_options: dict[str, Any] = field(default_factory=dict)
    moments: list[tuple[float, str]] = field(default_factory=list)
    """What the test did when (``mark``), for the timeline of a failing tab."""

    def __post_init__(self) -> None:
        self.started_at = now()
        self.rng = random.Random(self.seed)
        self.population = Population(self.rng, **self.population_options)

    def publish_through(self, url: Callable[[], str]) -> Publisher:
        self.publisher = Publisher(self.population, url)
        return self.publisher

    def mark(self, what: str) -> None:
        self.moments.append((now(), what))

    def timeline(self, tab: Tab, limit: int = 12) -> str:
        """A failing tab's streams (its last ``limit``), and the test's moments among them."""
        shown = tab.record.connections[-limit:]
        since = shown[0].opened_at if shown else self.started_at
        rows = [
            (at, f"  {at - self.started_at:7.2f}s  -- {what}")
            for at, what in self.moments
            if at >= since - 1
        ]
        for c in shown:
            sent = (c.last_event_id or "-")[:60]
            text = (
                f"  {c.opened_at - self.started_at:7.2f}s  {c.status} replay={c.replay} "
                f"sent={sent} got={len(c.delivered)} errors={c.errors}"
                + "".join(f" truncated@{t.at - self.started_at:.2f}s" for t in c.truncations)
            )
            rows.append((c.opened_at, text))
        return "\n".join(text for _, text in sorted(rows))

    def make_tabs(self, behaviour: Callable[[TabSpec], Behaviour]) -> list[Tab]:
        for spec in self.population.tabs[len(self.tabs) :]:
            self.tabs.append(Tab(spec, behaviour(spec), random.Random(self.rng.random())))
        return self.tabs

    def start(self, nursery: trio.Nursery, frontend: Frontend, tabs: Sequence[Tab] = ()) -> None:
        for tab in tabs or self.tabs:
            nursery.start_soon(tab.run, frontend)

    async def all_connected(self, tabs: Sequence[Tab] = ()) -> None:
        with trio.fail_after(30):  # waiting for: every tab's first stream to open
            for tab in tabs or self.tabs:
                await tab.connected.wait()

    def verdicts(self) -> list[Judgement]:
        return [judge(tab.record, self.publisher.published, self.retention) for tab in self.tabs]

    async def settle(self, seconds: float = 20, tabs: Sequence[Tab] = ()) -> None:
        """Stop the drops and wait until every tab has all it is owed, or until nothing more has
        arrived for a while, or the bound passes: the verdict then says what is missing."""
        watched = list(tabs or self.tabs)
        for tab in watched:
            tab.calm = True
        progress, still = -1, 0
        try:
            with trio.fail_after(seconds):  # waiting for: every tab to receive all it is owed
                while True:
                    verdicts = [
                        judge(tab.record, self.publisher.published, self.retention)
                        for tab in watched
                    ]
                    if all(not v.lost for v in verdicts):
                        return
                    received = sum(v.received for v in verdicts)
                    still = still + 1 if received == progress else 0
                    progress = received
                    if still >= STILL_ROUNDS:
                        print(f"{self.label}: nothing arrived for {STILL_ROUNDS} rounds, stopped")
                        return
                    await trio.sleep(0.1)
        except trio.TooSlowError:
            print(f"{self.label}: gave up after {seconds} s waiting for every tab's events")

    def figures(self) -> list[Figures]:
        return figures_by_group(self.label, self.verdicts(), len(self.publisher.published))

    def report(self) -> None:
        """Print the figures; fail on any loss, duplicate, leak, disorder or false truncation."""
        verdicts = self.verdicts()
        lines = figures_by_group(self.label, verdicts, len(self.publisher.published))
        print(f"\n{self.label} (seed {self.seed})\n{table(lines)}")
        drops: dict[str, int] = {}
        for tab in self.tabs:
            for mode, times in tab.drops.items():
                drops[mode.value] = drops.get(mode.value, 0) + times
        if drops:
            print("drops: " + ", ".join(f"{mode} {times}" for mode, times in sorted(drops.items())))
        failures = describe_failures(verdicts)
        failing = {v.client for v in verdicts if not v.clean}
        for tab in self.tabs[:]:
            if tab.spec.name in failing and len(failing) <= 4:
                print(f"timeline of {tab.spec.name}:\n{self.timeline(tab)}")
        assert not failures, f"{self.label}: the promise broke\n{failures}"
