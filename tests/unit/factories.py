"""Builders shared by the unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provisioner.core.job import Event, Job, JobError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import STEP_ORDER, JobKind

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


def walk_to_completion(job: Job, now: datetime) -> list[Event]:
    """Every event of a provisioning job whose steps all succeed."""
    events = job.start(now)
    for name in STEP_ORDER:
        events.append(job.start_step(name, now))
        events += job.step_succeeded(name, {"id": f"{name}-{job.department_id}"}, now)
    return events + job.complete(now)


def fail_outright(job: Job, now: datetime) -> list[Event]:
    """Start a job and fail it before any step ran (nothing to roll back)."""
    return job.start(now) + job.fail(JobError("STEP_FAILED", "boom"), now)
