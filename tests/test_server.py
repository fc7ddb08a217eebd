"""The process: settings, start-up refusals, the CLI, HTTP pitfalls, and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import pytest
import trio

from router.cli import build_parser, main
from router.config import Settings
from router.core.inbox import DEFAULT_INBOX_MAX_BYTES
from router.core.mapping import PUBLISH_PROBLEMS
from router.server import ConfigurationError, serve
from tests.e2e_helpers import (
    PUBLISHER,
    SECRET,
    STREAM_PATH,
    auth,
    content,
    running_router,
    token,
)
from tests.sse_http_client import open_stream
from tests.sse_spec_parser import parse_stream

# -- settings -------------------------------------------------------------------------------------


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parse_serve(argv: list[str], environ: dict[str, str]) -> Settings:
    with environment(environ):
        return Settings.from_args(build_parser().parse_args(["serve", *argv]))


def test_environment_sets_defaults_and_flags_override_them() -> None:
    assert parse_serve([], {}).port == 8000
    assert parse_serve([], {"SSE_ROUTER_PORT": "9001"}).port == 9001
    assert parse_serve(["--port", "9002"], {"SSE_ROUTER_PORT": "9001"}).port == 9002
    origins = parse_serve([], {"SSE_ROUTER_CORS_ORIGINS": "https://a.example, http://b:8080"})
    assert origins.cors_origins == ("https://a.example", "http://b:8080")


def test_the_overload_and_breaker_flags_reach_their_rules() -> None:
    settings = parse_serve(
        ["--max-memory", "2G", "--overload-loop-lag-ms", "100", "--bus-breaker-open-seconds", "2"],
        {"SSE_ROUTER_OVERLOAD_CALM_SECONDS": "30"},
    )
    assert settings.overload_thresholds.max_memory_bytes == 2 * 1024**3
    assert settings.overload_thresholds.loop_lag_seconds == 0.1
    assert settings.overload_ladder.calm_seconds == 30
    assert settings.bus_breaker.open_seconds == 2
    assert parse_serve(["--max-memory", "512M"], {}).max_memory == 512 * 1024**2
    assert parse_serve([], {}).max_memory == 0  # no memory limit unless one is given


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--port", "70000"], {}, "a port is 0 to 65535"),
        ([], {"SSE_ROUTER_PORT": "http"}, "not a port number"),
        (["--shutdown-grace-seconds", "-1"], {}, "positive number of seconds"),
        (["--heartbeat-seconds", "nan"], {}, "positive number of seconds"),
        (["--session-buffer", "0"], {}, "at least 1"),
        (["--cors-origins", "https://a.example/path"], {}, "scheme://host[:port]"),
        (["--jwt-public-key-file", "/no/such/key.pem"], {}, "no such file"),
        (["--max-memory", "lots"], {}, "a size is a whole number of bytes"),
        (["--overload-streams-behind", "1.5"], {}, "a number from 0 to 1"),
        (["--bus-breaker-failures", "0"], {}, "at least 1"),
    ],
)
def test_bad_settings_stop_at_start_with_a_clear_message(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_serve(argv, environ)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_every_setting_and_hides_the_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with environment({"SSE_ROUTER_JWT_SECRET": "do-not-print-me"}), pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for name in Settings.__dataclass_fields__:
        assert f"SSE_ROUTER_{name.upper()}" in out
    assert "do-not-print-me" not in out


async def test_the_router_refuses_to_start_without_a_key() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of a JWT secret"):
        await serve(Settings(port=0))


def test_the_command_explains_a_missing_key(capsys: pytest.CaptureFixture[str]) -> None:
    with environment({}):
        os.environ.pop("SSE_ROUTER_JWT_SECRET", None)
        assert main(["serve", "--port", "0"]) == 2
    assert "SSE_ROUTER_JWT_SECRET" in capsys.readouterr().err


def test_the_token_command_mints_what_the_router_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["token", "--sub", "u1", "--novels", "n1,n2", "--roles", "publisher", "--ttl", "60"]
    assert main([*argv, "--jwt-secret", SECRET]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "u1"
    assert claims["novels"] == ["n1", "n2"]
    assert claims["roles"] == ["publisher"]
    assert claims["exp"] - claims["iat"] == 60


# -- HTTP ----------------------------------------------------------------------------------------


async def test_health_readiness_and_unknown_paths_answer_json() -> None:
    async with running_router() as router:
        assert (await router.client.get("/healthz")).json()["status"] == "ok"
        ready = await router.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "status": "ok",
            "checks": {"bus": True, "cache": True, "overload": "normal"},
        }
        index = await router.client.get("/")
        assert "task.progress-updated" in index.json()["events"]
        missing = await router.client.get("/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not-found"


async def test_publish_returns_the_ids_of_a_batch() -> None:
    async with running_router(memory_partitions=2) as router:
        response = await router.client.post(
            "/api/v1/events", json=[content("n1"), content("n2")], headers=PUBLISHER
        )
        assert response.status_code == 202
        ids = response.json()["event_ids"]
        assert len(ids) == 2
        assert all(i.startswith("memory@") for i in ids)


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{}", auth("u1"), 403, "forbidden"),
        (b"{}", {**PUBLISHER, "Content-Type": "text/plain"}, 415, "unsupported-media-type"),
        (b"{nope", {**PUBLISHER, "Content-Type": "application/json"}, 400, "bad-json"),
        (b"[]", {**PUBLISHER, "Content-Type": "application/json"}, 400, "empty-batch"),
        (b"x" * 5000, {**PUBLISHER, "Content-Type": "application/json"}, 413, None),
    ],
)
async def test_bad_publish_requests_get_the_right_status(
    body: bytes, headers: dict[str, str], status: int, code: str | None
) -> None:
    async with running_router(publish_max_bytes=4096) as router:
        response = await router.client.post("/api/v1/events", content=body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["status"] == status
    if code is not None:
        assert error["code"] == code


async def test_a_bad_envelope_in_a_batch_is_named_and_nothing_is_published() -> None:
    async with running_router() as router, router.stream() as stream:
        bad = content("n1")
        bad["payload"]["content_version"] = -1
        response = await router.client.post(
            "/api/v1/events", json=[content("n1"), bad], headers=PUBLISHER
        )
        assert response.status_code == 400
        assert response.json()["error"]["parameter"] == "[1]"
        assert response.json()["error"]["code"] == "invalid-payload"
        await router.publish(content("n1", 42))
        await stream.events_count(1)
        assert [d["content_version"] for d in stream.data()] == [42]


def raw_body(*envelopes: str) -> bytes:
    """A publish body of envelopes written as JSON text, so they can hold what json.dumps would
    not write (lone surrogates, NaN, integers of any length). UTF-8 with surrogatepass, so a raw
    surrogate written into the text goes out as the bytes a sloppy producer would send."""
    return ("[" + ",".join(envelopes) + "]").encode("utf-8", "surrogatepass")


def with_payload_field(envelope: dict[str, object], name: str, value_json: str) -> str:
    """``envelope`` as JSON text with one more payload field whose value is ``value_json``."""
    text = json.dumps(envelope)
    assert text.endswith("}}")
    return f'{text[:-2]}, "{name}": {value_json}}}}}'


JSON_HEADERS = {**PUBLISHER, "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("culprit", "named"),
    [
        (with_payload_field(content("n1", 2), "summary", '"a\\ud800b"'), "payload.summary"),
        (
            with_payload_field(content("n1", 2), "internal_notes", '"\\udfff"'),
            "payload.internal_notes",
        ),
        (with_payload_field(content("n1", 2), "summary", '"raw \ud800 bytes"'), "payload.summary"),
        (
            with_payload_field(content("n1", 2), "notes", '{"by": ["ok", "\\ud83d"]}'),
            "payload.notes.by[1]",
        ),
        (with_payload_field(content("n1", 2), "\\ud800", "1"), "payload"),
        (json.dumps({**content("n1", 2), "event_id": "e\ud800"}), "event_id"),
        (with_payload_field(content("n1", 2), "internal_ratio", "1e400"), "payload.internal_ratio"),
    ],
    ids=["kept-field", "dropped-field", "raw-bytes", "nested", "key", "event-id", "infinity"],
)
async def test_a_batch_with_an_unencodable_envelope_is_refused_whole_and_names_it(
    culprit: str, named: str
) -> None:
    async with running_router() as router, router.stream() as stream:
        good = [json.dumps(content("n1", 1)), json.dumps(content("n1", 3))]
        response = await router.client.post(
            "/api/v1/events", content=raw_body(good[0], culprit, good[1]), headers=JSON_HEADERS
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["parameter"]) == ("unencodable", "[1]")
        assert named in error["message"]
        await router.publish(content("n1", 42))
        await stream.events_count(1)
        assert [d["content_version"] for d in stream.data()] == [42]  # nothing of the batch


DIGITS_5000 = "9" * 5000


@pytest.mark.parametrize(
    ("envelope_json", "code", "said"),
    [
        (with_payload_field(content("n1"), "internal_count", DIGITS_5000), "bad-json", "digits"),
        (
            with_payload_field(content("n1"), "internal_count", "-" + DIGITS_5000),
            "bad-json",
            "digits",
        ),
        (
            json.dumps(content("n1")).replace(
                '"content_version": 1', '"content_version": ' + DIGITS_5000
            ),
            "bad-json",
            "digits",
        ),
        (with_payload_field(content("n1"), "internal_ratio", "NaN"), "bad-json", "NaN"),
        (with_payload_field(content("n1"), "internal_ratio", "-Infinity"), "bad-json", "-Infinity"),
        (
            json.dumps(content("n1")).replace("Content.Updated", "Content.Up\\ud800"),
            "bad-field",
            "event_type",
        ),
        (
            json.dumps(content("n1")).replace('{"novel_id": "n1"}', '{"novel_id": "n\\ud800"}', 1),
            "unroutable",
            "scope.novel_id",
        ),
        (json.dumps(content("n1")).replace("00Z", "00Z\\ud800"), "bad-field", "occurred_at"),
    ],
    ids=[
        "huge-int-dropped",
        "huge-negative-int",
        "huge-int-kept",
        "nan",
        "infinity",
        "event-type",
        "scope-id",
        "occurred-at",
    ],
)
async def test_hostile_numbers_and_text_in_a_publish_are_400_not_500(
    envelope_json: str, code: str, said: str
) -> None:
    async with running_router() as router, router.stream() as stream:
        response = await router.client.post(
            "/api/v1/events", content=raw_body(envelope_json), headers=JSON_HEADERS
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert said in error["message"]
        await router.publish(content("n1", 42))
        await stream.events_count(1)
        assert [d["content_version"] for d in stream.data()] == [42]


STREAMS_DOC = Path(__file__).resolve().parent.parent / "docs" / "streams.md"
BODY_PROBLEMS = frozenset({"bad-json", "empty-batch"})


def without(name: str) -> str:
    envelope = content("n1")
    del envelope[name]
    return json.dumps(envelope)


# One publish body for each 400 code, to show the router produces every code it documents.
PUBLISH_400_EXAMPLES = {
    "bad-json": "{nope",
    "empty-batch": "[]",
    "not-an-object": "[1]",
    "missing-field": without("scope"),
    "bad-field": json.dumps({**content("n1"), "event_id": 7}),
    "unroutable": json.dumps({**content("n1"), "scope": {}}),
    "unknown-type": json.dumps({**content("n1"), "event_type": "Content.Deleted"}),
    "invalid-payload": json.dumps(content("n1", -1)),
    "unencodable": with_payload_field(content("n1"), "summary", '"\\ud800"'),
}


def test_the_documented_publish_codes_are_exactly_those_the_router_produces() -> None:
    section = STREAMS_DOC.read_text().split("## `POST /api/v1/events`")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE))
    assert documented == BODY_PROBLEMS | PUBLISH_PROBLEMS == set(PUBLISH_400_EXAMPLES)


@pytest.mark.parametrize(("code", "body"), PUBLISH_400_EXAMPLES.items())
async def test_every_documented_publish_code_is_produced(code: str, body: str) -> None:
    async with running_router() as router:
        response = await router.client.post(
            "/api/v1/events", content=body.encode(), headers=JSON_HEADERS
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert ("parameter" in error) is (code not in BODY_PROBLEMS)


async def test_too_large_a_batch_is_413() -> None:
    async with running_router(publish_max_batch=2) as router:
        response = await router.client.post(
            "/api/v1/events", json=[content("n1")] * 3, headers=PUBLISHER
        )
    assert response.status_code == 413


async def test_a_stream_outlives_quarts_response_timeout() -> None:
    async with running_router(heartbeat_seconds=0.02) as router:
        router.running.app.config["RESPONSE_TIMEOUT"] = 0.1
        async with router.stream() as stream:
            await stream.read_until(lambda s: s.comments.count("") >= 15 or s.ended)
            assert not stream.ended


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    received = b""
    with trio.fail_after(20):  # a hang guard: the server must close
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
    ],
)
async def test_the_server_closes_a_connection_the_client_asked_to_close(
    request_line: bytes,
) -> None:
    async with running_router() as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(request_line)
            response = await read_to_eof(stream)
    assert response.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    assert response.endswith(b'"status":"ok","version":"0.1.0"}\n')


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with running_router(keep_alive_seconds=0.1) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await read_to_eof(stream)
    assert response.startswith(b"HTTP/1.1 200")


SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def date_of(response: bytes) -> bytes:
    return next(line for line in response.split(b"\r\n") if line.lower().startswith(b"date:"))


@pytest.mark.parametrize(
    "ambiguous",
    [
        pytest.param(  # CL.TE: a front end that frames by Content-Length forwards it all
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="CL.TE",
        ),
        pytest.param(  # TE.CL: the length covers less than the chunked body
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            id="TE.CL",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="GET",
        ),
    ],
)
async def test_a_request_framed_two_ways_is_400_and_the_connection_closes(
    ambiguous: bytes,
) -> None:
    """Both Content-Length and Transfer-Encoding: whatever a proxy in front took for the body,
    nothing after this request is answered on this connection (RFC 9112, section 6.1)."""
    async with running_router() as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(ambiguous + SMUGGLED)  # in one segment
            response = await read_to_eof(stream)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(ambiguous)
            await stream.send_all(SMUGGLED)  # and in a second write
            split = await read_to_eof(stream)
    assert response.startswith(b"HTTP/1.1 400")
    assert response.count(b"HTTP/1.1 ") == 1  # the smuggled request got no answer
    _, _, body = response.partition(b"\r\n\r\n")
    assert json.loads(body)["error"]["code"] == "ambiguous-framing"
    assert split == response.replace(date_of(response), date_of(split))


async def test_a_chunk_not_closed_by_crlf_is_refused_and_what_follows_is_not_answered() -> None:
    """h11 before 0.16 took any two bytes for a chunk's closing CRLF (CVE-2025-43859): a proxy
    that reads on to the next CRLF forwards ``XX`` and what follows as this body, and the router
    answered it as the next request. pyproject.toml's h11 floor is what holds this."""
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with running_router() as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(
                b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhelloXX0\r\n\r\n" + smuggled
            )
            response = await read_to_eof(stream)
    assert response.startswith(b"HTTP/1.1 400")  # hypercorn's, before the app reads a byte
    assert response.count(b"HTTP/1.1 ") == 1  # the smuggled request got no answer


