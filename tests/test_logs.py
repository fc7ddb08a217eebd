"""The log format: JSON lines with the event's fields, credentials redacted, levels respected."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from router.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_json_lines_carry_the_fields_and_redact_credentials(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("actors.hub").info(
        "stream closed", extra={"connection_id": "c1", "events_sent": 3, "token": "abc.def.ghi"}
    )
    logging.getLogger("actors.hub").debug("not at info level")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "stream closed"
    assert record["level"] == "info"
    assert record["logger"] == "actors.hub"
    assert record["connection_id"] == "c1"
    assert record["events_sent"] == 3
    assert record["token"] == "<redacted>"
    assert "timestamp" in record


def test_exceptions_are_rendered_into_the_line(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("actors.hub").exception("session failed")
    record = json.loads(out.getvalue())
    assert "RuntimeError: boom" in record["exception"]


def test_the_console_format_is_for_people(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("debug", "console", stream=out)
    logging.getLogger("router.server").info("router listening", extra={"port": 8000})
    text = out.getvalue()
    assert "router listening" in text
    assert "port=8000" in text
