"""The department database template: create is idempotent and safe to race, check says what is wrong."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from department_service import schema


def test_create_makes_every_table_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "data.db"

    assert schema.create(db) == schema.SCHEMA_VERSION == 2

    conn = sqlite3.connect(db)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == set(schema.TABLES)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    conn.close()
    assert schema.check(db) is None


def test_create_is_idempotent_and_keeps_the_data(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    schema.create(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO workflow_executions VALUES ('e1', 'w', 't', 'succeeded', '{}', '{}')")
    conn.commit()
    conn.close()

    assert schema.create(db) == 2
    assert schema.create(db) == 2

    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    assert conn.execute("SELECT id FROM workflow_executions").fetchall() == [("e1",)]
    conn.close()
    assert schema.check(db) is None


def test_concurrent_creates_all_succeed_once(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: schema.create(db), range(8))) == [schema.SCHEMA_VERSION] * 8
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    conn.close()


def test_foreign_keys_are_enforced_on_service_connections(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    schema.create(db)
    conn = schema.connect(db)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO records VALUES ('r1', 'no-such-execution', 't', '{}')")
    conn.close()


def test_connect_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        schema.connect(tmp_path / "data.db")
    assert not (tmp_path / "data.db").exists()


def _sql(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_check_says_what_is_wrong(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    assert schema.check(db) == "data.db does not exist"

    _sql(db, "CREATE TABLE other (x)")
    assert schema.check(db) == "schema_version table is missing"

    schema.create(db)
    _sql(db, "UPDATE schema_version SET version = 7")
    assert schema.check(db) == "schema version is 7, expected 2"

    _sql(db, "UPDATE schema_version SET version = 2", "DROP TABLE files")
    assert schema.check(db) == "tables missing: files"

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all, not even close" * 100)
    assert (schema.check(garbage) or "").startswith("database unreachable: ")


def test_create_refuses_a_newer_database(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    schema.create(db)
    _sql(db, "UPDATE schema_version SET version = 3")

    with pytest.raises(schema.SchemaError, match="newer than 2") as caught:
        schema.create(db)
    assert not caught.value.retryable
    assert schema.check(db) == "schema version is 3, expected 2"


def test_create_reports_an_unusable_path(tmp_path: Path) -> None:
    with pytest.raises(schema.SchemaError, match="cannot") as caught:
        schema.create(tmp_path / "missing-dir" / "data.db")
    assert caught.value.retryable
