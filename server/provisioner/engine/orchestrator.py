"""Accepts provisioning and deprovisioning requests and runs the jobs it holds leases on.

Requests are idempotent: a replayed request id returns its original job, provisioning a
department that is being (or was) provisioned with the same spec returns that job, and a
spec provisioned after a failure starts a new job whose steps adopt what exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from provisioner.core.department import HOLDING_RESOURCES, AuditEntry, Department
from provisioner.core.errors import (
    ConflictError,
    ElsewhereError,
    FailedPreconditionError,
    FieldViolation,
    InvalidSpecError,
    NotFoundError,
    ProvisioningError,
    QuotaExceededError,
    ServiceDrainingError,
)
from provisioner.core.job import Event, IssuedClient, Job
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.core.spec import DepartmentSpec, check_department_id, validate
from provisioner.core.states import DepartmentStatus, JobKind, State, StepName
from provisioner.engine.config import EngineConfig
from provisioner.engine.health import HealthCache
from provisioner.engine.runner import JobRunner, cancel_and_wait
from provisioner.events.hub import EventHub
from provisioner.steps.base import Condition, Step, StepContext
from provisioner.store.protocol import JobStore
from provisioner.telemetry import metrics, tracing

log = logging.getLogger(__name__)


#: Finished jobs kept in memory for status reads (they are immutable), most recent last.
FINISHED_JOBS_CACHED = 10_000
#: Rows of each kind one retention batch removes (one short transaction each), and the
#: pause between batches, so that retention never holds the store for long.
RETENTION_BATCH = 500
RETENTION_PAUSE = 0.05


class CredentialIssuer(Protocol):
    """Makes a department's OAuth client when a provisioning job is accepted."""

    async def issue(self, department_id: str, job_id: str) -> IssuedClient: ...

    async def discard(self, department_id: str, job_id: str) -> None:
        """Forget what was issued for a job that failed (idempotent)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _check_request_id(request_id: str | None) -> str | None:
    if request_id is None or request_id == "":
        return None
    try:
        return str(uuid.UUID(request_id))
    except ValueError:
        raise InvalidSpecError([FieldViolation("request_id", "must be a UUID")]) from None


class Orchestrator:
    """The engine's front door and its job scheduler, for one replica."""

    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        steps: Mapping[StepName, Step],
        config: EngineConfig | None = None,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        issuer: CredentialIssuer | None = None,
        pinned: bool = False,
    ) -> None:
        """`pinned`: this replica's steps keep a department's resources on its own machine,
        so each department is run only by the replica that made its resources (its
        home); the others still accept its requests and answer its reads and watches.
        A pinned replica is the home of the new departments it accepts, so it must run
        jobs (`config.run_jobs`), or share its `owner` with the replica that does."""
        missing = set(StepName) - set(steps)
        if missing:
            raise ValueError(f"no implementation for steps: {sorted(missing)}")
        self.store = store
        self.hub = hub
        self.config = config or EngineConfig()
        self.owner = owner or f"replica-{uuid.uuid4()}"
        self._steps = dict(steps)
        self._clock = clock
        self._rng = rng or random.Random()
        self._issuer = issuer
        self._pinned = pinned
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._health: HealthCache[list[tuple[Condition, datetime]]] = HealthCache(ttl=self.config.health_ttl)
        self._runners: dict[str, tuple[JobRunner, asyncio.Task[None]]] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._census: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._accepting = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Accept requests and (if configured to) take over every unfinished job it can lease."""
        self._accepting = True
        if self._census is None:
            self._census = asyncio.create_task(self._take_census(), name="engine-census")
        if self._retention is None and self.config.retention_days > 0:
            self._retention = asyncio.create_task(self._retain(), name="engine-retention")
        if self.config.run_jobs and self._maintainer is None:
            await self._claim()
            self._maintainer = asyncio.create_task(self._maintain(), name="engine-maintainer")

    def refuse_new_work(self) -> None:
        """The first step of draining: new requests get UNAVAILABLE, running jobs go on."""
        self._accepting = False

    async def stop(self) -> None:
        """Refuse new work, stop every runner and hand its lease back: jobs stay resumable."""
        self._accepting = False
        for task in (self._census, self._retention, self._maintainer):
            if task is not None:
                await cancel_and_wait(task)
        self._census = self._retention = self._maintainer = None
        runners = list(self._runners.items())
        await asyncio.gather(*(cancel_and_wait(task) for _, (_, task) in runners))
        with contextlib.suppress(ProvisioningError):
            await self.store.release(self.owner, [job_id for job_id, _ in runners])

    @property
    def running_jobs(self) -> int:
        return len(self._runners)

    # -- requests ----------------------------------------------------------------------------

    async def provision(
        self, spec: DepartmentSpec, *, principal: str, request_id: str | None = None
    ) -> tuple[Job, bool]:
        """Start provisioning `spec`, or return the job already doing it. True if new."""
        try:
            return await self._provision(spec, principal, request_id)
        except ProvisioningError as exc:
            await self._audit_rejection(principal, "provision", spec.department_id, request_id, exc)
            raise

    async def deprovision(
        self, department_id: str, *, principal: str, request_id: str | None = None
    ) -> tuple[Job, bool]:
        """Tear a department down, cancelling and rolling back its provisioning if running."""
        try:
            return await self._deprovision(department_id, principal, request_id)
        except ProvisioningError as exc:
            await self._audit_rejection(principal, "deprovision", department_id, request_id, exc)
            raise

    async def _provision(
        self, spec: DepartmentSpec, principal: str, request_id: str | None
    ) -> tuple[Job, bool]:
        self._check_spec(spec)
        request_id = _check_request_id(request_id)
        self._check_accepting()
        for attempt in range(2):
            # No department row means no job ever touched it: nothing to return or adopt.
            department = await self.store.get_department(spec.department_id)
            known = department is not None
            existing = await self._existing_provision(spec, request_id, principal, known)
            if existing is not None:
                return existing, False
            inherited = await self._adoptable(spec.department_id) if known else {}
            try:
                job = await self._create(
                    JobKind.PROVISION, spec, principal, request_id, inherited, department
                )
                return job, True
            except ConflictError:
                if attempt == 1:
                    raise
                # Another request for the same department won the race: answer with its job.
        raise AssertionError("unreachable")

    async def preview_provision(
        self, spec: DepartmentSpec, *, principal: str, request_id: str | None = None
    ) -> Job:
        """Every check of `provision` that has no side effect (AIP-163 `validate_only`): the
        spec's rules and the region, a replayed request id, a conflict with the department
        as it is, the quota. Returns the job the call would return: the existing one for a
        repeat, else a preview of a new one, without an id. Writes nothing."""
        self._check_spec(spec)
        request_id = _check_request_id(request_id)
        self._check_accepting()
        department = await self.store.get_department(spec.department_id)
        existing = await self._existing_provision(
            spec, request_id, principal, department is not None, audit=False
        )
        if existing is not None:
            return existing
        if department is None or department.status not in HOLDING_RESOURCES:
            census = await self.store.census(self._clock())
            if sum(census.departments[s] for s in HOLDING_RESOURCES) >= self.config.max_departments:
                raise QuotaExceededError(self.config.max_departments)
        return self._preview(JobKind.PROVISION, spec, principal, request_id)

    async def preview_deprovision(
        self, department_id: str, *, principal: str, request_id: str | None = None
    ) -> Job:
        """Every check of `deprovision` that has no side effect: the teardown running now,
        or a preview of a new one (without an id). Writes nothing and cancels nothing."""
        request_id = self._check_deprovision(department_id, request_id)
        replay = await self._deprovision_replay(department_id, request_id)
        if replay is not None:
            return replay
        department = await self._live_department(department_id)
        for job in await self.store.unfinished_jobs(department_id):
            if job.kind is JobKind.DEPROVISION:
                return job
        return self._preview(JobKind.DEPROVISION, department.spec, principal, request_id)

    def _preview(self, kind: JobKind, spec: DepartmentSpec, principal: str, request_id: str | None) -> Job:
        now = self._clock()
        job, _ = Job.create(
            job_id="",
            kind=kind,
            spec=spec,
            principal=principal,
            now=now,
            deadline_at=now + timedelta(seconds=self.config.job_deadline),
            request_id=request_id,
        )
        return job

    def spec_violations(self, spec: DepartmentSpec) -> list[FieldViolation]:
        """The spec's own rules and those of this platform's configuration (the region)."""
        violations: list[FieldViolation] = []
        try:
            validate(spec)
        except InvalidSpecError as exc:
            violations = list(exc.violations)
        regions = self.config.regions
        if regions and spec.region not in regions and not any(v.field == "region" for v in violations):
            violations.append(
                FieldViolation("region", f"must be one of this platform's regions: {', '.join(regions)}")
            )
        return violations

    def _check_spec(self, spec: DepartmentSpec) -> None:
        violations = self.spec_violations(spec)
        if violations:
            raise InvalidSpecError(violations)

    async def _deprovision(
        self, department_id: str, principal: str, request_id: str | None
    ) -> tuple[Job, bool]:
        request_id = self._check_deprovision(department_id, request_id)
        for attempt in range(2):
            replay = await self._deprovision_replay(department_id, request_id)
            if replay is not None:
                await self._audit(principal, "deprovision", department_id, "replayed", replay)
                return replay, False
            department = await self._live_department(department_id)
            for job in await self.store.unfinished_jobs(department_id):
                if job.kind is JobKind.DEPROVISION:
                    # Every answered request is audited: the rate limit is rebuilt from it.
                    await self._audit(principal, "deprovision", department_id, "already running", job)
                    return job, False
                await self._cancel_job(job.job_id)
            try:
                job = await self._create(
                    JobKind.DEPROVISION, department.spec, principal, request_id, {}, department
                )
            except ConflictError:
                if attempt == 1:
                    raise
                continue
            return job, True
        raise AssertionError("unreachable")

    def _check_deprovision(self, department_id: str, request_id: str | None) -> str | None:
        """A deprovisioning's own checks; the request id, normalised."""
        violations = check_department_id(department_id)
        if violations:
            raise InvalidSpecError(violations)
        request_id = _check_request_id(request_id)
        self._check_accepting()
        return request_id

    async def _deprovision_replay(self, department_id: str, request_id: str | None) -> Job | None:
        """The teardown a replayed request id made; a conflict if it made something else."""
        if request_id is None:
            return None
        replay = await self.store.find_by_request_id(request_id)
        if replay is None:
            return None
        if replay.kind is JobKind.DEPROVISION and replay.department_id == department_id:
            return replay
        raise ConflictError(f"request id {request_id} was already used for another request")

    async def _live_department(self, department_id: str) -> Department:
        department = await self.store.get_department(department_id)
        if department is None or department.status is DepartmentStatus.DEPROVISIONED:
            raise NotFoundError(f"department {department_id} not found")
        return department

    async def _existing_provision(
        self, spec: DepartmentSpec, request_id: str | None, principal: str, known: bool, *, audit: bool = True
    ) -> Job | None:
        """The job that already answers this provisioning, if one does; with `audit`, the
        answer is audited (the rate limit is rebuilt from it)."""
        fingerprint = spec.fingerprint()
        if request_id is not None:
            replay = await self.store.find_by_request_id(request_id)
            if replay is not None:
                if replay.kind is JobKind.PROVISION and replay.spec.fingerprint() == fingerprint:
                    if audit:
                        await self._audit(principal, "provision", spec.department_id, "replayed", replay)
                    return replay
                raise ConflictError(f"request id {request_id} was already used for a different request")
        if not known:
            return None
        unfinished = await self.store.unfinished_jobs(spec.department_id)
        if any(job.kind is JobKind.DEPROVISION for job in unfinished):
            raise FailedPreconditionError(
                f"department {spec.department_id} is being deprovisioned; "
                "provision it again once that job finishes"
            )
        answer = next(iter(unfinished), None)
        if answer is None:
            latest = await self.store.latest_job(spec.department_id)
            done = latest is not None and latest.kind is JobKind.PROVISION and latest.state is State.COMPLETED
            answer = latest if done else None
        if answer is None:
            return None
        job = self._same_spec(answer, fingerprint)
        return await self._answered_with(principal, job) if audit else job

    async def _answered_with(self, principal: str, job: Job) -> Job:
        """Audit a request answered with an existing job: the rate limit is rebuilt from it."""
        await self._audit(principal, "provision", job.department_id, "existing job", job)
        return job

    @staticmethod
    def _same_spec(job: Job, fingerprint: str) -> Job:
        if job.spec.fingerprint() != fingerprint:
            raise ConflictError(
                f"department {job.department_id} already exists with a different spec "
                f"(job {job.job_id}); deprovision it first to change it"
            )
        return job

    async def _adoptable(self, department_id: str) -> dict[StepName, dict[str, str]]:
        """What a failed earlier provisioning left behind, for the new job's steps to adopt."""
        latest = await self.store.latest_job(department_id, JobKind.PROVISION)
        if latest is None or latest.state is not State.FAILED:
            return {}
        return {n: dict(s.resources) for n, s in latest.steps.items() if s.resources}

    async def _create(
        self,
        kind: JobKind,
        spec: DepartmentSpec,
        principal: str,
        request_id: str | None,
        inherited: dict[StepName, dict[str, str]],
        department: Department | None,
    ) -> Job:
        now = self._clock()
        job_id = str(uuid.uuid4())
        # Issued before the job exists, so its runner can never reach the OAuth step first;
        # a job then refused forgets it, and only a crash in between leaves an unused,
        # sealed credential (made void by the department's next activation or revocation).
        issued = (
            await self._issuer.issue(spec.department_id, job_id)
            if self._issuer is not None and kind is JobKind.PROVISION
            else None
        )
        job, first = Job.create(
            job_id=job_id,
            kind=kind,
            spec=spec,
            principal=principal,
            now=now,
            deadline_at=now + timedelta(seconds=self.config.job_deadline),
            request_id=request_id,
            inherited=inherited,
            trace_parent=tracing.current_traceparent(),
        )
        audit = AuditEntry(now, principal, kind.value, spec.department_id, "accepted", job.job_id, request_id)
        home = self._home(department)
        runs_here = self.config.run_jobs and home == (self.owner if self._pinned else None)
        lease = (self.owner, self._lease_until()) if runs_here else None
        try:
            await self.store.create_job(
                job, first, audit, lease, home=home, quota=self.config.max_departments
            )
        except ProvisioningError:
            if issued is not None and self._issuer is not None:
                # Refused (quota, a lost race): this job's client is void. A rival's stays.
                await self._issuer.discard(spec.department_id, job_id)
            raise
        self.hub.publish([first])
        snapshot = replace(job.snapshot(), issued_client=issued)
        if lease is not None:
            self._start_runner(job)
        return snapshot

    def _home(self, department: Department | None) -> str | None:
        """The replica that must run a new job of `department`: the one holding its
        resources, or this one if its steps keep them here; None for any replica."""
        if department is not None and department.status in HOLDING_RESOURCES:
            return department.home
        return self.owner if self._pinned else None

    async def cancel(self, job_id: str, *, principal: str) -> Job:
        """Stop a running provisioning and roll it back: it ends FAILED, reason CANCELLED.
        Returns the job as it stands once the cancellation is recorded."""
        job = await self.get_job(job_id)
        if job.is_finished:
            raise FailedPreconditionError(f"job {job_id} has already ended ({job.state.value})")
        if job.kind is JobKind.DEPROVISION:
            raise FailedPreconditionError(
                f"job {job_id} is a teardown, which cannot be cancelled: stopped halfway it would "
                "leave the department partly removed"
            )
        await self._cancel_job(job_id)
        await self._audit(principal, "cancel", job.department_id, "accepted", job)
        return await self.get_job(job_id)

    async def _cancel_job(self, job_id: str) -> None:
        await self.store.request_cancel(job_id)
        local = self._runners.get(job_id)
        if local is not None:
            local[0].request_cancel()

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise ServiceDrainingError("the server is not accepting new jobs (starting or shutting down)")

    async def _audit_rejection(
        self, principal: str, action: str, department_id: str, request_id: str | None, exc: ProvisioningError
    ) -> None:
        # What was asked is recorded even when it was garbage, made printable and bounded.
        shown = "".join(ch if ch.isprintable() else "?" for ch in department_id)[:64]
        entry = AuditEntry(
            self._clock(), principal, action, shown, f"rejected: {exc.reason}",
            request_id=(request_id or "")[:64] or None, detail=exc.message[:500],
        )  # fmt: skip
        with contextlib.suppress(ProvisioningError):
            await self.store.record_audit(entry)

    async def _audit(
        self, principal: str, action: str, department_id: str, outcome: str, job: Job | None = None
    ) -> None:
        await self.store.record_audit(
            AuditEntry(
                self._clock(),
                principal,
                action,
                department_id,
                outcome,
                job.job_id if job else None,
                job.request_id if job else None,
            )
        )

    # -- reads ---------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        finished = self._finished.get(job_id)
        if finished is not None:
            self._finished.move_to_end(job_id)
            return finished
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        if job.is_finished:
            # A finished job never changes again: later reads need not touch the store.
            self._finished[job_id] = job
            if len(self._finished) > FINISHED_JOBS_CACHED:
                self._finished.popitem(last=False)
        return job

    def watch(self, job_id: str, after_sequence: int = 0) -> AsyncGenerator[Event, None]:
        """Every committed event of `job_id` after `after_sequence`, in order, to the terminal one
        (`EventHub.subscribe`: its errors are the watcher's)."""
        return self.hub.subscribe(job_id, after_sequence)

    async def list_departments(
        self, *, status: DepartmentStatus | None, region: str | None, after_id: str, limit: int
    ) -> list[Department]:
        return await self.store.list_departments(status=status, region=region, after_id=after_id, limit=limit)

    async def list_jobs(
        self, query: JobQuery, *, before: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[Job]:
        return await self.store.list_jobs(query, before=before, limit=limit)

    async def list_audit(
        self, query: AuditQuery, *, before_id: int | None = None, limit: int = 100
    ) -> list[tuple[int, AuditEntry]]:
        return await self.store.list_audit(query, before_id=before_id, limit=limit)

    async def get_department(self, department_id: str) -> Department:
        department = await self.store.get_department(department_id)
        if department is None:
            raise NotFoundError(f"department {department_id} not found")
        return department

    async def health(self, department_id: str) -> list[tuple[Condition, datetime]]:
        """Check, live, what each step made for the department; each with when it was seen.

        Callers asking about one department within `health_ttl` seconds share one check
        (`engine.health`); each step's check has `health_timeout` seconds.
        """
        department = await self.get_department(department_id)
        if department.status in (DepartmentStatus.DEPROVISIONED, DepartmentStatus.DEPROVISIONING):
            raise FailedPreconditionError(f"department {department_id} is {department.status.value}")
        if department.home is not None and department.home != self.owner:
            # Its resources are on the home replica's machine: checked here, they would
            # all look missing.
            raise ElsewhereError(
                f"department {department_id} is checked by replica {department.home}, which holds "
                "its resources; retry (another replica will be asked)"
            )
        return await self._health.get(department_id, lambda: self._check_health(department))

    async def _check_health(self, department: Department) -> list[tuple[Condition, datetime]]:
        latest = await self.store.latest_job(department.department_id, JobKind.PROVISION)
        resources = {n: s.resources for n, s in latest.steps.items()} if latest else {}
        job_id = latest.job_id if latest else ""
        budget = min(self.config.step_timeout, self.config.health_timeout)

        async def check(name: StepName) -> tuple[Condition, datetime]:
            ctx = StepContext(job_id, department.spec, 0, dict(resources.get(name, {})))
            try:
                async with asyncio.timeout(budget):
                    condition = await self._steps[name].check(ctx)
            except TimeoutError:
                condition = Condition(
                    name, False, "CHECK_TIMEOUT", f"the check did not answer in {budget:g} s"
                )
            except ProvisioningError as exc:
                condition = Condition(name, False, exc.reason, exc.message)
            return condition, self._clock()

        return list(await asyncio.gather(*(check(name) for name in StepName)))

    async def wait(self, job_id: str) -> Job:
        """Wait until a job finishes (by following its events) and return it."""
        local = self._runners.get(job_id)
        async for _ in self.hub.subscribe(job_id):
            pass
        if local is not None and local[0].job.is_finished:
            # The runner commits before it publishes: its copy is what the store holds.
            return local[0].job.snapshot()
        return await self.get_job(job_id)

    # -- scheduling ------------------------------------------------------------------------------

    def _lease_until(self) -> datetime:
        return self._clock() + timedelta(seconds=self.config.lease_seconds)

    def _start_runner(self, job: Job) -> None:
        if job.job_id in self._runners:
            # A claim and the creation of a job (or two claims) can race to start it: one
            # runner per job, or both write its next sequence.
            return
        runner = JobRunner(
            job,
            store=self.store,
            hub=self.hub,
            steps=self._steps,
            config=self.config,
            owner=self.owner,
            clock=self._clock,
            rng=self._rng,
        )
        task = asyncio.create_task(self._run(runner), name=f"job-{job.job_id}")
        self._runners[job.job_id] = (runner, task)

    async def _run(self, runner: JobRunner) -> None:
        job_id = runner.job.job_id
        try:
            with metrics.JOBS_IN_FLIGHT.labels(runner.job.kind.value).track_inprogress():
                await runner.run()
            job = runner.job
            if self._issuer is not None and job.kind is JobKind.PROVISION and job.state is State.FAILED:
                # A failed job's client is void, even if the OAuth step never ran to undo it.
                await self._issuer.discard(job.department_id, job_id)
        except asyncio.CancelledError:
            raise
        except ProvisioningError as exc:
            # Lease lost or store unavailable: the job stays as committed; whoever holds
            # its lease next (maybe this replica, after the next claim) resumes it.
            log.warning("job %s paused: %s", job_id, exc.message)
        except Exception:
            log.exception("job %s runner crashed; it will be resumed from the store", job_id)
        finally:
            self._runners.pop(job_id, None)
            # What the job made or removed is what the next health check must see.
            self._health.forget(runner.job.department_id)

    async def _claim(self) -> None:
        capacity = self.config.max_running_jobs - len(self._runners)
        if capacity <= 0:
            return
        now = self._clock()
        claimed = await self.store.claim_jobs(
            self.owner, now, self._lease_until(), capacity, pinned=self._pinned
        )
        for job_id in claimed:
            if job_id in self._runners:
                continue
            job = await self.store.get_job(job_id)
            if job is not None and not job.is_finished:
                self._start_runner(job)

    async def _take_census(self) -> None:
        """Refresh the store-wide gauges (departments by status, overdue jobs)."""
        while True:
            try:
                census = await self.store.census(self._clock())
            except ProvisioningError as exc:
                log.warning("store census skipped: %s", exc.message)
            else:
                metrics.census_taken(*census)
            await asyncio.sleep(self.config.census_interval)

    async def _retain(self) -> None:
        """Remove what is past the retention period, a batch at a time, then sleep."""
        while True:
            cutoff = self._clock() - timedelta(days=self.config.retention_days)
            removed = [0, 0, 0]
            try:
                while pruned := await self.store.prune(cutoff, RETENTION_BATCH):
                    removed = [a + b for a, b in zip(removed, pruned, strict=True)]
                    await asyncio.sleep(RETENTION_PAUSE)
            except ProvisioningError as exc:
                log.warning("retention skipped: %s", exc.message)
            if any(removed):
                log.info(
                    "retention removed the events of %d finished jobs, %d audit entries and %d "
                    "webhook messages from before %s",
                    *removed,
                    cutoff.isoformat(timespec="seconds"),
                )
            await asyncio.sleep(self.config.retention_interval)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.claim_interval)
            try:
                renewing = list(self._runners)
                held, cancels = await self.store.renew_leases(self.owner, renewing, self._lease_until())
                for job_id in renewing:
                    entry = self._runners.get(job_id)
                    if entry is None:
                        continue
                    runner, task = entry
                    if job_id not in held and not task.done():
                        log.warning("lease on job %s lost; another replica resumes it", job_id)
                        task.cancel()
                    elif job_id in cancels:
                        runner.request_cancel()
                await self._claim()
            except ProvisioningError as exc:
                log.warning("engine maintenance skipped: %s", exc.message)
