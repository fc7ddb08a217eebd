"""`just bench`: the router and a peer (sse-starlette on uvicorn), side by side, same workloads.

Benchmarks are measurements, not tests: this prints a table and asserts nothing. The load client
is C (bench/sseclient.c, built here with the system compiler) so that it is not the bottleneck;
its own CPU time is reported next to the servers'. It speaks SSE, or WebSocket for the
``ws-broadcast`` workload (the broadcast, each stream a WebSocket of JSON frames).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from bench.stage_profile import PASSES, PLACES, STEPS, TASKS
from bench.targets import judge, judge_storm

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / ".build"
ROUTER_COMMAND = [sys.executable, "-m", "router.cli"]
"""How the harness starts the router (a profiling wrapper may stand in)."""
PROFILED_COMMAND = [sys.executable, "-m", "bench.stage_profile"]
"""How it starts a router whose CPU is profiled by stage (``--profile-stages``)."""
profile_stages = False
"""``--profile-stages``: every single-process router runs under bench/stage_profile.py."""
SECRET = "benchmark-only-secret-0123456789abcdef"
MAX_SEQ = 65536
"""The C client counts sequence numbers below this (bench/sseclient.c)."""


def build_client() -> Path:
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "sseclient"
    source = ROOT / "bench" / "sseclient.c"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


LISTEN_BACKLOG = 65535
KERNEL_DEFAULTS = {"net/core/somaxconn": 4096, "net/ipv4/tcp_max_syn_backlog": 2048}
"""Linux's own listen backlog settings, as on a machine nobody tuned: somaxconn 4,096 (since 5.4)
and tcp_max_syn_backlog as the kernel sizes it here (its established-connection hash table's
entries / 128: 262,144 / 128). Issue 18: a connect storm is measured with these too."""
BACKLOGS = {"default": KERNEL_DEFAULTS, "raised": dict.fromkeys(KERNEL_DEFAULTS, LISTEN_BACKLOG)}
"""The two kernel settings the idle workload opens its streams under."""


def read_backlog_settings() -> dict[str, int]:
    return {name: int((Path("/proc/sys") / name).read_text()) for name in KERNEL_DEFAULTS}


def write_backlog_settings(values: dict[str, int]) -> bool:
    """Set the kernel's listen backlog settings (root only); whether it could."""
    try:
        for name, value in values.items():
            (Path("/proc/sys") / name).write_text(str(value))
    except OSError as error:
        print(f"bench: the listen backlog settings stay as they are: {error}", file=sys.stderr)
        return False
    return True


def raise_listen_backlog() -> None:
    """Let both servers queue a whole connection storm (the kernel caps every listen backlog at
    net.core.somaxconn; at 4,096, 10,000 clients connecting at once can overflow it and wait out
    TCP's retransmission backoff). Needs root; otherwise says what the run is limited to."""
    write_backlog_settings(BACKLOGS["raised"])


@contextmanager
def kernel_backlog(values: dict[str, int]) -> Iterator[None]:
    """``values`` in force within, the settings before restored after. The kernel caps a
    socket's backlog when it starts listening, so only a server started within is held to them;
    others on the machine that listen meanwhile are too, which is why this lasts no longer than
    a server's start."""
    before = read_backlog_settings()
    write_backlog_settings(values)
    try:
        yield
    finally:
        write_backlog_settings(before)


def dropped_handshakes() -> int:
    """The kernel's count of connections dropped because a listen queue was full (this network
    namespace's, so anything else listening here adds to it)."""
    with open("/proc/net/netstat") as netstat:
        names, values = [line.split() for line in netstat if line.startswith("TcpExt:")][:2]
    return int(values[names.index("ListenOverflows")])


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


