"""Indexes for ListJobs (newest first, across departments) and ListAuditEvents (by
caller).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_created_at_job_id", "jobs", ["created_at", "job_id"])
    op.create_index("ix_audit_log_principal_at", "audit_log", ["principal", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_principal_at", table_name="audit_log")
    op.drop_index("ix_jobs_created_at_job_id", table_name="jobs")
