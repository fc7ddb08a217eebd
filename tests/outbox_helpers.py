"""Outbox tables for tests: a SQLite file, or a PostgreSQL schema of the test's own."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from router.outbox import postgres, sqlite

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def sqlite_outbox(directory: Path, table: str = "sse_outbox") -> Iterator[str]:
    """A SQLite file with the outbox table and a business table; yields its DSN."""
    path = directory / f"app-{secrets.token_hex(3)}.db"
    with sqlite3.connect(path) as db:
        db.executescript(sqlite.ddl(table))
        db.execute("CREATE TABLE chapters (id INTEGER PRIMARY KEY, title TEXT)")
    yield f"sqlite:///{path}"


def sqlite_business_transaction(
    dsn: str, envelopes: list[dict[str, Any]], *, commit: bool = True, table: str = "sse_outbox"
) -> None:
    """What a back end does: its own change and the events about it, in one transaction."""
    db = sqlite3.connect(dsn.removeprefix("sqlite:///"), isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute("INSERT INTO chapters (title) VALUES ('a chapter')")
        for envelope in envelopes:
            db.execute(f"INSERT INTO {table} (envelope) VALUES (?)", (json.dumps(envelope),))
        db.execute("COMMIT" if commit else "ROLLBACK")
    finally:
        db.close()


@contextmanager
def postgres_outbox() -> Iterator[tuple[str, str]]:
    """A schema of the test's own with the outbox table; yields (DSN, table), drops it after."""
    schema = f"sse_test_{secrets.token_hex(4)}"
    table = f"outbox_{secrets.token_hex(3)}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(postgres.ddl(table))
            db.execute("CREATE TABLE chapters (id BIGSERIAL PRIMARY KEY, title TEXT)")
        yield dsn, table
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def postgres_business_transaction(
    dsn: str, table: str, envelopes: list[dict[str, Any]], *, commit: bool = True
) -> None:
    with psycopg.connect(dsn) as db:
        db.execute("INSERT INTO chapters (title) VALUES ('a chapter')")
        for envelope in envelopes:
            db.execute(f"INSERT INTO {table} (envelope) VALUES (%s)", (json.dumps(envelope),))
        if commit:
            db.commit()
        else:
            db.rollback()


def postgres_rows(dsn: str, table: str) -> list[tuple[int, object]]:
    with psycopg.connect(dsn) as db:
        return [(r[0], r[1]) for r in db.execute(f"SELECT id, published_at FROM {table}")]
