"""Connections of the SQL store, with driver errors translated where they happen."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from provisioner.core.errors import StoreUnavailableError


@contextlib.asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction, committed when the block ends without an exception."""
    try:
        async with engine.begin() as conn:
            yield conn
    except (OperationalError, DBAPIError, OSError) as exc:
        raise StoreUnavailableError(f"job store unavailable: {exc.__class__.__name__}") from exc


@contextlib.asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    try:
        async with engine.connect() as conn:
            yield conn
    except (OperationalError, DBAPIError, OSError) as exc:
        raise StoreUnavailableError(f"job store unavailable: {exc.__class__.__name__}") from exc
