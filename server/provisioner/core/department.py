"""A department as the control plane knows it, and how its jobs move its status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from provisioner.core.job import Job
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import DepartmentStatus, JobKind, State


@dataclass(frozen=True, slots=True)
class Department:
    spec: DepartmentSpec
    status: DepartmentStatus
    current_job_id: str
    created_at: datetime
    updated_at: datetime
    #: The replica keeping the department's resources on its own machine, if any.
    home: str | None = None

    @property
    def department_id(self) -> str:
        return self.spec.department_id


#: Statuses of a department that has (or may have) resources: what the quota counts.
HOLDING_RESOURCES = frozenset(
    {
        DepartmentStatus.PROVISIONING,
        DepartmentStatus.ACTIVE,
        DepartmentStatus.DEPROVISIONING,
        DepartmentStatus.NEEDS_ATTENTION,
    }
)


def department_status(job: Job) -> DepartmentStatus:
    """The department status a job implies: in progress, done, failed, or needing a human."""
    provisioning = job.kind is JobKind.PROVISION
    if not job.is_finished:
        return DepartmentStatus.PROVISIONING if provisioning else DepartmentStatus.DEPROVISIONING
    if job.state is State.COMPLETED:
        return DepartmentStatus.ACTIVE if provisioning else DepartmentStatus.DEPROVISIONED
    if job.cleanup is not None and not job.cleanup.clean:
        return DepartmentStatus.NEEDS_ATTENTION
    return DepartmentStatus.FAILED if provisioning else DepartmentStatus.NEEDS_ATTENTION


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who asked for what, when, and what came of it."""

    at: datetime
    principal: str
    action: str
    department_id: str
    outcome: str
    job_id: str | None = None
    request_id: str | None = None
    detail: str = ""