PublishStyle = Literal["batch", "one-per-request"]
"""How a server takes events: a JSON array of events per POST (the router, the Python peer), or
one message per POST, its body the message (nchan), to ``?user=`` for one user's channel."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    stream_path: str
    auth_header: str
    publish_path: str
    ws_path: str
    publisher_token: str = ""
    kafka: tuple[str, str] | None = None
    """The broker's bootstrap address and the topic the router reads, when it reads Kafka: the
    ``targeted-kafka`` workload produces there directly, as a back end would."""
    publishes: PublishStyle = "batch"
    resources: ExitStack = field(default_factory=ExitStack)
    """What the server needs besides its process (a broker, Redis keys), released on stop."""
    metrics_ports: list[int] = field(default_factory=list)
    """Where each of its routers serves ``/metrics`` (each worker of ``--workers`` on its own
    port); empty: ``port``."""
    stage_report: Path | None = None
    """Where bench/stage_profile.py writes the CPU of each stage on SIGUSR1, if it runs."""

    def profile_stages(self, *, reset: bool) -> dict[str, float] | None:
        """The milliseconds of CPU of each stage since the last call (``None``: not profiled);
        ``reset``: only start counting from now."""
        if self.stage_report is None:
            return None
        self.stage_report.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        for _ in range(200):
            if self.stage_report.exists():
                stages: dict[str, float] = json.loads(self.stage_report.read_text())
                return None if reset else stages
            time.sleep(0.05)
        return None

    def pids(self) -> list[int]:
        """The server's process and its descendants (the workers of ``--workers``), by every
        process's parent in ``/proc``: the supervisor starts its workers from one of trio's
        threads, and a thread's ``children`` file lists only the children it started."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError, IndexError, ValueError):
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(stat.parent.name))
        found, waiting = [], [self.process.pid]
        while waiting:
            pid = waiting.pop()
            found.append(pid)
            waiting += children.get(pid, [])
        return found

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        with self.resources:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def wait_listening(port: int) -> None:
    import socket

    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def start_router(name: str = "router", options: Sequence[str] = ()) -> Server:
    """The router on its embedded default, or with ``options`` (another bus and cache, or a
    workload's own settings)."""
    from router.auth import mint_token

    port = free_port()
    command = [
        *ROUTER_COMMAND, "serve", "--port", str(port),
        "--log-level", "warning", "--max-streams-per-user", "1000000",
        "--max-streams", "1000000", "--max-streams-per-address", "1000000",
        "--connects-per-minute", "1000000", "--session-buffer", "1024", *options,
    ]  # fmt: skip
    report = None
    if profile_stages and "--workers" not in options:
        report = BUILD / f"stages-{port}.json"
        command[: len(ROUTER_COMMAND)] = [*PROFILED_COMMAND, str(report)]
    environ = {**os.environ, "SSE_ROUTER_JWT_SECRET": SECRET}
    process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL)
    wait_listening(port)
    reader = mint_token(SECRET, sub="bench-reader", ttl_seconds=3600)
    publisher = mint_token(SECRET, sub="bench-publisher", roles=["publisher"], ttl_seconds=3600)
    return Server(
        name, process, port, "/api/v1/events/stream", f"Authorization: Bearer {reader}",
        "/api/v1/events", "/api/v1/events/ws", publisher, stage_report=report,
    )  # fmt: skip


def free_port_pair() -> int:
    """A port whose next one is free too (for ``--worker-ports`` of two workers). Looked for
    below the kernel's ephemeral range: after a storm its ports are held by thousands of
    connections in TIME_WAIT, and a port picked there rarely has a free neighbour."""
    import random
    import socket

    for _ in range(200):
        first = random.randrange(20_000, 30_000)
        with ExitStack() as probes:
            try:
                for port in (first, first + 1):
                    probe = probes.enter_context(socket.socket())
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError("no two free ports in a row")


def worker_options(workers: int) -> tuple[list[str], list[int]]:
    """The options that run the router as ``workers`` processes, each serving ``/metrics`` on
    a port of its own, and those ports (none for one worker: it serves them on its own port)."""
    if workers == 1:
        return [], []
    first = free_port_pair() if workers == 2 else free_port()
    return (
        ["--workers", str(workers), "--worker-ports", str(first)],
        [first + index for index in range(workers)],
    )


def ready(server: Server, metrics_ports: Sequence[int]) -> Server:
    """``server`` once each worker's metrics port listens and it routes what is published;
    stopped if it does not get there."""
    try:
        for port in metrics_ports:
            wait_listening(port)
        wait_routing(server)
    except BaseException:
        server.stop()
        raise
    return server


def start_router_on_redis(workers: int = 1, extra: Sequence[str] = ()) -> Server:
    """The router on the Redis bus (one stream) and the Redis cache (``REDIS_URL``, else the
    local server, under a new key prefix deleted afterwards), as ``workers`` worker processes.
    It is returned once every worker routes what is published."""
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{secrets.token_hex(4)}"
    options = [
        "--bus", "redis", "--redis-stream", prefix, "--cache", "redis",
        "--redis-url", redis_url, "--redis-key-prefix", prefix, *extra,
    ]  # fmt: skip
    worker_flags, metrics_ports = worker_options(workers)
    server = start_router("redis" if workers == 1 else f"redis-{workers}w", options + worker_flags)
    server.metrics_ports = metrics_ports
    server.resources.callback(delete_keys, redis_url, prefix)
    return ready(server, metrics_ports)


def start_router_on_kafka_and_redis(workers: int = 1, extra: Sequence[str] = ()) -> Server:
    """The router reading Kafka (a tansu broker started here, a new topic of 3 partitions) and
    keeping its replay cache in Redis (``REDIS_URL``, else the local server, under a new key
    prefix whose keys are deleted afterwards), as ``workers`` worker processes. It is returned
    once every worker routes what is published."""
    import trio

    from tests.kafka_broker import create_topic, running_broker

    resources = ExitStack()
    with resources:  # released here if the router does not start, else when it stops
        broker = resources.enter_context(running_broker())
        topic = f"bench-{secrets.token_hex(4)}"
        trio.run(create_topic, broker.bootstrap, topic, 3)
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        prefix = f"bench-{secrets.token_hex(4)}"
        resources.callback(delete_keys, redis_url, prefix)
        options = [
            "--bus", "kafka", "--kafka-bootstrap", broker.bootstrap, "--kafka-topic", topic,
            "--cache", "redis", "--redis-url", redis_url, "--redis-key-prefix", prefix, *extra,
        ]  # fmt: skip
        worker_flags, metrics_ports = worker_options(workers)
        name = "kafka+redis" if workers == 1 else f"kafka-{workers}w"
        server = start_router(name, options + worker_flags)
        server.metrics_ports = metrics_ports
        server.kafka = (broker.bootstrap, topic)
        server.resources.push(resources.pop_all())
    return ready(server, metrics_ports)


