"""The outbox in PostgreSQL, through psycopg 3 in worker threads.

Several relays may run at once: rows are split into parts by their scope key, and a relay takes a
part only under a transaction-level advisory lock, so no two relays publish the same rows, and
one key's rows are always published by one relay, in id order (what PostgreSQL's row locks with
SKIP LOCKED could not promise across a key's rows). A control row (a change of rights, which has
no scope key) is a barrier across the parts: no row written after it is claimed in any part until
it is published, so every event it must stop reaches the bus after it (docs/access-control.md).
New rows wake the relays through LISTEN/NOTIFY; a poll interval covers a missed notification.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from router.outbox.base import Claim

LOCK_SPACE = 0x55E0  # advisory lock namespace of the sse-router relays
_PART_OF = """
    mod(abs(hashtext(coalesce(envelope->'scope'->>'user_id', envelope->'scope'->>'novel_id',
                              envelope->'scope'->>'session_id', 'broadcast'))), {parts})
"""


def ddl(table: str) -> str:
    """The table, the index of rows still to publish, and the NOTIFY trigger."""
    check_table_name(table)
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    id           BIGSERIAL PRIMARY KEY,
    envelope     JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS {table}_unpublished ON {table} (id) WHERE published_at IS NULL;
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS {table}_notify ON {table};
CREATE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
"""


def check_table_name(table: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
        raise ValueError(f"an outbox table name is lower-case letters, digits and _, got {table!r}")
    return table


class PostgresOutbox:
    def __init__(self, dsn: str, table: str, *, parts: int, mark: bool = False) -> None:
        self.table = check_table_name(table)
        self.parts = parts
        self.mark = mark
        self._work = psycopg.connect(dsn)
        self._listen = psycopg.connect(dsn, autocommit=True)
        self._listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(table)))
        part_of = _PART_OF.format(parts=parts)
        # Rows of this part, up to the first control row still waiting in another part.
        self._select = sql.SQL(
            "SELECT id, envelope::text FROM {table} WHERE published_at IS NULL"
            f" AND {part_of} = %(part)s"
            " AND id < coalesce((SELECT min(id) FROM {table} WHERE published_at IS NULL"
            f" AND envelope ? 'control' AND {part_of} <> %(part)s), 9223372036854775807)"
            " ORDER BY id LIMIT %(limit)s"
        ).format(table=sql.Identifier(table))
        self._finish = sql.SQL(
            "UPDATE {} SET published_at = now() WHERE id = ANY(%s)"
            if mark
            else "DELETE FROM {} WHERE id = ANY(%s)"
        ).format(sql.Identifier(table))

    def claim(self, part: int, limit: int) -> Claim | None:
        connection = self._work
        locked = connection.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCK_SPACE, part)
        ).fetchone()
        if not locked or not locked[0]:
            connection.rollback()
            return None
        rows = connection.execute(self._select, {"part": part, "limit": limit}).fetchall()
        if not rows:
            connection.rollback()
            return Claim([])
        return Claim([(int(row[0]), str(row[1])) for row in rows], connection)

    def settle(self, claim: Claim) -> None:
        self._work.execute(self._finish, ([row_id for row_id, _ in claim.rows],))
        self._work.commit()

    def abandon(self, claim: Claim) -> None:
        self._work.rollback()

    def wait_for_rows(self, timeout: float) -> bool:
        return any(True for _ in self._listen.notifies(timeout=timeout, stop_after=1))

    def close(self) -> None:
        self._work.close()
        self._listen.close()
