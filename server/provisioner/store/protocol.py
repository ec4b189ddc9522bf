"""What the engine needs from a job store, whatever the backend."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from provisioner.core.department import AuditEntry, Department
from provisioner.core.job import Event, Job
from provisioner.core.notifications import Notification
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.core.states import DepartmentStatus, JobKind


class JobHead(NamedTuple):
    """Just enough of a job to tell a watcher whether there is more to come."""

    finished: bool
    last_sequence: int


class Census(NamedTuple):
    """The store's figures an operator watches: departments by status (every status
    present, zeros included), unfinished jobs already past their deadline, and webhook
    messages still to send and given up on."""

    departments: dict[DepartmentStatus, int]
    overdue_jobs: int
    webhooks_pending: int = 0
    webhooks_failed: int = 0


class Pruned(NamedTuple):
    """What one batch of retention removed: the events of `jobs` jobs, `audit` entries
    and `webhooks` messages."""

    jobs: int
    audit: int
    webhooks: int

    def __bool__(self) -> bool:
        return any(self)


class OutboxMessage(NamedTuple):
    notification: Notification
    #: Attempts made so far.
    attempts: int


class Outbox(Protocol):
    """Webhook messages, leased to the replica that sends them."""

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        """Lease up to `limit` messages due by `now` that nobody else holds, oldest first."""
        ...

    async def attempted(
        self,
        message_id: str,
        owner: str,
        *,
        attempts: int,
        now: datetime,
        error: str | None,
        retry_at: datetime | None,
    ) -> bool:
        """Record an attempt: delivered if `error` is None, else retried at `retry_at`,
        else given up on. False (and nothing recorded) if `owner` lost the lease."""
        ...


class JobStore(Protocol):
    """Durable home of departments, jobs, steps, events and the audit log.

    Writes are atomic per call. `commit` is fenced by the job's lease: it raises
    `LeaseLostError` if `owner` no longer holds the lease, and writes nothing.
    """

    async def initialize(self) -> None: ...

    async def close(self) -> None: ...

    async def create_job(
        self,
        job: Job,
        event: Event,
        audit: AuditEntry,
        lease: tuple[str, datetime] | None = None,
        *,
        home: str | None = None,
        quota: int | None = None,
    ) -> None:
        """Insert a new job (leased to `lease`'s owner if given), its steps, first event,
        department row and audit entry, atomically.

        `home` pins the job to one replica (and, for a provisioning, makes it the
        department's home). With `quota`, a provisioning is refused with
        `QuotaExceededError` when its department would be one more than `quota` holding
        resources; the check and the reservation are one transaction, whatever replica
        asks. Raises `ConflictError` if the request id was used before or the
        department already has an unfinished job of the same kind.
        """

    async def commit(
        self, job: Job, events: Sequence[Event], owner: str, notices: Sequence[Notification] = ()
    ) -> None:
        """Write the job's new state and `events`, and put `notices` in the webhook outbox,
        in one transaction."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def job_head(self, job_id: str) -> JobHead | None: ...

    async def job_heads(self, job_ids: Sequence[str]) -> dict[str, JobHead]:
        """The heads of those of `job_ids` that exist, in one read."""
        ...

    async def find_by_request_id(self, request_id: str) -> Job | None: ...

    async def unfinished_jobs(self, department_id: str) -> list[Job]: ...

    async def latest_job(self, department_id: str, kind: JobKind | None = None) -> Job | None:
        """The department's most recent job (of `kind`, if given)."""

    async def events_after(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[Event]: ...

    async def get_department(self, department_id: str) -> Department | None: ...

    async def list_departments(
        self,
        *,
        status: DepartmentStatus | None = None,
        region: str | None = None,
        after_id: str = "",
        limit: int = 100,
    ) -> list[Department]: ...

    async def census(self, now: datetime) -> Census: ...

    async def prune(self, before: datetime, batch: int) -> Pruned:
        """Remove one batch of what is older than `before`: the events of up to `batch`
        jobs that finished before it (never a running job's; the job and its steps stay),
        up to `batch` audit entries and up to `batch` settled webhook messages."""
        ...

    async def list_jobs(
        self, query: JobQuery, *, before: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs matching `query`, newest first (by creation time, then id), those created
        before `before` (a job's creation time and id) if given."""
        ...

    async def list_audit(
        self, query: AuditQuery, *, before_id: int | None = None, limit: int = 100
    ) -> list[tuple[int, AuditEntry]]:
        """Audit entries matching `query` with their ids, newest first, ids below `before_id`."""
        ...

    async def claim_jobs(
        self, owner: str, now: datetime, lease_until: datetime, limit: int, *, pinned: bool = False
    ) -> list[str]:
        """Lease unfinished jobs that nobody holds (or whose lease expired) to `owner`: those
        pinned to `owner` if `pinned`, else those pinned to nobody."""

    async def renew_leases(
        self, owner: str, job_ids: Sequence[str], until: datetime
    ) -> tuple[set[str], set[str]]:
        """Extend `owner`'s leases; return (still held, cancel requested)."""

    async def release(self, owner: str, job_ids: Sequence[str]) -> None: ...

    async def request_cancel(self, job_id: str) -> None: ...

    async def record_audit(self, entry: AuditEntry) -> None: ...

    async def audit_log(self, department_id: str) -> list[AuditEntry]: ...