def delete_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def wait_routing(server: Server) -> None:
    """Publish one event nobody reads and wait until the router has consumed it: from then on
    its consumer is reading the bus, so no workload event goes by before it starts."""
    publish(server, MAX_SEQ)  # beyond the client's sequence numbers: never counted
    for port in server.metrics_ports or [server.port]:
        for _ in range(600):
            if consumed(port) >= 1:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{server.name} did not consume the event published to start it")


def consumed(port: int) -> float:
    metrics = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
    finally:
        metrics.close()
    for line in text.splitlines():
        if line.startswith("sse_events_consumed_total "):
            return float(line.split()[1])
    return 0.0


def start_peer() -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench.peer:app", "--port", str(port),
        "--loop", "uvloop", "--log-level", "warning", "--no-access-log",
        "--backlog", str(LISTEN_BACKLOG),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_listening(port)
    return Server("peer", process, port, "/stream", "", "/publish", "/ws")


NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")


def ensure_nchan() -> None:
    """Install nginx's nchan module (Debian's ``libnginx-mod-nchan``) when it is missing and
    this runs as root with apt, as ``just system-deps`` does for nginx; else say why not."""
    if NCHAN_MODULE.exists() and shutil.which("nginx"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("nchan: install libnginx-mod-nchan (or leave nchan out of --servers)")
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environ)
    install = ["apt-get", "install", "-y", "-qq", "libnginx-mod-nchan"]
    subprocess.run(install, check=True, env=environ, stdout=subprocess.DEVNULL)


def start_nchan() -> Server:
    """nginx with nchan (``bench/nchan.conf``, one worker per core) in a directory of its own,
    removed when it stops. Its events are the router's event objects, one per message."""
    ensure_nchan()
    resources = ExitStack()
    with resources:  # released here if nginx does not start, else when it stops
        prefix = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="bench-nchan-")))
        prefix.chmod(0o755)  # nginx's workers run as nobody
        port = free_port()
        config = (ROOT / "bench" / "nchan.conf").read_text()
        config = config.replace("@PORT@", str(port)).replace("@PREFIX@", str(prefix))
        (prefix / "nginx.conf").write_text(config)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_listening(port)
        except BaseException:
            process.kill()
            raise
        server = Server("nchan", process, port, "/stream", "", "/publish", "", "",
                        publishes="one-per-request")  # fmt: skip
        server.resources.push(resources.pop_all())
    return server


_publisher_connections = threading.local()


def envelopes(seq: int, count: int, users: list[str] | None = None) -> list[dict[str, object]]:
    """Events ``seq`` .. ``seq + count - 1``, each stamped now: to everyone, or each to one of
    ``users``."""
    return [
        {
            "event_type": "System.NotificationSent",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scope": {"user_id": users[n]} if users else {"broadcast": True},
            "payload": {"level": "info", "title": f"{n}:{time.time_ns()}", "message": "benchmark"},
        }
        for n in range(seq, seq + count)
    ]


def publish(server: Server, seq: int, count: int = 1, users: list[str] | None = None) -> None:
    """Publish :func:`envelopes` in one request (one request each to a server that takes one
    message per request)."""
    events = envelopes(seq, count, users)
    if server.publishes == "batch":
        send_publish(server, server.publish_path, json.dumps(events).encode())
        return
    for n, event in enumerate(events, start=seq):
        query = f"?user={users[n]}" if users else ""
        send_publish(server, server.publish_path + query, json.dumps(event).encode())


PUBLISH_TIMEOUT_SECONDS = 30.0
"""How long a publish may go unanswered before it counts as failed."""


def send_publish(server: Server, path: str, body: bytes) -> None:
    """POST ``body`` to ``path`` on this thread's kept-alive connection to ``server``."""
    headers = {"Content-Type": "application/json"}
    if server.publisher_token:
        headers["Authorization"] = f"Bearer {server.publisher_token}"
    # One kept-alive connection per publishing thread, as a back end's HTTP client pool would.
    connection = getattr(_publisher_connections, "connection", None)
    if connection is None or connection.port != server.port:
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.port, timeout=PUBLISH_TIMEOUT_SECONDS
        )
        _publisher_connections.connection = connection
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        connection.close()
        _publisher_connections.connection = None
        raise
    if response.status >= 300:
        raise OSError(f"publish answered {response.status}")


Transport = Literal["sse", "websocket"]


