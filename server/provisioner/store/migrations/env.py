"""Alembic environment: migrations always run on a connection handed in by the store."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from provisioner.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through provisioner.store.migrations.upgrade_to_head")

# Replicas starting together must not race each other through the DDL.
if connection.dialect.name == "postgresql":
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(7238541)"))
elif connection.dialect.name == "sqlite":
    # pysqlite runs DDL outside any transaction unless told: take the write lock first, so
    # a second replica waits, then finds the schema at head.
    connection.exec_driver_sql("BEGIN IMMEDIATE")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
