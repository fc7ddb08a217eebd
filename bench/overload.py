"""`just bench --workloads overload`: one router offered well past what it can serve, and how it
degrades and recovers: admitted, refused, shed, lost.

The load: ``keepers`` streams that read everything; ``laggards`` that read nothing for the first
``stall`` seconds (their sockets fill, their inboxes back up: the write backlog); a connect storm
of ``storm`` new streams arriving during the burst; and a publisher sending high-priority
broadcasts (``System.NotificationSent``, padded to ``payload`` bytes) at ``rate`` a second for
``seconds``. Every client behaves as a browser's ``EventSource``: when its stream ends (refused as
``overloaded``, shed or cut as ``lagged``) it waits the ``retry:`` it was given and reconnects with
its ``Last-Event-ID``. At the end every client must have every event published after its first
one: what it misses is *lost*, and for high-priority events that must be 0.

A measurement, not a test: it prints figures and asserts nothing. The clients are Python (trio
and httpx) on the same machine as the router, so the offered load is modest in absolute terms; the
router runs with a small ``--session-buffer`` and short ladder periods so that it is past its
thresholds all the same.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import httpx
import trio

from router.auth import mint_token

SECRET = "benchmark-only-secret-0123456789abcdef"
STREAM_PATH = "/api/v1/events/stream"
ROUTER_OPTIONS = (
    "--session-buffer", "64", "--overload-rise-seconds", "0.5", "--overload-calm-seconds", "3",
    "--overload-loop-lag-ms", "100",
)  # fmt: skip
"""What the overload run adds to the router's command line (bench/run.py ``start_router``)."""
LAGGARD_WINDOW = 4096
"""The laggards' socket receive buffer, in bytes (the kernel doubles it)."""
PUBLISH_TICK_SECONDS = 0.05
CATCH_UP_SECONDS = 120.0
"""After the last event, how long the clients get to have it (a refused one waits up to 15 s,
and is refused again until the ladder is down to ``coalesce``); one still short of it then is
counted in ``not_caught_up``, not as lost."""


@dataclass
class OverloadLoad:
    keepers: int = 50
    laggards: int = 50
    storm: int = 100
    rate: float = 50.0
    seconds: float = 10.0
    stall: float = 5.0
    payload: int = 4096


@dataclass
class Client:
    name: str
    seen: set[int] = field(default_factory=set)
    last_id: str | None = None
    admitted: bool = False
    attempts: int = 0
    refusals: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    """Why each of its streams ended: the sse.error code, or ``closed``."""

    def behind(self, final: int | None) -> bool:
        """Still short of the last event, having had some (one that had none joined after it)."""
        return bool(self.seen) and final not in self.seen

    def missing(self, last: int) -> int:
        if not self.seen:
            return 0
        return sum(1 for seq in range(min(self.seen), last + 1) if seq not in self.seen)