def run_client(
    client: Path, server: Server, connections: int, expected: int, timeout: float,
    on_open: Callable[[], None] | None = None, transport: Transport = "sse",
    resume_from: str | None = None, open_timeout: float = 180.0,
) -> dict[str, float]:  # fmt: skip
    """The load client's figures; ``on_open`` is called (on this thread) once every stream is
    open or failed (or ``open_timeout`` passed); with ``resume_from``, every stream sends it as
    its ``Last-Event-ID``."""
    path = server.ws_path if transport == "websocket" else server.stream_path
    command = [
        str(client), *(["--websocket"] if transport == "websocket" else []),
        *(["--last-event-id", resume_from] if resume_from is not None else []),
        "--open-timeout", str(open_timeout), "127.0.0.1",
        str(server.port), path, str(connections), str(expected), str(timeout), server.auth_header,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    if on_open is not None:
        line = process.stderr.readline()
        if line.strip() != "open":
            process.kill()
            raise RuntimeError(f"the load client did not open its streams: {line!r}")
        on_open()
    out, _ = process.communicate()
    result: dict[str, float] = json.loads(out)
    return result


def idle(client: Path, server: Server, connections: int, backlog: str = "") -> dict[str, float]:
    """``connections`` streams opened at once and held: how long they took, how many failed,
    the handshakes the kernel dropped meanwhile, the server's CPU per stream opened (its
    processes' user and system time, which a busy machine does not inflate as it does the wall
    clock) and its memory once they are open. With ``--profile-stages``, also where that CPU
    went (bench/stage_profile.py), printed on its own."""
    before = server.rss_kib()
    measured: dict[str, float] = {}
    stages: list[dict[str, float]] = []
    server.profile_stages(reset=True)
    cpu_before, dropped_before = server.cpu_seconds(), dropped_handshakes()

    def opened() -> None:
        measured["cpu_seconds"] = server.cpu_seconds() - cpu_before
        measured["dropped"] = dropped_handshakes() - dropped_before
        stages.extend(filter(None, [server.profile_stages(reset=False)]))
        time.sleep(1.0)  # let the server settle, then weigh it
        measured["rss_kib"] = server.rss_kib()

    result = run_client(client, server, connections, 0, 3.0, opened)
    rss = measured.get("rss_kib", server.rss_kib())
    for profile in stages:
        print_stages(f"{server.name} ({backlog or 'as set'} backlog)", connections, profile)
    return {
        "open_seconds": result["open_seconds"],
        "failed": result["failed"],
        "dropped_handshakes": measured.get("dropped", -1),
        "cpu_us_per_stream": 1e6 * measured.get("cpu_seconds", 0.0) / max(1, result["opened"]),
        "rss_mib": rss / 1024,
        "kib_per_stream": (rss - before) / max(1, result["opened"]),
    }


def idle_at_both_backlogs(
    client: Path, start: Callable[[Sequence[str]], Server], connections: int
) -> dict[str, float]:
    """:func:`idle` on a server started under the kernel's default listen backlog settings, then
    on one started under raised settings (issue 18: the benchmark must not raise them to hide
    an overflow): each figure twice, ``@default`` and ``@raised``."""
    figures: dict[str, float] = {}
    for label, values in BACKLOGS.items():
        with kernel_backlog(values):
            server = start(())
        try:
            for metric, value in idle(client, server, connections, label).items():
                figures[f"{metric}@{label}"] = value
            if label == "default" and server.publisher_token:  # a router: it verifies tokens
                for metric, value in idle_tokens_each(client, server, connections).items():
                    figures[f"{metric}@{label},{TOKENS_EACH}"] = value
        finally:
            server.stop()
    return figures


TOKENS_EACH = "tokens"
"""The label of the idle figures with a token of its own for every client (10,000 users), as
after a deploy: every token is new to the process and pays its signature check, which the token
cache spares the streams of one user."""


def idle_tokens_each(client: Path, server: Server, connections: int) -> dict[str, float]:
    """:func:`idle` again on the same server (its first streams closed), every client with a
    token of its own."""
    from router.auth import mint_token

    requests = BUILD / f"idle-requests-{server.name}.txt"
    requests.write_text(
        "".join(
            f"{server.stream_path}\tAuthorization: Bearer {mint_token(SECRET, sub=f'idle-{n}')}\n"
            for n in range(connections)
        )
    )
    each = replace(server, stream_path=f"@{requests}", auth_header="")
    time.sleep(2.0)  # the first run's streams are gone
    figures = idle(client, each, connections, f"default, {TOKENS_EACH}")
    # Its memory is not the idle figure's: the allocator keeps what the first run's streams held.
    return {metric: value for metric, value in figures.items() if "rss" not in metric
            and "kib" not in metric}  # fmt: skip


def print_stages(name: str, connections: int, stages: dict[str, float]) -> None:
    passes = cast(dict[str, int], stages.pop(PASSES, {}))
    stages.pop(PLACES, None)
    stages.pop(TASKS, None)
    stages.pop(STEPS, None)
    total = sum(stages.values())
    print(f"\nwhere {name}'s CPU went while {connections} streams opened (us per stream)")
    for stage, milliseconds in sorted(stages.items(), key=lambda item: -item[1]):
        share = 100 * milliseconds / max(total, 1e-9)
        print(f"  {stage:<24} {1000 * milliseconds / connections:>8.0f} {share:>6.1f}%")
    counted = ", ".join(f"{count} of generation {gen}" for gen, count in sorted(passes.items()))
    print(f"  the collector's passes meanwhile: {counted or 'none'}")


def print_places(name: str, events: int, profile: dict[str, Any], shown: int = 40) -> None:
    """Where a targeted run's CPU went (bench/stage_profile.py), in us per event: by the task it
    ran for (the outermost frame of the router's own code), then by task and the router's code
    that ran or called what ran, then with what ran. The whole report is kept beside the
    build, as ``places-<name>.json``."""
    places: dict[str, float] = profile.get(PLACES, {})
    (BUILD / f"places-{name.split()[0]}.json").write_text(json.dumps(profile, indent=1))
    total = sum(places.values())
    by_task: dict[str, float] = {}
    by_own: dict[str, float] = {}
    for place, milliseconds in places.items():
        task, own, _ = place.split(" | ")
        by_task[task] = by_task.get(task, 0.0) + milliseconds
        by_own[f"{task} | {own}"] = by_own.get(f"{task} | {own}", 0.0) + milliseconds
    tasks: dict[str, float] = profile.get(TASKS, {})
    print(
        f"\nwhere {name}'s CPU went, {events} targeted events ({1000 * total / events:.0f} us"
        f" per event sampled, {1000 * sum(tasks.values()) / events:.0f} us in the main thread)"
    )
    for title, table in (
        ("the main thread by trio task, exact", tasks),
        ("sampled, by task", by_task),
        ("by task | the router's innermost frame", by_own),
        ("by task | the router's innermost frame | what ran", places),
    ):
        print(f"  {title} (us per event, share{', steps per event' if table is tasks else ''})")
        for place, milliseconds in sorted(table.items(), key=lambda item: -item[1])[:shown]:
            share = 100 * milliseconds / max(total, 1e-9)
            steps = f" {profile[STEPS].get(place, 0) / events:>5.2f}" if table is tasks else ""
            print(f"    {1000 * milliseconds / events:>7.1f} {share:>5.1f}%{steps}  {place}")


def with_publisher(
    client: Path,
    server: Server,
    connections: int,
    expected: int,
    timeout: float,
    publish_all: Callable[[], int],
    transport: Transport = "sse",
) -> dict[str, float]:
    """Open the streams, publish from a thread once all are open, and report delivery: what
    the broadcast and throughput workloads share. ``publish_all`` returns how many of its
    requests failed (refused, or unanswered within 30 s): their events count as missing."""
    cpu_before = server.cpu_seconds()
    failed: list[int] = []
    publishing: list[float] = []  # the server's CPU once every stream is open

    def publish() -> None:
        publishing.append(server.cpu_seconds())
        failed.append(publish_all())

    publisher = threading.Thread(target=publish)
    result = run_client(
        client, server, connections, expected, timeout, on_open=publisher.start, transport=transport
    )
    publisher.join()
    elapsed = max(result["elapsed_seconds"] - result["open_seconds"], 1e-9)
    cpu_after = server.cpu_seconds()
    sending_cpu = cpu_after - (publishing[0] if publishing else cpu_before)  # while events went out
    return {
        "delivered_per_second": result["events"] / elapsed,
        # From the first event received to the last: the rate the server kept up, apart from
        # how late the first event came (which the latency percentiles show).
        "sustained_per_second": result["events"] / max(result["receiving_seconds"], 1e-9),
        "p50_ms": result["p50_ms"],
        "p90_ms": result["p90_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "missing": result["missing"],
        "duplicates": result["duplicates"],
        "failed_connections": result["failed"],
        "failed_publishes": failed[0] if failed else -1,
        "server_cpu_seconds": cpu_after - cpu_before,
        # Robust to the machine's load, unlike the rates: what the server spent per event out,
        # from the first publish on (the streams' opening apart).
        "server_cpu_us_per_delivered": 1e6 * sending_cpu / max(1, result["events"]),
        "client_cpu_seconds": result["client_cpu_seconds"],
        # The load client's share of the machine per event (its opening included: small), for
        # the most two workers could show beside one on the same cores (bench/targets.py).
        "client_cpu_us_per_delivered": 1e6
        * result["client_cpu_seconds"]
        / max(1, result["events"]),
        # How much of a core the server kept busy while the events went out: a worker below
        # about 0.9 was not what held the rate back (the machine's other processes were).
        "server_cores_busy": sending_cpu / max(result["receiving_seconds"], 1e-9),
    }


def broadcast(
    client: Path,
    server: Server,
    connections: int,
    events: int,
    rate: float,
    transport: Transport = "sse",
) -> dict[str, float]:
    """``events`` to every stream, one per request, sent on a fixed schedule of ``rate`` per second.

    The schedule is open loop: each request goes out at its time whether or not the earlier ones
    were answered, so a slow server faces the workload's rate instead of slowing its publisher
    down; each event is stamped when its request is sent. As many requests may be in flight as
    the schedule sends within a publish's timeout, each on a kept-alive connection of its own
    (threads and connections are opened only when the ones open are all waiting): nchan answers
    a POST only once its worker has written the message to each of its streams, and 16 at once
    had one nginx worker take 200 events in 20-26 s instead of 10, each stamped late, so its
    latency looked shorter and its rate lower than the load asked. ``published_per_second`` and
    ``publish_late_max_ms`` say whether the schedule was kept.
    """
    sent: dict[int, float] = {}  # each event's sequence number: when its request went out
    figures: dict[str, float] = {}

    def publish_on_time(seq: int) -> None:
        sent[seq] = time.monotonic()
        publish(server, seq)

    def publish_all() -> int:
        start = time.monotonic()
        in_flight = max(16, math.ceil(rate * PUBLISH_TIMEOUT_SECONDS))
        with ThreadPoolExecutor(max_workers=in_flight) as publishers:
            requests = []
            for seq in range(events):
                time.sleep(max(0.0, start + seq / rate - time.monotonic()))
                requests.append(publishers.submit(publish_on_time, seq))
        if sent:
            late = max(at - (start + seq / rate) for seq, at in sent.items())
            span = max(sent.values()) - min(sent.values())
            figures["published_per_second"] = (len(sent) - 1) / max(span, 1e-9)
            figures["publish_late_max_ms"] = 1000 * late
        return sum(1 for request in requests if request.exception() is not None)

    result = with_publisher(client, server, connections, events, 120.0, publish_all, transport)
    return {**result, **figures}


def throughput(client: Path, server: Server, connections: int, events: int) -> dict[str, float]:
    """``events`` published in batches of 100 as fast as the server takes them."""

    def publish_all() -> int:
        failed = 0
        for seq in range(0, events, 100):
            try:
                publish(server, seq, min(100, events - seq))
            except (OSError, http.client.HTTPException):
                failed += 1
        return failed

    return with_publisher(client, server, connections, events, 600.0, publish_all)


def targeted(
    client: Path, server: Server, connections: int, rate: float, via_kafka: bool = False
) -> dict[str, float]:
    """Each stream a different user; events at ``rate``/s for 5 s, each for one random user,
    in batches of 100: POSTed, or (``via_kafka``) produced straight to the router's topic.
    Routing by index: the cost per event must not grow with the number of streams.

    ``server_cpu_ms_per_event`` is the server's CPU (user and system, all its processes) from
    a second after every stream opened to half a second after the last batch was taken, over
    the events: robust to the machine's load, unlike the latencies."""
    import random

    from router.auth import mint_token

    users = [f"user-{n}" for n in range(connections)]
    lines = []
    for user in users:
        if server.publisher_token:  # the router, either way: it knows a user by their token
            lines.append(
                f"{server.stream_path}\tAuthorization: Bearer {mint_token(SECRET, sub=user)}"
            )
        else:
            lines.append(f"{server.stream_path}?user={user}\t")
    requests = BUILD / f"requests-{server.name}.txt"
    requests.write_text("\n".join(lines) + "\n")
    events = int(rate * 5)
    chosen = [random.choice(users) for _ in range(events)]
    cpu: dict[str, float] = {}
    profiles: list[dict[str, Any]] = []
    send = produce_to_kafka(server) if via_kafka else None

    def publish_all() -> None:
        # Every stream is open; what their admission left to do (a stream's first resume after
        # its headers) is done in the next second, then only the events are counted.
        time.sleep(1.0)
        server.profile_stages(reset=True)
        cpu["before"] = server.cpu_seconds()
        start = time.monotonic()
        for seq in range(0, events, 100):
            if send is None:
                publish(server, seq, min(100, events - seq), users=chosen)
            else:
                send(envelopes(seq, min(100, events - seq), users=chosen))
            time.sleep(max(0.0, start + (seq + 100) / rate - time.monotonic()))
        time.sleep(0.5)  # the last batch written (p99 is well under this)
        cpu["after"] = server.cpu_seconds()
        profiles.extend(filter(None, [server.profile_stages(reset=False)]))

    publisher = threading.Thread(target=publish_all)
    command_server = replace(server, stream_path=f"@{requests}", auth_header="")
    try:
        result = run_client(client, command_server, connections, 0, 8.0,
                            on_open=publisher.start)  # fmt: skip
        publisher.join()
    finally:
        if send is not None:
            send([])  # stops the producer
    used = cpu["after"] - cpu["before"]
    for profile in profiles:
        print_places(f"{server.name} ({'produced to Kafka' if via_kafka else 'POST'})", events,
                     profile)  # fmt: skip
    return {
        "delivered_per_second": result["events"] / 5.0,
        "p50_ms": result["p50_ms"],
        "p90_ms": result["p90_ms"],
        "p99_ms": result["p99_ms"],
        "missing": events - result["events"],
        "duplicates": result["duplicates"],
        "server_cpu_ms_per_event": 1000 * used / max(1, events),
    }


def produce_to_kafka(server: Server) -> Callable[[list[dict[str, object]]], None]:
    """A Kafka producer on the router's topic (acks=all, keyed as the router keys), on a trio
    loop with trio-asyncio in a thread of its own: each call sends one batch and waits for it;
    an empty one stops the producer."""
    import trio
    import trio_asyncio
    from aiokafka import AIOKafkaProducer

    from router.bus.base import partition_key
    from router.core.scope import Scope

    if server.kafka is None:
        raise ValueError(f"{server.name} does not read Kafka")
    bootstrap, topic = server.kafka
    ready = threading.Event()
    running: dict[str, Any] = {}

    async def produce() -> None:
        async with trio_asyncio.open_loop():

            async def start() -> AIOKafkaProducer:
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
                await producer.start()
                return producer

            producer = await trio_asyncio.aio_as_trio(start)()

            async def send_batch(batch: list[dict[str, object]]) -> None:
                futures = []
                for body in batch:
                    key = partition_key(Scope.from_json(body["scope"])).encode()
                    futures.append(await producer.send(topic, json.dumps(body).encode(), key=key))
                await asyncio.gather(*futures)

            # Batches come in from the publishing thread; each is sent here, in the loop's
            # context (trio-asyncio's loop is found there), and its sender told when it is in.
            batches, waiting = trio.open_memory_channel[tuple[list[Any], trio.Event]](1)

            async def request(batch: list[dict[str, object]]) -> None:
                done = trio.Event()
                await batches.send((batch, done))
                await done.wait()

            running.update(token=trio.lowlevel.current_trio_token(), request=request)
            ready.set()
            async for batch, done in waiting:
                if not batch:
                    break
                await trio_asyncio.aio_as_trio(send_batch)(batch)
                done.set()
            await trio_asyncio.aio_as_trio(producer.stop)()
            done.set()

    thread = threading.Thread(target=trio.run, args=(produce,), daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the Kafka producer did not start")

    def send(batch: list[dict[str, object]]) -> None:
        trio.from_thread.run(running["request"], batch, trio_token=running["token"])
        if not batch:
            thread.join(30)

    return send


DEFAULT_CONNECTIONS = {
    "idle": (1000, 5000, 10000),
    "broadcast": (1000, 5000, 10000),
    "ws-broadcast": (1000, 10000),
    "throughput": (1000,),
    "targeted": (1000, 10000),
    "targeted-kafka": (1000,),
}
"""What ``just bench`` runs without arguments: the matrix of issue 7 and the WebSocket broadcast
of issue 15 (about 15 minutes here)."""


SERVERS: dict[str, Callable[[Sequence[str]], Server]] = {
    "router": lambda extra: start_router("router", extra),
    "kafka+redis": lambda extra: start_router_on_kafka_and_redis(1, extra),
    "kafka-2w": lambda extra: start_router_on_kafka_and_redis(2, extra),
    "redis": lambda extra: start_router_on_redis(1, extra),
    "redis-2w": lambda extra: start_router_on_redis(2, extra),
    "peer": lambda extra: start_peer(),
    "nchan": lambda extra: start_nchan(),
}
"""Who ``just bench`` measures: the router on its embedded default, on Kafka and Redis and on
the Redis bus and cache, each as one worker and as two (``--workers 2``), the Python peer, and
nginx with nchan (C, one worker per core); each ratio in the table is that server's figure over
the peer's. A server's memory and CPU are its processes' together (the supervisor's and its
workers', nginx's master's and its workers'). Each takes options for the router (a workload's
own settings; the peers ignore them)."""

ROUTERS = ("router", "kafka+redis", "kafka-2w", "redis", "redis-2w")
"""The servers that are the router: the only ones the replay storm runs on (a resume from a
cursor is the router's own)."""
WEBSOCKET_SERVERS = (*ROUTERS, "peer")
"""The servers with a WebSocket route the load client speaks (nchan's frames are not JSON)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        help="stream counts for every chosen workload (default: idle and broadcast at 1,000, 5,000"
        " and 10,000; ws-broadcast and targeted at 1,000 and 10,000; throughput at 1,000)",
    )
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=(*DEFAULT_CONNECTIONS, *OWN_RUNS),
        default=[*DEFAULT_CONNECTIONS, *OWN_RUNS],
        help="overload: the router alone, offered well past capacity (bench/overload.py);"
        " replay-storm: a reconnect storm resuming from before a full cache, on each chosen"
        " router (bench/replay_storm.py)",
    )
    parser.add_argument(
        "--storm",
        type=int,
        nargs=2,
        metavar=("STREAMS", "HISTORY"),
        default=(10_000, 200),
        help="the replay storm's resuming clients and the events in its full cache"
        " (default: 10,000 and 200, which the Redis cache replays in minutes; --connections"
        " gives its live streams, default 1,000)",
    )
    parser.add_argument("--servers", nargs="+", choices=tuple(SERVERS), default=list(SERVERS))
    parser.add_argument(
        "--overload-load",
        metavar="KEEPERS,LAGGARDS,STORM,RATE,SECONDS",
        help="the overload run's tabs, events a second and seconds (default: 1000,500,2000,50,20)",
    )
    parser.add_argument(
        "--profile-stages",
        action="store_true",
        help="idle: also print where each single-process router's CPU went while its streams"
        " opened, by stage; targeted: where it went while the events were published, by task"
        " and function (bench/stage_profile.py; it costs the router a little CPU)",
    )
    args = parser.parse_args()
    global profile_stages
    profile_stages = args.profile_stages
    raise_open_files_limit()
    kernel_settings = read_backlog_settings()
    try:
        raise_listen_backlog()
        run_plan(args)
    finally:
        write_backlog_settings(kernel_settings)  # as the run found them


def run_plan(args: argparse.Namespace) -> None:
    client = build_client()
    plan = sorted(
        (
            (connections, workload)
            for workload in args.workloads
            if workload not in OWN_RUNS
            for connections in (args.connections or DEFAULT_CONNECTIONS[workload])
        ),
        key=lambda step: (step[0], args.workloads.index(step[1])),
    )
    servers = [name for name in SERVERS if name in args.servers]
    rows: list[tuple[str, int, str, dict[str, float]]] = []
    for connections, workload in plan:
        results: dict[str, dict[str, float]] = {}
        for name in servers:
            if workload == "ws-broadcast" and name not in WEBSOCKET_SERVERS:
                continue
            if workload == "targeted-kafka" and name != "kafka+redis":
                continue  # produced to Kafka: only a router that reads it
            if workload == "idle":  # its servers start under each backlog setting in turn
                results[name] = idle_at_both_backlogs(client, SERVERS[name], connections)
                continue
            server = SERVERS[name](())
            try:
                if workload == "targeted":
                    results[name] = targeted(client, server, connections, 2000.0)
                elif workload == "targeted-kafka":  # produced to Kafka: a router on Kafka only
                    if server.kafka is not None:
                        results[name] = targeted(client, server, connections, 2000.0, True)
                elif workload == "throughput":
                    results[name] = throughput(client, server, connections, 2000)
                elif workload == "ws-broadcast":
                    results[name] = broadcast(
                        client, server, connections, args.events, args.rate, "websocket"
                    )
                else:
                    results[name] = broadcast(client, server, connections, args.events, args.rate)
            finally:
                server.stop()
        if not results:
            continue
        metrics = dict.fromkeys(metric for figures in results.values() for metric in figures)
        for metric in metrics:  # in the order measured; a server without one shows nan
            values = {n: results[n].get(metric, math.nan) if n in results else math.nan
                      for n in servers}  # fmt: skip
            rows.append((workload, connections, metric, values))
    if rows:
        print_table(servers, rows)
        if verdicts := judge(rows, servers, args.rate):
            print("\ntargets (issue 18)")
            print("\n".join(verdicts))
    if "replay-storm" in args.workloads:
        storm, history = args.storm
        for live in args.connections or (1000,):
            print_storm(storm, live, history, replay_storms(client, servers, storm, live, history,
                                                            args.events, args.rate))  # fmt: skip
    if "overload" in args.workloads:
        print_overload(overload(client, args.overload_load))


OWN_RUNS = ("replay-storm", "overload")
"""Workloads with a report of their own rather than a row per server in the table."""


def replay_storms(
    client: Path, servers: Sequence[str], storm: int, live: int, history: int, events: int,
    rate: float,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """The replay storm (bench/replay_storm.py) on each chosen router."""
    from bench.replay_storm import replay_storm, storm_options

    figures = {}
    for name in (name for name in servers if name in ROUTERS):
        server = SERVERS[name](storm_options(history, events))
        try:
            figures[name] = replay_storm(client, server, storm=storm, live=live, history=history,
                                         events=events, rate=rate)  # fmt: skip
        finally:
            server.stop()
    return figures


def print_storm(storm: int, live: int, history: int, figures: dict[str, dict[str, float]]) -> None:
    if not figures:
        return
    print(
        f"\nreplay storm: {storm:,} clients resume from before a full cache of {history:,}"
        f" events while {live:,} streams are live"
    )
    names = list(figures)
    print(f"  {'metric':<24}" + "".join(f" {name:>12}" for name in names))
    for metric in figures[names[0]]:
        print(f"  {metric:<24}" + "".join(f" {figures[n][metric]:>12.2f}" for n in names))
    print("\ntargets (issue 18), the replay storm")
    print("\n".join(judge_storm(figures, storm)))


def overload(client: Path, sizes: str | None = None) -> dict[str, float]:
    """The overload run (bench/overload.py): the router alone, past its thresholds, its tabs
    played by the C client; ``sizes`` as ``--overload-load`` takes them."""
    from bench.overload import ROUTER_OPTIONS, OverloadLoad, run_overload

    load = OverloadLoad()
    if sizes:
        keepers, laggards, storm, rate, seconds = sizes.split(",")
        load = OverloadLoad(int(keepers), int(laggards), int(storm), float(rate), float(seconds))
    server = start_router("router", ROUTER_OPTIONS)
    try:
        return run_overload(client, server, load)
    finally:
        server.stop()


def print_overload(figures: dict[str, float]) -> None:
    load = os.getloadavg()[0]
    print(f"\noverload run (router only, C clients; load average {load:.1f} at the end)")
    for name, value in figures.items():
        print(f"  {name:<24} {value:>10.2f}")


def print_table(servers: list[str], rows: list[tuple[str, int, str, dict[str, float]]]) -> None:
    compared = [name for name in servers if name != "peer"] if "peer" in servers else []
    header = f"{'workload':<14} {'streams':>7} {'metric':<34}"
    header += "".join(f" {name:>12}" for name in servers)
    header += "".join(f" {name + '/peer':>16}" for name in compared)
    print(header)
    for workload, connections, metric, values in rows:
        digits = 3 if metric.endswith("_per_event") else 1 if "_us_" in metric else 2
        line = f"{workload:<14} {connections:>7} {metric:<34}"
        line += "".join(
            f" {'-':>12}" if math.isnan(values[name]) else f" {values[name]:>12.{digits}f}"
            for name in servers
        )
        for name in compared:
            ratio = values[name] / values["peer"] if values["peer"] else math.nan
            line += f" {'-':>16}" if math.isnan(ratio) else f" {ratio:>16.2f}"
        print(line)


if __name__ == "__main__":
    main()
