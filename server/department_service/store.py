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

_INSERT_EXECUTION = (
    "INSERT INTO workflow_executions (id, workflow, received_at, status, request, result)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_EFFECT = {
    "outbox": "INSERT INTO outbox (id, execution_id, created_at, recipient, subject, body)"
    " VALUES (?, ?, ?, ?, ?, ?)",
    "files": "INSERT INTO files (id, execution_id, created_at, folder, name) VALUES (?, ?, ?, ?, ?)",
    "records": "INSERT INTO records (id, execution_id, created_at, data) VALUES (?, ?, ?, ?)",
}
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

    def effect_row(self, effect: Effect, effect_id: str | None) -> tuple[str | None, ...]:
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


class Store(Protocol):
    def record(self, execution: Execution, effect: Effect | None, effect_id: str | None = None) -> None:
        """Insert the execution and its action's row (if any) in one transaction: both or neither."""

    def recent(self, workflow: str | None, limit: int) -> list[dict[str, object]]:
        """The latest `limit` executions (of `workflow`, or of all), newest first."""

    def check(self) -> str | None:
        """None if the database is reachable and at the expected version, else one line saying why not."""


class SqliteStore:
    """Reads and writes one department's `data.db` (which it never creates)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def record(self, execution: Execution, effect: Effect | None, effect_id: str | None = None) -> None:
        """Insert the execution and its action's row (if any) in one transaction: both or neither."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not halfway through
            try:
                conn.execute(_INSERT_EXECUTION, execution.row())
                if effect is not None:
                    conn.execute(_INSERT_EFFECT[effect.table], execution.effect_row(effect, effect_id))
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
