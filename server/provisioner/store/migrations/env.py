"""Alembic environment: migrations always run on a connection handed in by the store."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from provisioner.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through provisioner.store.migrations.upgrade_to_head")

if connection.dialect.name == "postgresql":
    # Replicas starting together must not race each other through the DDL.
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(7238541)"))

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
