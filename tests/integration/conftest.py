"""Fixtures of the integration tier: the real job store on SQLite and on PostgreSQL.

The PostgreSQL server (`postgres_server`, `postgres_url`) comes from tests/postgres.py,
through tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.store.sql import SqlJobStore


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty job store database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/jobs.db"
    # Looked up lazily so that a SQLite-only run never starts PostgreSQL.
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def sql_store(store_url: str) -> AsyncIterator[SqlJobStore]:
    """An initialized `SqlJobStore` on `store_url`, closed after the test."""
    store = SqlJobStore(store_url)
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()