async def test_head_of_the_stream_answers_the_headers_and_opens_no_session() -> None:
    async with running_router(max_streams_per_user=1) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        path = f"/api/v1/events/stream?token={token(novels=['n1'])}"
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(
                f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            response = await read_to_eof(stream)
        assert len(router.running.hub.registry) == 0
        async with router.stream() as after:  # the one slot of the per-user cap is free
            assert after.response is not None
            assert after.response.status_code == 200
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/event-stream; charset=utf-8" in head.lower()
    assert b"x-server-version: " in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # the pipelined request is answered, and next
    assert rest.endswith(b'"status":"ok","version":"0.1.0"}\n')


async def test_head_of_the_stream_is_checked_like_a_get_and_takes_no_allowance() -> None:
    async with running_router(connects_per_minute=1, max_streams_per_user=1) as router:
        refused = await router.client.head(STREAM_PATH)
        assert refused.status_code == 401
        forbidden = await router.client.head(
            STREAM_PATH, params={"novel_id": "n2"}, headers=auth(novels=["n1"])
        )
        assert forbidden.status_code == 403
        for _ in range(3):  # only asks the connect rate: the one new stream a minute is left
            assert (await router.client.head(STREAM_PATH, headers=auth())).status_code == 200
        async with router.stream() as stream:
            assert stream.response is not None
            assert stream.response.status_code == 200
            capped = await router.client.head(STREAM_PATH, headers=auth("u1"))
            assert capped.status_code == 429
            assert capped.headers["retry-after"] == "10"
        limited = await router.client.head(STREAM_PATH, headers=auth("u1"))
        assert limited.status_code == 429  # as a GET would be now
        assert int(limited.headers["retry-after"]) >= 59


def test_the_session_buffer_in_bytes_is_a_size_with_a_default() -> None:
    assert parse_serve(["--session-buffer-bytes", "256K"], {}).session_buffer_bytes == 256 * 1024
    assert parse_serve([], {}).session_buffer_bytes == DEFAULT_INBOX_MAX_BYTES
    assert parse_serve(["--session-buffer-bytes", "0"], {}).session_buffer_bytes == 0


@pytest.mark.parametrize(("buffer_bytes", "session_buffer_bytes"), [(4096, 4096), (0, None)])
async def test_the_session_settings_travel_from_the_config_to_each_session(
    buffer_bytes: int, session_buffer_bytes: int | None
) -> None:
    """``--session-buffer``, ``--session-buffer-bytes`` (0: no byte bound) and the retry hints
    reach the hub, which builds every session."""
    overrides = {
        "session_buffer": 7,
        "session_buffer_bytes": buffer_bytes,
        "retry_ms": 4321,
        "shutdown_retry_spread_ms": 55,
    }
    async with running_router(**overrides) as router, router.stream() as stream:
        assert stream.response is not None
        assert stream.response.status_code == 200
        (session,) = router.running.hub.registry
    assert session.settings == router.running.hub.settings.session
    assert (session.settings.session_buffer, session.settings.retry_ms) == (7, 4321)
    assert session.settings.session_buffer_bytes == session_buffer_bytes
    assert session.settings.shutdown_retry_spread_ms == 55


async def test_shutdown_says_goodbye_to_every_stream_then_stops() -> None:
    async with running_router() as router:
        async with router.stream() as first, router.stream() as second:
            router.shutdown.set()
            await first.to_the_end()
            await second.to_the_end()
            with pytest.raises(httpx.ConnectError):  # the listener is closed: nothing new
                await router.client.get("/healthz")
        for stream in (first, second):
            (goodbye,) = stream.events
            assert stream.data()[0]["code"] == "server-shutdown"
            assert goodbye.retry is not None
            assert 1000 <= goodbye.retry <= 6000


async def test_a_request_in_flight_when_shutdown_begins_gets_no_new_stream() -> None:
    async with running_router() as router:
        router.running.hub.close_sessions()  # the moment shutdown begins, before the server stops
        late = await router.client.get("/api/v1/events/stream", headers=auth(novels=["n1"]))
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "shutting-down"
    assert late.headers["retry-after"] == "1"


async def test_shutdown_is_bounded_even_with_a_client_that_stopped_reading() -> None:
    """hypercorn's socket writes cannot be cancelled; TCP_USER_TIMEOUT is what ends them."""
    async with running_router(stalled_client_seconds=0.5, shutdown_grace_seconds=0.5) as router:
        host, port = router.url.removeprefix("http://").rsplit(":", 1)
        stalled = trio.socket.socket()
        stalled.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await stalled.connect((host, int(port)))
        with stalled:
            await stalled.send(
                f"GET /api/v1/events/stream?token={token(novels=['n1'])} HTTP/1.1\r\n"
                "Host: x\r\n\r\n".encode()
            )
            await stalled.recv(1)
            (session,) = router.running.hub.registry
            big = [content("n1", n, summary="x" * 5000) for n in range(10)]
            while session.close_reason is None:  # fill every buffer up to the stalled client
                await router.publish(*big)
            router.shutdown.set()
            with trio.fail_after(20):  # a hang guard, not a measurement
                await router.stopped.wait()


async def test_sigterm_drains_the_streams_and_exits_zero_logging_json_lines() -> None:
    command = [sys.executable, "-m", "router.cli", "serve", "--port", "0"]
    environ = {**os.environ, "SSE_ROUTER_JWT_SECRET": SECRET}
    query_token = token(novels=["n1"])
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environ) as process:
        try:
            assert process.stdout is not None
            logged: list[dict[str, object]] = []
            while not logged or logged[-1]["event"] != "router listening":
                line = await trio.to_thread.run_sync(process.stdout.readline)
                logged.append(json.loads(line))
            (url,) = logged[-1]["addresses"]  # type: ignore[misc]
            path = "/api/v1/events/stream"
            async with open_stream(url, path, params={"token": query_token}) as response:
                assert response.status_code == 200
                received = b""
                async for chunk in response.chunks():
                    if not received:  # the stream is open: now stop the server, once
                        process.send_signal(signal.SIGTERM)
                    received += chunk
            code = await trio.to_thread.run_sync(lambda: process.wait(timeout=30))
            rest = await trio.to_thread.run_sync(process.stdout.read)
        finally:
            process.kill()
    assert code == 0
    events = parse_stream(received).events
    assert [e.event for e in events] == ["sse.error"]
    assert events[0].retry is not None
    assert 1000 <= events[0].retry <= 6000  # spread, so clients do not all return at once
    assert b'"code":"server-shutdown"' in received

    logged += [json.loads(line) for line in rest.splitlines()]  # every line is JSON
    names = [line["event"] for line in logged]
    assert names[0] == "router starting"
    assert {"stream opened", "stream closed", "router stopping"} <= set(names)
    (opened,) = [line for line in logged if line["event"] == "stream opened"]
    (closed,) = [line for line in logged if line["event"] == "stream closed"]
    assert opened["connection_id"] == closed["connection_id"]
    assert closed["reason"] == "server-shutdown"
    assert logged[0]["settings"]["jwt_secret"] == "<redacted>"  # type: ignore[index]
    everything = "\n".join(map(json.dumps, logged))
    assert query_token not in everything
    assert SECRET not in everything


async def test_an_unexpected_failure_is_a_json_500_and_the_router_carries_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_router() as router:

        async def broken(*args: object) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(router.running.hub, "open", broken)
        response = await router.client.get("/api/v1/events/stream", headers=auth(novels=["n1"]))
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal"
        assert "boom" not in response.text  # details stay in the log
        assert "unexpected error in GET /api/v1/events/stream" in caplog.text
        monkeypatch.undo()
        assert (await router.client.get("/healthz")).status_code == 200
