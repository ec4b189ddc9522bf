"""Statements compiled once, their rows sent straight to the driver's `executemany`.

The group-commit writer sends the same few statements with hundreds of rows per batch.
Executed as SQLAlchemy Core, each row goes through the generic parameter machinery
(`construct_params`, per-bind lookups) before its type conversions; profiled under
`bench/api.py` that was the largest part of a batch. A `Prepared` statement keeps the
compiled SQL, the order of its positional parameters and each one's bind processor (the
conversions SQLAlchemy applies: JSON to text, datetimes to the dialect's format), and
turns each row into the driver's tuple in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None


class Prepared:
    """`statement` compiled for `dialect` (positional paramstyles: sqlite, asyncpg)."""

    def __init__(
        self, statement: sa.ClauseElement, dialect: Dialect, keys: Sequence[str] | None = None
    ) -> None:
        if not dialect.positional:
            raise ValueError(f"{dialect.name}: prepared statements need a positional paramstyle")
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        names = compiled.positiontup or []
        binds = compiled.binds
        self._order: list[tuple[str, _Processor]] = [
            (name, binds[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
        ]

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[name] if process is None else process(row[name]) for name, process in self._order)

    async def executemany(
        self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]
    ) -> sa.CursorResult[Any]:
        return await conn.exec_driver_sql(self.sql, [self.params(row) for row in rows])


class PreparedInserts:
    """INSERTs into one table, compiled once per set of columns given."""

    def __init__(self, table: sa.Table, dialect: Dialect) -> None:
        self._table = table
        self._dialect = dialect
        self._by_keys: dict[tuple[str, ...], Prepared] = {}

    async def executemany(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for keys, group in groups.items():
            prepared = self._by_keys.get(keys)
            if prepared is None:
                prepared = self._by_keys[keys] = Prepared(self._table.insert(), self._dialect, keys)
            await prepared.executemany(conn, group)
