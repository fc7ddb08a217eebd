"""`just bench`: the router and a peer (sse-starlette on uvicorn), side by side, same workloads.

Benchmarks are measurements, not tests: this prints a table and asserts nothing. The load client
is C (bench/sseclient.c, built here with the system compiler) so that it is not the bottleneck;
its own CPU time is reported next to the servers'. It speaks SSE, or WebSocket for the
``ws-broadcast`` workload (the broadcast, each stream a WebSocket of JSON frames).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from bench.targets import judge

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / ".build"
ROUTER_COMMAND = [sys.executable, "-m", "router.cli"]
"""How the harness starts the router (a profiling wrapper may stand in)."""
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


def raise_listen_backlog() -> None:
    """Let both servers queue a whole connection storm (the kernel caps every listen backlog at
    net.core.somaxconn; at 4,096, 10,000 clients connecting at once overflow it and wait out
    TCP's retransmission backoff). Needs root; otherwise says what the run is limited to."""
    for name in ("net/core/somaxconn", "net/ipv4/tcp_max_syn_backlog"):
        setting = Path("/proc/sys") / name
        try:
            if int(setting.read_text()) < LISTEN_BACKLOG:
                setting.write_text(str(LISTEN_BACKLOG))
        except OSError as error:
            print(f"bench: {name} stays at {setting.read_text().strip()}: {error}", file=sys.stderr)


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
    publishes: PublishStyle = "batch"
    resources: ExitStack = field(default_factory=ExitStack)
    """What the server needs besides its process (a broker, Redis keys), released on stop."""
    metrics_ports: list[int] = field(default_factory=list)
    """Where each of its routers serves ``/metrics`` (each worker of ``--workers`` on its own
    port); empty: ``port``."""

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
    environ = {**os.environ, "SSE_ROUTER_JWT_SECRET": SECRET}
    process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL)
    wait_listening(port)
    reader = mint_token(SECRET, sub="bench-reader", ttl_seconds=3600)
    publisher = mint_token(SECRET, sub="bench-publisher", roles=["publisher"], ttl_seconds=3600)
    return Server(
        name, process, port, "/api/v1/events/stream", f"Authorization: Bearer {reader}",
        "/api/v1/events", "/api/v1/events/ws", publisher,
    )  # fmt: skip


def free_port_pair() -> int:
    """A port whose next one is free too (for ``--worker-ports`` of two workers)."""
    import socket

    for _ in range(100):
        first = free_port()
        with suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", first + 1))
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
    try:
        for port in metrics_ports:
            wait_listening(port)
        wait_routing(server)
    except BaseException:
        server.stop()
        raise
    return server


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
        server.resources.push(resources.pop_all())
    try:
        for port in metrics_ports:
            wait_listening(port)
        wait_routing(server)
    except BaseException:
        server.stop()
        raise
    return server


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


def publish(server: Server, seq: int, count: int = 1, users: list[str] | None = None) -> None:
    """Publish events ``seq`` .. ``seq + count - 1`` in one request (one request each to a
    server that takes one message per request), each stamped now: to everyone, or each to one
    of ``users``."""
    events = [
        {
            "event_type": "System.NotificationSent",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scope": {"user_id": users[n]} if users else {"broadcast": True},
            "payload": {"level": "info", "title": f"{n}:{time.time_ns()}", "message": "benchmark"},
        }
        for n in range(seq, seq + count)
    ]
    if server.publishes == "batch":
        send_publish(server, server.publish_path, json.dumps(events).encode())
        return
    for n, event in enumerate(events, start=seq):
        query = f"?user={users[n]}" if users else ""
        send_publish(server, server.publish_path + query, json.dumps(event).encode())


def send_publish(server: Server, path: str, body: bytes) -> None:
    """POST ``body`` to ``path`` on this thread's kept-alive connection to ``server``."""
    headers = {"Content-Type": "application/json"}
    if server.publisher_token:
        headers["Authorization"] = f"Bearer {server.publisher_token}"
    # One kept-alive connection per publishing thread, as a back end's HTTP client pool would.
    connection = getattr(_publisher_connections, "connection", None)
    if connection is None or connection.port != server.port:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
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


