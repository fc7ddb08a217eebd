"""The outbox in SQLite, through the standard library's sqlite3 in worker threads.

SQLite has one writer at a time: a claim is an immediate transaction, so a second relay on the
same file waits rather than double-sends. Rows are taken in id order, which keeps every key's
order. There is no NOTIFY: the relay polls.
"""

from __future__ import annotations

import sqlite3
import time

from router.outbox.base import Claim
from router.outbox.postgres import check_table_name


def ddl(table: str) -> str:
    check_table_name(table)
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope     TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    published_at TEXT
);
CREATE INDEX IF NOT EXISTS {table}_unpublished ON {table} (id) WHERE published_at IS NULL;
"""


class SqliteOutbox:
    def __init__(self, path: str, table: str, *, mark: bool = False) -> None:
        self.table = check_table_name(table)
        self.mark = mark
        # Used from one worker thread at a time, never two at once.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")

    def claim(self, part: int, limit: int) -> Claim | None:
        if part != 0:
            return Claim([])  # one part: the file's single writer orders everything
        self._db.execute("BEGIN IMMEDIATE")
        rows = self._db.execute(
            f"SELECT id, envelope FROM {self.table} WHERE published_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        if not rows:
            self._db.execute("ROLLBACK")
            return Claim([])
        return Claim([(int(row[0]), str(row[1])) for row in rows])

    def settle(self, claim: Claim) -> None:
        ids = [row_id for row_id, _ in claim.rows]
        marks = ",".join("?" * len(ids))
        if self.mark:
            self._db.execute(
                f"UPDATE {self.table} SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                f"WHERE id IN ({marks})",
                ids,
            )
        else:
            self._db.execute(f"DELETE FROM {self.table} WHERE id IN ({marks})", ids)
        self._db.execute("COMMIT")

    def abandon(self, claim: Claim) -> None:
        self._db.execute("ROLLBACK")

    def wait_for_rows(self, timeout: float) -> bool:
        time.sleep(timeout)  # in a worker thread: SQLite has nothing to wait on
        return False

    def close(self) -> None:
        self._db.close()
