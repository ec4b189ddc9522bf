"""An in-memory job store with the same semantics as the SQL one, for fast unit tests."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from provisioner.core.department import HOLDING_RESOURCES, AuditEntry, Department, department_status
from provisioner.core.errors import ConflictError, LeaseLostError, QuotaExceededError
from provisioner.core.job import Event, Job
from provisioner.core.notifications import Notification
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.core.routes import Route
from provisioner.core.secrets import SealedSecret
from provisioner.core.states import DepartmentStatus, JobKind
from provisioner.store.protocol import Census, JobHead, OutboxMessage, Pruned


class InMemoryJobStore:
    """Keeps everything in dicts; not durable, not shared across processes."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._events: dict[str, list[Event]] = {}
        self._departments: dict[str, Department] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._cancel: set[str] = set()
        #: By id, increasing; retention removes the oldest.
        self._audit: dict[int, AuditEntry] = {}
        self._audit_ids = itertools.count(1)
        self._pins: dict[str, str | None] = {}
        self.outbox = InMemoryOutbox()

    async def initialize(self) -> None:
        return None

    async def close(self) -> None:
        return None

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
        if job.request_id is not None and any(j.request_id == job.request_id for j in self._jobs.values()):
            raise ConflictError(f"request id {job.request_id} was already used")
        if any(
            j.department_id == job.department_id and j.kind is job.kind and not j.is_finished
            for j in self._jobs.values()
        ):
            raise ConflictError(f"department {job.department_id} already has an unfinished {job.kind} job")
        if quota is not None and job.kind is JobKind.PROVISION:
            holding = {d for d, dept in self._departments.items() if dept.status in HOLDING_RESOURCES}
            if job.department_id not in holding and len(holding) >= quota:
                raise QuotaExceededError(quota)
        self._jobs[job.job_id] = job.snapshot()
        self._pins[job.job_id] = home
        self._events[job.job_id] = [event]
        if lease is not None:
            self._leases[job.job_id] = lease
        self._touch_department(job, home if job.kind is JobKind.PROVISION else None)
        self._audit[next(self._audit_ids)] = audit

    async def commit(
        self, job: Job, events: Sequence[Event], owner: str, notices: Sequence[Notification] = ()
    ) -> None:
        lease = self._leases.get(job.job_id)
        if lease is None or lease[0] != owner:
            raise LeaseLostError(f"job {job.job_id} is not leased to {owner}")
        stored = self._events[job.job_id]
        for event in events:
            if event.sequence != stored[-1].sequence + 1:
                raise RuntimeError(f"event sequence gap in job {job.job_id}: {event.sequence}")
            stored.append(event)
        self._jobs[job.job_id] = job.snapshot()
        for notice in notices:
            self.outbox.add(notice)
        current = self._departments.get(job.department_id)
        # Like the SQL store: only a finished job moves the department, and only while it
        # is still the department's current job (a deprovisioning may have taken over).
        if job.is_finished and current is not None and current.current_job_id == job.job_id:
            self._touch_department(job, current.home)

    def _touch_department(self, job: Job, home: str | None = None) -> None:
        current = self._departments.get(job.department_id)
        spec = job.spec if job.kind is JobKind.PROVISION or current is None else current.spec
        if job.kind is not JobKind.PROVISION and current is not None:
            home = current.home
        self._departments[job.department_id] = Department(
            spec=spec,
            status=department_status(job),
            current_job_id=job.job_id,
            created_at=current.created_at if current else job.created_at,
            updated_at=job.updated_at or job.created_at,
            home=home,
        )

    async def job_head(self, job_id: str) -> JobHead | None:
        job = self._jobs.get(job_id)
        return None if job is None else JobHead(job.is_finished, job.last_sequence)

    async def job_heads(self, job_ids: Sequence[str]) -> dict[str, JobHead]:
        return {i: JobHead(j.is_finished, j.last_sequence) for i in job_ids if (j := self._jobs.get(i))}

    async def get_job(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job.snapshot() if job else None

    async def find_by_request_id(self, request_id: str) -> Job | None:
        for job in self._jobs.values():
            if job.request_id == request_id:
                return job.snapshot()
        return None

    async def unfinished_jobs(self, department_id: str) -> list[Job]:
        return [
            j.snapshot()
            for j in self._jobs.values()
            if j.department_id == department_id and not j.is_finished
        ]

    async def latest_job(self, department_id: str, kind: JobKind | None = None) -> Job | None:
        jobs = [
            j for j in self._jobs.values()
            if j.department_id == department_id and (kind is None or j.kind is kind)
        ]  # fmt: skip
        return max(jobs, key=lambda j: j.created_at).snapshot() if jobs else None

    async def events_after(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[Event]:
        return [e for e in self._events.get(job_id, []) if e.sequence > after_sequence][:limit]

    async def get_department(self, department_id: str) -> Department | None:
        return self._departments.get(department_id)

    async def list_departments(
        self,
        *,
        status: DepartmentStatus | None = None,
        region: str | None = None,
        after_id: str = "",
        limit: int = 100,
    ) -> list[Department]:
        found = sorted(
            (
                d
                for d in self._departments.values()
                if d.department_id > after_id
                and (status is None or d.status is status)
                and (region is None or d.spec.region == region)
            ),
            key=lambda d: d.department_id,
        )
        return found[:limit]

    async def census(self, now: datetime) -> Census:
        counts = Counter(d.status for d in self._departments.values())
        late = sum(1 for j in self._jobs.values() if not j.is_finished and j.deadline_at < now)
        pending, failed = self.outbox.counts()
        return Census({s: counts[s] for s in DepartmentStatus}, late, pending, failed)

    async def claim_jobs(
        self, owner: str, now: datetime, lease_until: datetime, limit: int, *, pinned: bool = False
    ) -> list[str]:
        claimed: list[str] = []
        for job_id, job in sorted(self._jobs.items(), key=lambda kv: kv[1].created_at):
            if len(claimed) >= limit:
                break
            lease = self._leases.get(job_id)
            if job.is_finished or (lease and lease[0] != owner and lease[1] > now):
                continue
            if self._pins.get(job_id) != (owner if pinned else None):
                continue
            self._leases[job_id] = (owner, lease_until)
            claimed.append(job_id)
        return claimed

    async def renew_leases(
        self, owner: str, job_ids: Sequence[str], until: datetime
    ) -> tuple[set[str], set[str]]:
        held = set()
        for job_id in job_ids:
            lease = self._leases.get(job_id)
            if lease and lease[0] == owner:
                self._leases[job_id] = (owner, until)
                held.add(job_id)
        return held, held & self._cancel

    async def release(self, owner: str, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            if self._leases.get(job_id, ("",))[0] == owner:
                del self._leases[job_id]

    async def request_cancel(self, job_id: str) -> None:
        self._cancel.add(job_id)

    async def record_audit(self, entry: AuditEntry) -> None:
        self._audit[next(self._audit_ids)] = entry

    async def prune(self, before: datetime, batch: int) -> Pruned:
        finished = [
            job_id
            for job_id, job in self._jobs.items()
            if job.finished_at is not None and job.finished_at < before and self._events.get(job_id)
        ][:batch]
        for job_id in finished:
            self._events[job_id] = []
        old = [number for number, entry in self._audit.items() if entry.at < before][:batch]
        for number in old:
            del self._audit[number]
        return Pruned(len(finished), len(old), self.outbox.prune(before, batch))

    async def list_jobs(
        self, query: JobQuery, *, before: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[Job]:
        found = sorted(
            (
                j
                for j in self._jobs.values()
                if query.matches(j) and (before is None or (j.created_at, j.job_id) < before)
            ),
            key=lambda j: (j.created_at, j.job_id),
            reverse=True,
        )
        return [j.snapshot() for j in found[:limit]]

    async def list_audit(
        self, query: AuditQuery, *, before_id: int | None = None, limit: int = 100
    ) -> list[tuple[int, AuditEntry]]:
        found = [
            (number, a)
            for number, a in self._audit.items()
            if query.matches(a) and (before_id is None or number < before_id)
        ]
        return found[::-1][:limit]

    async def audit_log(self, department_id: str) -> list[AuditEntry]:
        return [a for a in self._audit.values() if a.department_id == department_id]


@dataclass(slots=True)
class _Message:
    notification: Notification
    attempts: int = 0
    next_attempt_at: datetime | None = None
    done: bool = False
    failed: bool = False
    last_error: str | None = None
    lease: tuple[str, datetime] | None = None


class InMemoryOutbox:
    """The `Outbox` of `webhooks` in a dict, with the SQL one's semantics."""

    def __init__(self) -> None:
        self.messages: dict[str, _Message] = {}

    def add(self, notice: Notification) -> None:
        self.messages[notice.message_id] = _Message(notice, next_attempt_at=notice.created_at)

    def prune(self, before: datetime, batch: int) -> int:
        settled = [
            message_id
            for message_id, m in self.messages.items()
            if (m.done or m.failed) and m.notification.created_at < before
        ][:batch]
        for message_id in settled:
            del self.messages[message_id]
        return len(settled)

    def counts(self) -> tuple[int, int]:
        found = self.messages.values()
        return sum(1 for m in found if not m.done and not m.failed), sum(1 for m in found if m.failed)

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        due = sorted(
            (
                m
                for m in self.messages.values()
                if not m.done
                and not m.failed
                and m.next_attempt_at is not None
                and m.next_attempt_at <= now
                and (m.lease is None or m.lease[0] == owner or m.lease[1] < now)
            ),
            key=lambda m: m.notification.created_at,
        )[:limit]
        for message in due:
            message.lease = (owner, lease_until)
        return [OutboxMessage(m.notification, m.attempts) for m in due]

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
        message = self.messages.get(message_id)
        if message is None or message.lease is None or message.lease[0] != owner:
            return False
        message.attempts, message.lease, message.last_error = attempts, None, error
        if error is None:
            message.done = True
        elif retry_at is not None:
            message.next_attempt_at = retry_at
        else:
            message.failed = True
        return True


class InMemorySecretStore:
    """The `SecretStore` of `steps.vault` in dicts, with the SQL one's semantics."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], SealedSecret] = {}
        self.settings: dict[str, str] = {}

    async def get_secret(self, department_id: str, name: str) -> SealedSecret | None:
        return self.secrets.get((department_id, name))

    async def add_secret(self, secret: SealedSecret) -> SealedSecret:
        return self.secrets.setdefault((secret.department_id, secret.name), secret)

    async def promote_secret(
        self, department_id: str, source: str, target: str, *, job_id: str, drop_prefix: str
    ) -> SealedSecret | None:
        issued = self.secrets.get((department_id, source))
        if issued is not None:
            self.secrets[(department_id, target)] = replace(issued, name=target)
        active = self.secrets.get((department_id, target))
        if active is None or active.job_id != job_id:
            return None
        for key in [k for k in self.secrets if k[0] == department_id and k[1].startswith(drop_prefix)]:
            del self.secrets[key]
        return active

    async def delete_secrets(self, department_id: str, *, purpose: str, name: str | None = None) -> int:
        gone = [
            k for k, s in self.secrets.items()
            if k[0] == department_id and s.purpose == purpose and (name is None or k[1] == name)
        ]  # fmt: skip
        for key in gone:
            del self.secrets[key]
        return len(gone)

    async def all_secrets(self) -> list[SealedSecret]:
        return [self.secrets[k] for k in sorted(self.secrets)]

    async def replace_sealed(self, secret: SealedSecret, sealed: str) -> bool:
        key = (secret.department_id, secret.name)
        if self.secrets.get(key) != secret:
            return False
        self.secrets[key] = replace(secret, sealed=sealed)
        return True

    async def claim_setting(self, name: str, value: str) -> str:
        return self.settings.setdefault(name, value)

    async def put_setting(self, name: str, value: str) -> None:
        self.settings[name] = value


class InMemoryRouteStore:
    """The `RouteStore` of `steps.gateway` in a dict."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    async def put_route(self, route: Route) -> None:
        self.routes[route.department_id] = route

    async def delete_route(self, department_id: str) -> bool:
        return self.routes.pop(department_id, None) is not None

    async def get_route(self, department_id: str) -> Route | None:
        return self.routes.get(department_id)

    async def routes_for(self, replica: str) -> list[Route]:
        return [r for _, r in sorted(self.routes.items()) if r.replica in (None, replica)]


class InMemoryAdmissions:
    """The `AdmissionStore` of `edge.ratelimit` in lists, with the SQL one's semantics."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], list[float]] = {}

    async def admit(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        wait = await self.wait(bucket, principal, count, period, now)
        if wait is None:
            self.times[(bucket, principal)].append(now)
        return wait

    async def wait(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        times = sorted(t for t in self.times.get((bucket, principal), []) if t > now - period)
        self.times[(bucket, principal)] = times
        return max(times[-count] + period - now, 1e-6) if len(times) >= count else None
