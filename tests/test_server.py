"""The server skeleton: it starts, answers health, and stops cleanly on a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from router.cli import build_parser
from router.config import Settings
from router.server import serve


async def test_serve_answers_health_and_describes_itself() -> None:
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(serve, Settings(port=0))
        async with httpx.AsyncClient(base_url=address) as client:
            health = await client.get("/healthz")
            index = await client.get("/")
        nursery.cancel_scope.cancel()
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert "task.progress-updated" in index.json()["events"]


def test_sigterm_stops_the_process_with_status_zero() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith("sse-router listening on http://127.0.0.1:")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            process.kill()


def parse_serve(argv: list[str], environ: dict[str, str]) -> Settings:
    old = dict(os.environ)
    os.environ.update(environ)
    try:
        return Settings.from_args(build_parser().parse_args(["serve", *argv]))
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_environment_sets_defaults_and_flags_override_them() -> None:
    assert parse_serve([], {}).port == 8000
    assert parse_serve([], {"SSE_ROUTER_PORT": "9001"}).port == 9001
    assert parse_serve(["--port", "9002"], {"SSE_ROUTER_PORT": "9001"}).port == 9002
    assert (
        parse_serve([], {"SSE_ROUTER_SHUTDOWN_GRACE_SECONDS": "0.5"}).shutdown_grace_seconds == 0.5
    )


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--port", "70000"], {}, "a port is 0 to 65535"),
        ([], {"SSE_ROUTER_PORT": "http"}, "not a port number"),
        (["--shutdown-grace-seconds", "-1"], {}, "positive number of seconds"),
        (["--shutdown-grace-seconds", "nan"], {}, "positive number of seconds"),
    ],
)
def test_bad_settings_stop_at_start_with_a_clear_message(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_serve(argv, environ)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for name in ("SSE_ROUTER_HOST", "SSE_ROUTER_PORT", "SSE_ROUTER_SHUTDOWN_GRACE_SECONDS"):
        assert name in out
