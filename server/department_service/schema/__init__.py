"""The department database's versioned schema: `create` makes or upgrades it, `check` verifies it.

Version N is the file `v<N>.sql` beside this module and takes a database from N-1 to N (v1
from nothing). The control plane's database step calls `create`; the service's health check
calls `check`. Both open the file themselves and close it before returning.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

SCHEMA_VERSION = 2
"""The version this code creates and the service expects."""

TABLES = frozenset({"schema_version", "workflow_executions", "outbox", "files", "records"})


class SchemaError(Exception):
    """The database could not be created or upgraded; `retryable` if trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def connect(db_path: Path, *, create: bool = False) -> sqlite3.Connection:
    """Open the department database in autocommit mode with foreign keys enforced.

    Without `create` a missing file is an error rather than a new empty database: the
    service must never paper over a database step that did not run.
    """
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"{db_path.absolute().as_uri()}?mode={mode}",
        uri=True,
        isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        timeout=5.0,  # wait this long for another writer before "database is locked"
    )
    try:
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def create(db_path: Path) -> int:
    """Create the database (or bring it up to date) and return its schema version.

    Idempotent and safe to race: the version is read and every missing step applied inside
    one write transaction, so a second caller waits and then finds nothing to do. A database
    from a newer release is refused rather than downgraded.
    """
    try:
        conn = connect(db_path, create=True)
    except sqlite3.Error as exc:
        raise SchemaError(f"cannot open {db_path}: {exc}", retryable=True) from exc
    try:
        _use_wal(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = _version(conn)
            if current > SCHEMA_VERSION:
                raise SchemaError(f"{db_path} is at schema version {current}, newer than {SCHEMA_VERSION}")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _statements(_script(version)):
                    conn.execute(statement)
            if current != SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may already have ended it
                conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:  # locked, busy, disk I/O: worth another attempt
        raise SchemaError(f"cannot create {db_path}: {exc}", retryable=True) from exc
    except sqlite3.Error as exc:
        raise SchemaError(f"cannot create {db_path}: {exc}") from exc
    finally:
        conn.close()
    return SCHEMA_VERSION


def check(db_path: Path) -> str | None:
    """None if the database can be opened and is at the expected version, else one line saying why not."""
    if not db_path.is_file():
        return f"{db_path.name} does not exist"
    try:
        conn = connect(db_path)
        try:
            found = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_version" not in found:
                return "schema_version table is missing"
            version = _version(conn)
            missing = sorted(TABLES - found)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"database unreachable: {exc}"
    if version != SCHEMA_VERSION:
        return f"schema version is {version}, expected {SCHEMA_VERSION}"
    if missing:
        return f"tables missing: {', '.join(missing)}"
    return None


def _use_wal(conn: sqlite3.Connection, patience: float = 5.0) -> None:
    """Put the file in WAL mode, so readers (health checks, listings) never wait for the writer.

    The mode is stored in the file and cannot be changed inside a transaction. While another
    connection is changing it too, SQLite answers "database is locked" at once, without
    calling its busy handler (the connection's timeout), so the wait is here.
    """
    deadline = time.monotonic() + patience
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _script(version: int) -> str:
    return Path(__file__).with_name(f"v{version}.sql").read_text(encoding="utf-8")


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements, so they run inside our transaction.

    (`executescript` would commit the open transaction first.)
    """
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if any(line.strip() and not line.strip().startswith("--") for line in buffer.splitlines()):
        raise SchemaError(f"unterminated statement at the end of the schema script: {buffer.strip()[:60]}")
