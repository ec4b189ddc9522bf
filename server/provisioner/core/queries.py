"""Filters of the job history and the audit log: what ListJobs and ListAuditEvents ask the
store for (paging aside). `matches` is the rule; the SQL store says the same in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from provisioner.core.department import AuditEntry
from provisioner.core.job import Job
from provisioner.core.states import JobKind, State


@dataclass(frozen=True, slots=True)
class JobQuery:
    department_id: str | None = None
    kind: JobKind | None = None
    state: State | None = None

    def matches(self, job: Job) -> bool:
        return (
            (self.department_id is None or job.department_id == self.department_id)
            and (self.kind is None or job.kind is self.kind)
            and (self.state is None or job.state is self.state)
        )


@dataclass(frozen=True, slots=True)
class AuditQuery:
    department_id: str | None = None
    principal: str | None = None
    action: str | None = None
    #: At or after (inclusive).
    since: datetime | None = None
    #: Before (exclusive).
    until: datetime | None = None

    def matches(self, entry: AuditEntry) -> bool:
        return (
            (self.department_id is None or entry.department_id == self.department_id)
            and (self.principal is None or entry.principal == self.principal)
            and (self.action is None or entry.action == self.action)
            and (self.since is None or entry.at >= self.since)
            and (self.until is None or entry.at < self.until)
        )
