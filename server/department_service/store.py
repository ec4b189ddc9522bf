"""The department database as the service uses it: record an execution, list recent ones.

Two stores answer the same `Store` protocol: `SqliteStore` (the embedded default: the
department's own `data.db`) and `postgres.PostgresStore` (a schema under row-level
security on a shared PostgreSQL, reached as the department's own login role).

Each call opens its own connection and closes it before returning: requests run on their
own threads, a connection is cheap to open, and nothing stays open while the service idles.
Driver errors are translated here into DatabaseUnavailable (503, retryable).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from department_service import schema
from department_service.actions import Effect, to_json
from department_service.errors import DatabaseUnavailable
from department_service.mail import Delivery

_INSERT_EXECUTION = (
    "INSERT INTO workflow_executions (id, workflow, received_at, status, request, result)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_EFFECT = {
    "outbox": "INSERT INTO outbox (id, execution_id, created_at, recipient, subject, body, status)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)",
    "files": "INSERT INTO files"
    " (id, execution_id, created_at, folder, name, content_type, size, sha256, content)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "records": "INSERT INTO records (id, execution_id, created_at, data) VALUES (?, ?, ?, ?)",
}
_SETTLE_MESSAGE = "UPDATE outbox SET status = ?, reply = ?, settled_at = ? WHERE id = ?"
_SETTLE_EXECUTION = "UPDATE workflow_executions SET status = ?, result = ? WHERE id = ?"
_FILES = (
    "SELECT id, execution_id, created_at, folder, name, content_type, size, sha256 FROM files"
    " WHERE (? IS NULL OR folder = ?) ORDER BY created_at DESC, rowid DESC LIMIT ?"
)
_FILE = "SELECT content_type, sha256, name, content FROM files WHERE id = ?"
# rowid breaks ties between executions received in the same microsecond.
_RECENT = (
    "SELECT id, workflow, received_at, status, request, result FROM workflow_executions"
    " ORDER BY received_at DESC, rowid DESC LIMIT ?"
)
_RECENT_OF = (
    "SELECT id, workflow, received_at, status, request, result FROM workflow_executions"
    " WHERE workflow = ? ORDER BY received_at DESC, rowid DESC LIMIT ?"
)


@dataclass(frozen=True)
class Execution:
    """One webhook call: `request` is the JSON text received, `result` what was answered."""

    id: str
    workflow: str
    received_at: str
    status: str
    request: str
    result: dict[str, object]

    def row(self) -> tuple[str, ...]:
        """The values of its `workflow_executions` row, in the columns' order."""
        return (self.id, self.workflow, self.received_at, self.status, self.request, to_json(self.result))

    def settled_row(self) -> tuple[str, ...]:
        """The values of `_SETTLE_EXECUTION`: its final status and result, then its id."""
        return (self.status, to_json(self.result), self.id)

    def effect_row(self, effect: Effect, effect_id: str | None) -> tuple[object, ...]:
        """The values of its action's row: id, execution id, creation time, then the action's own."""
        return (effect_id, self.id, self.received_at, *effect.values)


def listed(
    row: Sequence[object], *, received_at: object, request: object, result: object
) -> dict[str, object]:
    """An execution as `/executions` lists it, from a row read back (the store decodes the rest)."""
    return {
        "id": row[0],
        "workflow": row[1],
        "received_at": received_at,
        "status": row[3],
        "request": request,
        "result": result,
    }


@dataclass(frozen=True)
class StoredFile:
    """One google_drive file's bytes and what to serve them as (a version-1 entry has none)."""

    content_type: str
    sha256: str
    name: str
    content: bytes


def listed_file(row: Sequence[object], created_at: object) -> dict[str, object]:
    """A file as `/files` lists it (without its bytes)."""
    keys = ("id", "execution_id", "created_at", "folder", "name", "content_type", "size", "sha256")
    return {**dict(zip(keys, row, strict=True)), "created_at": created_at}


def stored_file(row: Sequence[object] | None) -> StoredFile | None:
    """The file of a `_FILE` row; None for no row, or an entry from schema version 1 (no bytes)."""
    if row is None or not isinstance(row[3], bytes | memoryview):
        return None
    return StoredFile(str(row[0]), str(row[1]), str(row[2]), bytes(row[3]))


class Store(Protocol):
    def record(self, execution: Execution, effect: Effect | None, effect_id: str | None = None) -> None:
        """Insert the execution and its action's row (if any) in one transaction: both or neither."""

    def settle_message(self, message_id: str, delivery: Delivery, at: str, execution: Execution) -> None:
        """Record what became of an outbox message, and its execution's final status and result,
        in one transaction."""

    def recent(self, workflow: str | None, limit: int) -> list[dict[str, object]]:
        """The latest `limit` executions (of `workflow`, or of all), newest first."""

    def files(self, folder: str | None, limit: int) -> list[dict[str, object]]:
        """The latest `limit` google_drive files (in `folder`, or in all), newest first."""

    def file(self, file_id: str) -> StoredFile | None:
        """One file with its bytes, or None if there is no such file (or it has no content)."""

    def check(self) -> str | None:
        """None if the database is reachable and at the expected version, else one line saying why not."""


class SqliteStore:
    """Reads and writes one department's `data.db` (which it never creates)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def record(self, execution: Execution, effect: Effect | None, effect_id: str | None = None) -> None:
        """Insert the execution and its action's row (if any) in one transaction: both or neither."""
        writes: list[tuple[str, Sequence[object]]] = [(_INSERT_EXECUTION, execution.row())]
        if effect is not None:
            writes.append((_INSERT_EFFECT[effect.table], execution.effect_row(effect, effect_id)))
        self._write(writes)

    def settle_message(self, message_id: str, delivery: Delivery, at: str, execution: Execution) -> None:
        self._write(
            [
                (_SETTLE_MESSAGE, (delivery.status, delivery.reply, at, message_id)),
                (_SETTLE_EXECUTION, execution.settled_row()),
            ]
        )

    def _write(self, writes: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run the statements in one transaction: all or none."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not halfway through
            try:
                for statement, values in writes:
                    conn.execute(statement, values)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may already have ended it
                    conn.execute("ROLLBACK")
                raise

    def recent(self, workflow: str | None, limit: int) -> list[dict[str, object]]:
        """The latest `limit` executions (of `workflow`, or of all), newest first."""
        with self._connection() as conn:
            if workflow is None:
                rows = conn.execute(_RECENT, (limit,)).fetchall()
            else:
                rows = conn.execute(_RECENT_OF, (workflow, limit)).fetchall()
        return [
            listed(row, received_at=row[2], request=json.loads(row[4]), result=json.loads(row[5]))
            for row in rows
        ]

    def files(self, folder: str | None, limit: int) -> list[dict[str, object]]:
        with self._connection() as conn:
            rows = conn.execute(_FILES, (folder, folder, limit)).fetchall()
        return [listed_file(row, row[2]) for row in rows]

    def file(self, file_id: str) -> StoredFile | None:
        with self._connection() as conn:
            return stored_file(conn.execute(_FILE, (file_id,)).fetchone())

    def check(self) -> str | None:
        return schema.check(self.db_path)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = schema.connect(self.db_path)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"the department database cannot be opened: {exc}") from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"the department database failed: {exc}") from exc
        finally:
            conn.close()
