"""`PostgresStore`: the department's data in its schema on a shared PostgreSQL.

The control plane's PostgreSQL database step (`provisioner.steps.tenant_postgres`) made a
login role and a schema of the same name, with the role's defaults set so that a plain
connection lands in the right place: `search_path` is the department's schema and
`app.department_id` is the department, which every table's row-level security policy
compares with each row. The service connects as that role (its URL comes from the
`DATABASE_URL` environment variable, never the command line) and so can reach its own
rows and nothing else; names in the SQL below are unqualified on purpose.

psycopg is imported lazily: the embedded default runs on the standard library alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from department_service import schema
from department_service.actions import Effect
from department_service.errors import DatabaseUnavailable
from department_service.mail import Delivery
from department_service.store import Execution, StoredFile, listed, listed_file, stored_file

URL_SCHEMES = ("postgresql://", "postgres://")
_CONNECT_TIMEOUT = 5
#: A request never waits longer than this on a statement (a lock held elsewhere, say).
_STATEMENT_TIMEOUT_MS = 5000

_INSERT_EXECUTION = (
    "INSERT INTO workflow_executions (id, workflow, received_at, status, request, result)"
    " VALUES (%s, %s, %s::timestamptz, %s, %s::jsonb, %s::jsonb)"
)
_INSERT_EFFECT = {
    "outbox": "INSERT INTO outbox (id, execution_id, created_at, recipient, subject, body, status)"
    " VALUES (%s, %s, %s::timestamptz, %s, %s, %s, %s)",
    "files": "INSERT INTO files"
    " (id, execution_id, created_at, folder, name, content_type, size, sha256, content)"
    " VALUES (%s, %s, %s::timestamptz, %s, %s, %s, %s, %s, %s)",
    "records": "INSERT INTO records (id, execution_id, created_at, data)"
    " VALUES (%s, %s, %s::timestamptz, %s::jsonb)",
}
_SETTLE_MESSAGE = "UPDATE outbox SET status = %s, reply = %s, settled_at = %s::timestamptz WHERE id = %s"
_SETTLE_EXECUTION = "UPDATE workflow_executions SET status = %s, result = %s::jsonb WHERE id = %s"
# id breaks ties between executions received in the same microsecond (PostgreSQL has no rowid).
_RECENT = (
    "SELECT id, workflow, received_at, status, request, result FROM workflow_executions"
    " ORDER BY received_at DESC, id DESC LIMIT %s"
)
_RECENT_OF = (
    "SELECT id, workflow, received_at, status, request, result FROM workflow_executions"
    " WHERE workflow = %s ORDER BY received_at DESC, id DESC LIMIT %s"
)
_FILES = (
    "SELECT id, execution_id, created_at, folder, name, content_type, size, sha256 FROM files"
    " WHERE (%s::text IS NULL OR folder = %s) ORDER BY created_at DESC, id DESC LIMIT %s"
)
_FILE = "SELECT content_type, sha256, name, content FROM files WHERE id = %s"
_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"


def is_postgres_url(url: str) -> bool:
    return url.startswith(URL_SCHEMES)


def _timestamp(value: datetime) -> str:
    """The same fixed-width UTC text the SQLite store keeps, so both answer alike."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PostgresStore:
    """Reads and writes one department's schema as the department's own role."""

    def __init__(self, url: str, department_id: str) -> None:
        if not is_postgres_url(url):
            # The URL is not echoed: it holds the role's password.
            raise ValueError("DATABASE_URL must start with postgresql:// or postgres://")
        try:
            import psycopg  # noqa: F401  (fail at start, not at the first request)
        except ImportError as exc:
            raise ValueError("DATABASE_URL names PostgreSQL but psycopg is not installed") from exc
        self._url = url
        self.department_id = department_id

    def record(self, execution: Execution, effect: Effect | None, effect_id: str | None = None) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute(_INSERT_EXECUTION, execution.row())
            if effect is not None:
                conn.execute(_INSERT_EFFECT[effect.table], execution.effect_row(effect, effect_id))

    def settle_message(self, message_id: str, delivery: Delivery, at: str, execution: Execution) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute(_SETTLE_MESSAGE, (delivery.status, delivery.reply, at, message_id))
            conn.execute(_SETTLE_EXECUTION, execution.settled_row())

    def recent(self, workflow: str | None, limit: int) -> list[dict[str, object]]:
        with self._connection() as conn:
            if workflow is None:
                rows = conn.execute(_RECENT, (limit,)).fetchall()
            else:
                rows = conn.execute(_RECENT_OF, (workflow, limit)).fetchall()
        # jsonb comes back decoded already; timestamptz as a datetime.
        return [listed(row, received_at=_timestamp(row[2]), request=row[4], result=row[5]) for row in rows]

    def files(self, folder: str | None, limit: int) -> list[dict[str, object]]:
        with self._connection() as conn:
            rows = conn.execute(_FILES, (folder, folder, limit)).fetchall()
        return [listed_file(row, _timestamp(row[2])) for row in rows]

    def file(self, file_id: str) -> StoredFile | None:
        with self._connection() as conn:
            return stored_file(conn.execute(_FILE, (file_id,)).fetchone())

    def check(self) -> str | None:
        try:
            with self._connection() as conn:
                setting = conn.execute("SELECT current_setting('app.department_id', true)").fetchone()
                found = {row[0] for row in conn.execute(_TABLES).fetchall()}
                version = None
                if "schema_version" in found:
                    version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        except DatabaseUnavailable as exc:
            return exc.message
        if setting is None or setting[0] != self.department_id:
            # Row-level security would hide every row: say so rather than serve empty lists.
            return "the database role's app.department_id is not this department"
        if "schema_version" not in found:
            return "schema_version table is missing"
        if version is None or version[0] != schema.SCHEMA_VERSION:
            return f"schema version is {version and version[0]}, expected {schema.SCHEMA_VERSION}"
        missing = sorted(schema.TABLES - found)
        if missing:
            return f"tables missing: {', '.join(missing)}"
        return None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        import psycopg

        try:
            conn = psycopg.connect(
                self._url,
                connect_timeout=_CONNECT_TIMEOUT,
                autocommit=True,  # transactions are explicit: conn.transaction()
                options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
                application_name=f"department_service:{self.department_id}",
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"the department database cannot be reached: {_describe(exc)}") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"the department database failed: {_describe(exc)}") from exc
        finally:
            conn.close()


def _describe(exc: Exception) -> str:
    """The error's class and SQLSTATE: driver messages can quote the connection string."""
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
