"""Domain objects <-> contract messages. No logic beyond the mapping."""

from __future__ import annotations

from datetime import datetime
from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp

from provisioner.core.department import AuditEntry, Department
from provisioner.core.job import CleanupReport, Event, EventType, Job, JobError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import DepartmentStatus, JobKind, State
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb


@overload
def timestamp(value: datetime) -> Timestamp: ...
@overload
def timestamp(value: None) -> None: ...
def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def spec_from_request(request: pb.ProvisionRequest) -> DepartmentSpec:
    return DepartmentSpec(
        department_id=request.department_id,
        department_name=request.department_name,
        workflows=tuple(request.workflows),
        data_retention=request.data_retention,
        region=request.region,
        admin_email=request.admin_email,
    )


def _enum(prefix: str, value: str) -> str:
    """`JOB_STATE_` + `COMPLETED`: the contract's enum names are the domain's, prefixed
    (message constructors take enum values by name)."""
    return f"{prefix}{value.upper()}"


def job_state(state: State) -> str:
    return _enum("JOB_STATE_", state.value)


def department_status(status: DepartmentStatus) -> str:
    return _enum("DEPARTMENT_STATUS_", status.value)


def department_status_from(value: int) -> DepartmentStatus | None:
    if value == pb.DEPARTMENT_STATUS_UNSPECIFIED:
        return None
    return DepartmentStatus(pb.DepartmentStatus.Name(value).removeprefix("DEPARTMENT_STATUS_").lower())


def job_kind_from(value: int) -> JobKind | None:
    if value == pb.JOB_KIND_UNSPECIFIED:
        return None
    return JobKind(pb.JobKind.Name(value).removeprefix("JOB_KIND_").lower())


def job_state_from(value: int) -> State | None:
    if value == pb.JOB_STATE_UNSPECIFIED:
        return None
    return State(pb.JobState.Name(value).removeprefix("JOB_STATE_"))


def audit_event(number: int, entry: AuditEntry) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=number,
        time=timestamp(entry.at),
        principal=entry.principal,
        action=entry.action,
        department_id=entry.department_id,
        outcome=entry.outcome,
        job_id=entry.job_id or "",
        request_id=entry.request_id or "",
        detail=entry.detail,
    )


def _error(error: JobError | None) -> pb.JobError | None:
    if error is None:
        return None
    return pb.JobError(reason=error.reason, message=error.message, step=error.step or "")


def _cleanup(cleanup: CleanupReport | None, internals: bool) -> pb.CleanupReport | None:
    if cleanup is None:
        return None
    return pb.CleanupReport(
        compensated=[s.value for s in cleanup.compensated],
        remaining=[
            pb.RemainingResources(step=s.value, resources=r if internals else None)
            for s, r in cleanup.remaining.items()
        ],
    )


def job(value: Job, *, internals: bool = False) -> pb.Job:
    """The job as the contract shows it; step resources only with `internals` (admins)."""
    return pb.Job(
        job_id=value.job_id,
        department_id=value.department_id,
        kind=_enum("JOB_KIND_", value.kind.value),
        state=job_state(value.state),
        progress=value.progress,
        steps=[
            pb.Step(
                name=step.name.value,
                status=_enum("STEP_STATUS_", step.status.value),
                attempts=step.attempts,
                start_time=timestamp(step.started_at),
                finish_time=timestamp(step.finished_at),
                last_error=step.last_error or "",
                resources=step.resources if internals else None,
            )
            for step in value.steps.values()
        ],
        principal=value.principal,
        request_id=value.request_id or "",
        create_time=timestamp(value.created_at),
        update_time=timestamp(value.updated_at),
        deadline_time=timestamp(value.deadline_at) if value.kind is JobKind.PROVISION else None,
        finish_time=timestamp(value.finished_at),
        error=_error(value.error),
        cleanup=_cleanup(value.cleanup, internals),
        last_sequence=value.last_sequence,
        issued_client=(
            pb.OAuthClient(
                client_id=value.issued_client.client_id, client_secret=value.issued_client.client_secret
            )
            if value.issued_client is not None
            else None
        ),
    )


def event(value: Event, *, internals: bool = False) -> pb.JobEvent:
    detail = value.detail
    error = detail.get("error")
    cleanup = detail.get("cleanup")
    return pb.JobEvent(
        job_id=value.job_id,
        sequence=value.sequence,
        type=_enum("JOB_EVENT_TYPE_", value.type.name),
        state=job_state(value.state),
        progress=value.progress,
        step=value.step.value if value.step else "",
        attempt=value.attempt,
        message=value.message,
        time=timestamp(value.at),
        error=pb.JobError(**error) if error else None,
        cleanup=_cleanup(CleanupReport.from_dict(cleanup), internals) if cleanup else None,
        retry_delay_seconds=float(detail.get("delay_seconds", 0.0))
        if value.type is EventType.STEP_RETRYING
        else 0.0,
    )


def department(value: Department) -> pb.Department:
    spec = value.spec
    return pb.Department(
        department_id=spec.department_id,
        department_name=spec.department_name,
        workflows=list(spec.workflows),
        data_retention=spec.data_retention,
        region=spec.region,
        admin_email=spec.admin_email,
        status=department_status(value.status),
        current_job_id=value.current_job_id,
        create_time=timestamp(value.created_at),
        update_time=timestamp(value.updated_at),
    )