@dataclass
class Run:
    port: int
    load: OverloadLoad
    published: int = -1
    """The highest sequence number published."""
    final: int | None = None
    """Set when the last event is published: clients stop once they have it."""
    levels: list[tuple[float, int]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def follow(run: Run, http: httpx.AsyncClient, client: Client, *, stall: float = 0.0) -> None:
    """One browser tab: stream, and reconnect after each end, until it has the final event."""
    headers = {
        "Authorization": f"Bearer {mint_token(SECRET, sub=client.name)}",
        "Accept": "text/event-stream",
    }
    while run.final is None or run.final not in client.seen:
        client.attempts += 1
        asked = dict(headers)
        if client.last_id is not None:
            asked["Last-Event-ID"] = client.last_id
        retry_ms = 1000
        try:
            async with http.stream("GET", STREAM_PATH, headers=asked) as response:
                if stall:
                    await trio.sleep(stall)  # reads nothing: its socket and its inbox fill
                    stall = 0.0
                retry_ms, why = await read_events(run, response, client)
        except httpx.HTTPError:
            why = "transport-error"
        client.ended[why] += 1
        if why == "overloaded":
            client.refusals += 1
        if run.final is not None and run.final in client.seen:
            return
        await trio.sleep(retry_ms / 1000)


async def read_events(run: Run, response: httpx.Response, client: Client) -> tuple[int, str]:
    """Read one stream, as an ``EventSource`` parses it (lines end with a newline)."""
    retry_ms, event, data, why = 1000, "message", "", "closed"
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode()
            if line == ": ok":
                client.admitted = True
            elif line.startswith("retry:"):
                retry_ms = int(line[6:])
            elif line.startswith("id:"):
                client.last_id = line[3:].strip()
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif not line and data:
                body = json.loads(data)
                if event == "sse.error":
                    why = body["code"]
                elif event == "system.notification-sent":
                    client.seen.add(int(body["title"].split(":")[0]))
                event, data = "message", ""
        if run.final is not None and run.final in client.seen:
            break
    return retry_ms, why


async def publish(run: Run, http: httpx.AsyncClient) -> Counter[int]:
    """Broadcast at ``rate`` for ``seconds`` (a batch every 50 ms, as a busy back end would),
    then a last event; a refused publish is sent again after its ``Retry-After``."""
    token = mint_token(SECRET, sub="bench-publisher", roles=["publisher"])
    headers = {"Authorization": f"Bearer {token}"}
    padding = "x" * run.load.payload
    statuses: Counter[int] = Counter()

    async def send(seqs: range) -> None:
        body = [
            {
                "event_type": "System.NotificationSent",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "scope": {"broadcast": True},
                "payload": {
                    "level": "info",
                    "title": f"{seq}:{time.time_ns()}",
                    "message": padding,
                },
            }
            for seq in seqs
        ]
        while True:
            answer = await http.post("/api/v1/events", json=body, headers=headers)
            statuses[answer.status_code] += 1
            if answer.status_code == 202:
                run.published = max(run.published, seqs[-1])
                return
            await trio.sleep(float(answer.headers.get("Retry-After", "1")))

    start = trio.current_time()
    seq = tick = 0
    while (elapsed := trio.current_time() - start) < run.load.seconds:
        due = int(elapsed * run.load.rate) + 1  # events that should be out by now
        if due > seq:
            await send(range(seq, due))
            seq = due
        tick += 1
        await trio.sleep_until(start + tick * PUBLISH_TICK_SECONDS)
    await send(range(seq, seq + 1))
    run.final = seq
    return statuses


async def watch_levels(
    run: Run, http: httpx.AsyncClient, started: float, clients: list[Client]
) -> None:
    """Poll the ladder's rung, and say how the run goes on stderr every few seconds."""
    polls = 0
    while True:
        text = (await http.get("/metrics")).text
        level = int(scraped(text, "sse_overload_level"))
        run.levels.append((time.monotonic() - started, level))
        polls += 1
        if polls % 12 == 0:
            print(
                f"overload: {time.monotonic() - started:5.1f} s, rung {level},"
                f" published {run.published}, admitted {sum(c.admitted for c in clients)}"
                f" of {len(clients)}, caught up"
                f" {sum(run.final in c.seen for c in clients) if run.final is not None else 0}",
                file=sys.stderr,
            )
        await trio.sleep(0.25)


def scraped(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def overload_run(port: int, load: OverloadLoad) -> dict[str, float]:
    run = Run(port, load)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(60.0, read=None)
    keepers = [Client(f"keeper-{n}") for n in range(load.keepers)]
    laggards = [Client(f"laggard-{n}") for n in range(load.laggards)]
    storm = [Client(f"storm-{n}") for n in range(load.storm)]
    started = time.monotonic()
    # The laggards' sockets take little before they stop the router's writes, as a phone's
    # on a bad network would; the others' are the system's.
    small_window = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, LAGGARD_WINDOW)]
    )
    async with (
        httpx.AsyncClient(base_url=run.base, limits=limits, timeout=timeout) as http,
        httpx.AsyncClient(base_url=run.base, transport=small_window, timeout=timeout) as slow,
        httpx.AsyncClient(base_url=run.base, timeout=30) as control,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(watch_levels, run, control, started, keepers + laggards + storm)
        async with trio.open_nursery() as clients:
            for client in keepers:
                clients.start_soon(follow, run, http, client)
            for client in laggards:
                clients.start_soon(partial(follow, run, slow, client, stall=load.stall))
            while sum(c.admitted for c in keepers) < load.keepers:
                await trio.sleep(0.1)
            await trio.sleep(1.0)  # the laggards' streams open meanwhile (they read nothing)
            publishing = trio.Event()
            statuses: Counter[int] = Counter()

            async def publish_all() -> None:
                statuses.update(await publish(run, control))
                publishing.set()

            clients.start_soon(publish_all)
            await trio.sleep(load.stall / 2)  # the storm comes while the laggards back up
            for client in storm:
                clients.start_soon(follow, run, http, client)
                await trio.sleep(load.stall / 2 / max(1, load.storm))
            with trio.move_on_after(load.seconds + 300):
                await publishing.wait()
            load_ended = time.monotonic() - started
            # Every client gets a while to catch up with the last event; one that cannot is
            # counted with what it has (its misses are lost).
            with trio.move_on_after(CATCH_UP_SECONDS):
                while any(c.behind(run.final) for c in keepers + laggards + storm):
                    await trio.sleep(0.25)
            clients.cancel_scope.cancel()
        # Recovery: the ladder back at its first rung.
        with trio.move_on_after(120):
            while not run.levels or run.levels[-1][1] != 0:
                await trio.sleep(0.25)
        await trio.sleep(0.5)  # one more poll at rung 0
        metrics = (await control.get("/metrics")).text
        nursery.cancel_scope.cancel()
    last = run.final if run.final is not None else run.published
    everyone = keepers + laggards + storm
    # Back down to normal after the load ended: the first poll at rung 0 after the last above it.
    above = [t for t, level in run.levels if level > 0]
    recovered_at = next(
        (t for t, level in run.levels if above and t > above[-1] and level == 0), math.nan
    )
    return {
        "offered_streams": len(everyone),
        "admitted_streams": sum(c.admitted for c in everyone),
        "refused_overloaded": sum(c.refusals for c in everyone),
        "clients_refused": sum(1 for c in everyone if c.refusals),
        "shed_by_ladder": scraped(metrics, "sse_streams_shed_total"),
        "lagged_by_inbox": scraped(metrics, 'sse_queue_overflow_total{policy="disconnected"}'),
        "reconnects": sum(c.attempts - 1 for c in everyone),
        "events_published": last + 1,
        "lost_high_priority": sum(c.missing(last) for c in everyone if last in c.seen),
        "not_caught_up": sum(c.behind(last) for c in everyone),
        "highest_rung": max((level for _, level in run.levels), default=0),
        "recovered_after_s": max(0.0, recovered_at - load_ended),
        "publishes_refused": sum(n for status, n in statuses.items() if status != 202),
    }


def run_overload(port: int, load: OverloadLoad | None = None) -> dict[str, float]:
    """The overload run against a router already listening on ``port``."""
    return trio.run(overload_run, port, load or OverloadLoad())
