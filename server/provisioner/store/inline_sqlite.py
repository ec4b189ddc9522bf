"""SQLite for the async engine without a thread per connection.

aiosqlite runs every call on a thread of its own connection and hands the result back
through the event loop. For a store on a local file in WAL mode that hand-off costs far
more than the call: a statement takes microseconds, while each hand-off wakes the loop and
takes the GIL back from it. The sqlite3 module also releases the GIL around every row it
steps, so a batch of a few hundred rows on another thread waits behind the loop up to a
switch interval (5 ms) per row. Profiled under `bench/api.py`, that convoy was the
group-commit writer's largest cost.

So the store's SQLite connections run on the loop's own thread, behind the interface
SQLAlchemy's aiosqlite dialect drives (`create_async_engine(..., async_creator=...)`).
One thing may not run inline: waiting for a lock. Another connection (a transaction of
this process suspended at an `await`, or another replica on the same file) may hold
SQLite's write lock, and SQLite's own busy handler would sleep on the loop's thread,
stalling everything, possibly behind the very transaction it waits for. These connections
therefore have no busy timeout; a statement refused with SQLITE_BUSY is retried after an
`asyncio.sleep` (doubling from 1 ms to 50 ms) until `busy_timeout` seconds have passed,
which is what SQLite's busy handler does, without holding the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import make_url

_T = TypeVar("_T")

#: SQLITE_BUSY and SQLITE_BUSY_RECOVERY: another connection holds the lock for now.
#: (SQLITE_BUSY_SNAPSHOT is not retried: the transaction's snapshot is stale and waiting
#: cannot help; SQLite's busy handler does not wait for it either.)
_RETRIED = {sqlite3.SQLITE_BUSY, 261}


async def _patiently(call: Callable[[], _T], deadline_seconds: float) -> _T:
    """`call()`, retried while SQLite says another connection holds the lock."""
    deadline = time.monotonic() + deadline_seconds
    pause = 0.001
    while True:
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _RETRIED or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


class InlineCursor:
    """The part of aiosqlite's cursor that SQLAlchemy uses."""

    def __init__(self, connection: InlineConnection) -> None:
        self._owner = connection
        self._cursor = connection._connection.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        await _patiently(lambda: self._cursor.execute(sql, parameters), self._owner.busy_timeout)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        rows = list(parameters)  # retried as a whole: a refused statement changed nothing
        await _patiently(lambda: self._cursor.executemany(sql, rows), self._owner.busy_timeout)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    """The part of aiosqlite's connection that SQLAlchemy uses, run on the caller's thread."""

    def __init__(self, connection: sqlite3.Connection, busy_timeout: float) -> None:
        #: aiosqlite's name for the driver connection (SQLAlchemy's adapter checks it).
        self._connection = connection
        self.busy_timeout = busy_timeout

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def commit(self) -> None:
        await _patiently(self._connection.commit, self.busy_timeout)

    async def rollback(self) -> None:
        self._connection.rollback()

    async def close(self) -> None:
        self._connection.close()

    def stop(self) -> None:
        self._connection.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._connection.create_function(*args, **kwargs)


def inline_creator(
    url: str, *, busy_timeout: float = 30.0, autocommit: bool = False
) -> Callable[[], Awaitable[InlineConnection]]:
    """An `async_creator` for `create_async_engine(url)` on a `sqlite+aiosqlite` URL.

    With `autocommit` the connection leaves transactions to explicit BEGINs (the sqlite3
    module otherwise begins one only before the first change, after a batch's reads).
    """
    (database,), options = SQLiteDialect_pysqlite().create_connect_args(make_url(url))
    options = {**options, "check_same_thread": False}

    async def create() -> InlineConnection:
        connection = sqlite3.connect(database, **options)
        if autocommit:
            connection.isolation_level = None
        # Lock waits are the adapter's (see the module's docstring), never the loop's.
        connection.execute("PRAGMA busy_timeout=0")
        return InlineConnection(connection, busy_timeout)

    return create
