"""Tables of the job store. Alembic migrations create them; queries use these objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

departments = sa.Table(
    "departments",
    metadata,
    sa.Column("department_id", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("current_job_id", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The replica keeping the department's resources on its own machine (embedded steps);
    # None when they live in shared systems any replica can reach (migration 0003).
    sa.Column("home", sa.String(64), nullable=True),
    sa.Index(None, "status", "department_id"),
    sa.Index(None, "region", "department_id"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("department_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True, unique=True),
    # The creating call's W3C traceparent (version 00 is 55 characters).
    sa.Column("trace_parent", sa.String(64), nullable=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("cleanup", sa.JSON, nullable=True),
    sa.Column("last_sequence", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("deadline_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # Only this replica may run the job (its department's home); None: any replica whose
    # steps are shared.
    sa.Column("pinned_to", sa.String(64), nullable=True),
    sa.Index(None, "department_id", "created_at"),
    # ListJobs, newest first, without a department (migration 0006).
    sa.Index(None, "created_at", "job_id"),
    # At most one unfinished job of each kind per department, whatever replica asks.
    sa.Index(
        "uq_jobs_department_unfinished",
        "department_id",
        "kind",
        unique=True,
        sqlite_where=sa.text("finished_at IS NULL"),
        postgresql_where=sa.text("finished_at IS NULL"),
    ),
    sa.Index(
        "ix_jobs_claimable",
        "lease_expires_at",
        sqlite_where=sa.text("finished_at IS NULL"),
        postgresql_where=sa.text("finished_at IS NULL"),
    ),
)

job_steps = sa.Table(
    "job_steps",
    metadata,
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("resources", sa.JSON, nullable=False),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sequence", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("step", sa.String(32), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("department_id", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index(None, "department_id", "at"),
    # The rate limiter's start-up read: the last window of one action (migration 0002).
    sa.Index(None, "action", "at"),
    # ListAuditEvents by caller (migration 0006).
    sa.Index(None, "principal", "at"),
)

department_secrets = sa.Table(
    "department_secrets",
    metadata,
    sa.Column("department_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("sealed", sa.Text, nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("client_id", sa.String(128), nullable=True),
    sa.Column("secret_sha256", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

#: Facts about the store as a whole that every replica must agree on (the encryption
#: key's id, which replica holds embedded resources), set once and checked at start.
store_settings = sa.Table(
    "store_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

#: Where each routed department's `/departments/<id>/` leads; every replica's Envoy is
#: written from this table (`steps.gateway`).
department_routes = sa.Table(
    "department_routes",
    metadata,
    sa.Column("department_id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("tls", sa.Boolean, nullable=False),
    sa.Column("replica", sa.String(64), nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

#: The API's rate-limit admissions, `at` in seconds since the epoch; every replica counts
#: the same windows (`store.admissions`).
rate_admissions = sa.Table(
    "rate_admissions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("bucket", sa.String(32), nullable=False),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index(None, "bucket", "principal", "at"),
)

#: Webhook messages waiting to be sent, sent, or given up on (`webhooks`). A message is
#: inserted in the transaction that commits the event it tells of, so none is lost and
#: none is made for a fact that was not committed.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("department_id", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(36), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("failed_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.String(300), nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Index(
        "ix_webhook_outbox_due",
        "next_attempt_at",
        sqlite_where=sa.text("delivered_at IS NULL AND failed_at IS NULL"),
        postgresql_where=sa.text("delivered_at IS NULL AND failed_at IS NULL"),
    ),
)
