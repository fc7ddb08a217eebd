"""The supervisor of ``serve --workers N`` stays small: it imports none of the stack its workers
run (about 45 MiB of a process that only starts, watches and stops them), and a setting only a
worker can check still stops it at once with the worker's code 2."""

from __future__ import annotations

import subprocess
import sys

from tests.redis_helpers import REDIS_URL, new_prefix

HEAVY = ("quart", "quart_trio", "hypercorn", "werkzeug", "jwt", "cryptography", "redis",
         "aiokafka", "trio_asyncio", "psycopg", "prometheus_client", "router.server",
         "router.http.app", "actors.hub")  # fmt: skip


def test_the_supervisors_modules_import_none_of_the_stack() -> None:
    probe = (
        "import sys, router.cli, router.supervisor; "
        f"print(','.join(name for name in {HEAVY!r} if name in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_a_key_only_the_workers_check_stops_the_supervisor_with_code_2() -> None:
    command = [
        sys.executable, "-m", "router.cli", "serve", "--workers", "2", "--port", "0",
        "--bus", "redis", "--cache", "redis", "--redis-url", REDIS_URL,
        "--redis-key-prefix", new_prefix(), "--jwt-secret", "too-short",
    ]  # fmt: skip
    ended = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ended.returncode == 2, ended.stderr[-2000:]
    assert "the JWT secret must be at least 32 bytes long" in ended.stderr
    assert "exited with code 2 before it was ready; stopped every worker" in ended.stderr
    assert "Traceback" not in ended.stderr
