"""Rows <-> domain objects for the SQL store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from provisioner.core.department import AuditEntry, Department
from provisioner.core.job import CleanupReport, Event, EventType, Job, JobError, StepRecord
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import DepartmentStatus, JobKind, State, StepName, StepStatus


def job_values(job: Job) -> dict[str, Any]:
    """The columns of `jobs` that change as a job runs."""
    return {
        "state": job.state.value,
        "progress": job.progress,
        "error": error_to_json(job.error),
        "cleanup": job.cleanup.to_dict() if job.cleanup else None,
        "last_sequence": job.last_sequence,
        "updated_at": job.updated_at or job.created_at,
        "finished_at": job.finished_at,
    }


def new_job_row(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "department_id": job.department_id,
        "kind": job.kind.value,
        "spec": job.spec.to_dict(),
        "principal": job.principal,
        "request_id": job.request_id,
        "trace_parent": job.trace_parent,
        "created_at": job.created_at,
        "deadline_at": job.deadline_at,
        "cancel_requested": False,
        **job_values(job),
    }


def step_row(job_id: str, step: StepRecord) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "name": step.name.value,
        "status": step.status.value,
        "attempts": step.attempts,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "last_error": step.last_error,
        "resources": dict(step.resources),
    }


def event_row(event: Event) -> dict[str, Any]:
    return {
        "job_id": event.job_id,
        "sequence": event.sequence,
        "type": event.type.value,
        "state": event.state.value,
        "progress": event.progress,
        "step": event.step.value if event.step else None,
        "attempt": event.attempt,
        "message": event.message,
        "detail": event.detail,
        "at": event.at,
    }


def error_to_json(error: JobError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "reason": error.reason,
        "message": error.message,
        "step": error.step.value if error.step else None,
    }


#: A row as the driver gives it (SQLAlchemy's RowMapping is keyed by name or column).
Row = Mapping[Any, Any]


def error_from_json(data: Mapping[str, Any] | None) -> JobError | None:
    if not data:
        return None
    step = data.get("step")
    return JobError(str(data["reason"]), str(data["message"]), StepName(step) if step else None)


def job_from_rows(row: Row, steps: Iterable[Row]) -> Job:
    records = {
        StepName(s["name"]): StepRecord(
            name=StepName(s["name"]),
            status=StepStatus(s["status"]),
            attempts=s["attempts"],
            started_at=s["started_at"],
            finished_at=s["finished_at"],
            last_error=s["last_error"],
            resources=dict(s["resources"] or {}),
        )
        for s in steps
    }
    return Job(
        job_id=row["job_id"],
        kind=JobKind(row["kind"]),
        spec=DepartmentSpec.from_dict(row["spec"]),
        principal=row["principal"],
        created_at=row["created_at"],
        deadline_at=row["deadline_at"],
        request_id=row["request_id"],
        state=State(row["state"]),
        steps={name: records[name] for name in StepName if name in records},
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        error=error_from_json(row["error"]),
        cleanup=CleanupReport.from_dict(row["cleanup"]) if row["cleanup"] else None,
        last_sequence=row["last_sequence"],
        trace_parent=row["trace_parent"],
    )


def event_from_row(row: Row) -> Event:
    return Event(
        job_id=row["job_id"],
        sequence=row["sequence"],
        type=EventType(row["type"]),
        state=State(row["state"]),
        progress=row["progress"],
        at=row["at"],
        step=StepName(row["step"]) if row["step"] else None,
        attempt=row["attempt"],
        message=row["message"],
        detail=dict(row["detail"] or {}),
    )


def department_from_row(row: Row) -> Department:
    return Department(
        spec=DepartmentSpec.from_dict(row["spec"]),
        status=DepartmentStatus(row["status"]),
        current_job_id=row["current_job_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        home=row["home"],
    )


def audit_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "principal": entry.principal,
        "action": entry.action,
        "department_id": entry.department_id,
        "job_id": entry.job_id,
        "request_id": entry.request_id,
        "outcome": entry.outcome,
        "detail": entry.detail,
    }


def audit_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        at=row["at"],
        principal=row["principal"],
        action=row["action"],
        department_id=row["department_id"],
        outcome=row["outcome"],
        job_id=row["job_id"],
        request_id=row["request_id"],
        detail=row["detail"],
    )
