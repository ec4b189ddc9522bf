"""What several replicas must share lives in the job store.

- `department_secrets`: sealed OAuth client secrets and database role passwords were
  files in one replica's state directory; in the store every replica can resume, verify
  and undo the steps that use them.
- `store_settings`: what all replicas must agree on (the encryption key's id).
- `jobs.pinned_to` and `departments.home`: a department whose resources a replica keeps
  on its own machine (the embedded steps) is run only by that replica. Until now one
  replica ran everything, so existing departments and unfinished jobs get the replica
  that last held their job's lease.
- `department_routes`: the gateway's routes, from which every replica writes its Envoy's
  files (they were `route.json` files beside one replica's departments; a replica
  imports its own at start).
- `rate_admissions`: the API's rate-limit windows, counted by every replica together
  (they were rebuilt from the audit log in each replica's memory).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from provisioner.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "department_secrets",
        sa.Column("department_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("sealed", sa.Text, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("secret_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("department_id", "name", name="pk_department_secrets"),
    )
    op.create_table(
        "store_settings",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_store_settings"),
    )

    op.add_column("jobs", sa.Column("pinned_to", sa.String(64), nullable=True))
    op.add_column("departments", sa.Column("home", sa.String(64), nullable=True))
    op.execute("UPDATE jobs SET pinned_to = lease_owner WHERE finished_at IS NULL")
    op.execute(
        "UPDATE departments SET home = "
        "(SELECT lease_owner FROM jobs WHERE jobs.job_id = departments.current_job_id)"
    )

    op.create_table(
        "department_routes",
        sa.Column("department_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("tls", sa.Boolean, nullable=False),
        sa.Column("replica", sa.String(64), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("department_id", name="pk_department_routes"),
    )

    op.create_table(
        "rate_admissions",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rate_admissions"),
    )
    op.create_index(
        "ix_rate_admissions_bucket_principal_at", "rate_admissions", ["bucket", "principal", "at"]
    )


def downgrade() -> None:
    op.drop_table("rate_admissions")
    op.drop_table("department_routes")
    with op.batch_alter_table("departments") as batch:
        batch.drop_column("home")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pinned_to")
    op.drop_table("store_settings")
    op.drop_table("department_secrets")
