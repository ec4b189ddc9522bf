"""Builders shared by the unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provisioner.core.job import Event, Job
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import JobKind

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(department_id: str = "hr", **overrides: object) -> DepartmentSpec:
    values: dict[str, object] = {
        "department_id": department_id,
        "department_name": "Human Resources",
        "workflows": ("email", "database"),
        "data_retention": "90d",
        "region": "us-west",
        "admin_email": "admin@example.com",
    }
    values.update(overrides)
    return DepartmentSpec(**values)  # type: ignore[arg-type]


def new_job(kind: JobKind = JobKind.PROVISION, department_id: str = "hr") -> tuple[Job, Event]:
    return Job.create(
        job_id=f"job-{department_id}-{kind}",
        kind=kind,
        spec=spec(department_id),
        principal="tester",
        now=T0,
        deadline_at=T0 + timedelta(minutes=5),
    )