def idle(client: Path, server: Server, connections: int) -> dict[str, float]:
    before = server.rss_kib()
    measured: dict[str, float] = {}

    def opened() -> None:
        time.sleep(1.0)  # let the server settle, then weigh it
        measured["rss_kib"] = server.rss_kib()

    result = run_client(client, server, connections, 0, 3.0, opened)
    rss = measured.get("rss_kib", server.rss_kib())
    return {
        "open_seconds": result["open_seconds"],
        "failed": result["failed"],
        "rss_mib": rss / 1024,
        "kib_per_stream": (rss - before) / max(1, result["opened"]),
    }


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
    publisher = threading.Thread(target=lambda: failed.append(publish_all()))
    result = run_client(
        client, server, connections, expected, timeout, on_open=publisher.start, transport=transport
    )
    publisher.join()
    elapsed = max(result["elapsed_seconds"] - result["open_seconds"], 1e-9)
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
        "server_cpu_seconds": server.cpu_seconds() - cpu_before,
        "client_cpu_seconds": result["client_cpu_seconds"],
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
    were answered (up to 16 at once), so a slow server faces the workload's rate instead of
    slowing its publisher down; each event is stamped when its request is sent.
    """

    def publish_all() -> int:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as publishers:
            requests = []
            for seq in range(events):
                time.sleep(max(0.0, start + seq / rate - time.monotonic()))
                requests.append(publishers.submit(publish, server, seq))
        return sum(1 for request in requests if request.exception() is not None)

    return with_publisher(client, server, connections, events, 120.0, publish_all, transport)


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


def targeted(client: Path, server: Server, connections: int, rate: float) -> dict[str, float]:
    """Each stream a different user; events at ``rate``/s for 5 s, each for one random user.
    Routing by index: the cost per event must not grow with the number of streams."""
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

    def publish_all() -> None:
        cpu["before"] = server.cpu_seconds()  # every stream is open: count only the events
        start = time.monotonic()
        for seq in range(0, events, 100):
            publish(server, seq, min(100, events - seq), users=chosen)
            time.sleep(max(0.0, start + (seq + 100) / rate - time.monotonic()))
        cpu["after"] = server.cpu_seconds()

    publisher = threading.Thread(target=publish_all)
    command_server = replace(server, stream_path=f"@{requests}", auth_header="")
    result = run_client(client, command_server, connections, 0, 8.0,
                        on_open=publisher.start)  # fmt: skip
    publisher.join()
    used = cpu["after"] - cpu["before"]
    return {
        "delivered_per_second": result["events"] / 5.0,
        "p50_ms": result["p50_ms"],
        "p90_ms": result["p90_ms"],
        "p99_ms": result["p99_ms"],
        "missing": events - result["events"],
        "duplicates": result["duplicates"],
        "server_cpu_ms_per_event": 1000 * used / max(1, events),
    }


DEFAULT_CONNECTIONS = {
    "idle": (1000, 5000, 10000),
    "broadcast": (1000, 5000, 10000),
    "ws-broadcast": (1000, 10000),
    "throughput": (1000,),
    "targeted": (1000, 10000),
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
    args = parser.parse_args()
    raise_open_files_limit()
    raise_listen_backlog()
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
            server = SERVERS[name](())
            try:
                if workload == "idle":
                    results[name] = idle(client, server, connections)
                elif workload == "targeted":
                    results[name] = targeted(client, server, connections, 2000.0)
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
        metrics = next(iter(results.values()))
        for metric in metrics:
            values = {n: results[n][metric] if n in results else math.nan for n in servers}
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
        print_overload(overload())


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


def overload() -> dict[str, float]:
    """The overload run (bench/overload.py): the router alone, past its thresholds."""
    from bench.overload import ROUTER_OPTIONS, run_overload

    server = start_router("router", ROUTER_OPTIONS)
    try:
        return run_overload(server.port)
    finally:
        server.stop()


def print_overload(figures: dict[str, float]) -> None:
    print("\noverload run (router only; the machine is shared, so the figures are noisy)")
    for name, value in figures.items():
        print(f"  {name:<24} {value:>10.2f}")


def print_table(servers: list[str], rows: list[tuple[str, int, str, dict[str, float]]]) -> None:
    compared = [name for name in servers if name != "peer"] if "peer" in servers else []
    header = f"{'workload':<12} {'streams':>7} {'metric':<22}"
    header += "".join(f" {name:>12}" for name in servers)
    header += "".join(f" {name + '/peer':>16}" for name in compared)
    print(header)
    for workload, connections, metric, values in rows:
        line = f"{workload:<12} {connections:>7} {metric:<22}"
        line += "".join(f" {values[name]:>12.2f}" for name in servers)
        for name in compared:
            line += f" {values[name] / values['peer']:>16.2f}" if values["peer"] else f" {'-':>16}"
        print(line)


if __name__ == "__main__":
    main()
