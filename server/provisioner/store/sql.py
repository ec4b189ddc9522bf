"""The durable job store on SQLAlchemy 2 (async): SQLite by default, PostgreSQL by URL.

Job commits go through one writer task that groups whatever is queued into a single
transaction (group commit): each caller still awaits the commit of its own changes before
publishing them, but a thousand busy jobs share a handful of fsyncs instead of a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from provisioner.core.department import AuditEntry, Department, department_status
from provisioner.core.errors import ConflictError, LeaseLostError, StoreUnavailableError
from provisioner.core.job import Event, Job
from provisioner.core.states import DepartmentStatus, JobKind
from provisioner.store import codec
from provisioner.store.migrations import upgrade_to_head
from provisioner.store.schema import audit_log, departments, job_events, job_steps, jobs

log = logging.getLogger(__name__)

_BATCH_LIMIT = 512


@dataclass(slots=True)
class _PendingCommit:
    job_values: dict[str, Any]
    job_id: str
    owner: str
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    department: dict[str, Any] | None
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (watchers, status queries) run beside the single writer; NORMAL
    # synchronous is durable across process crashes, which is what WAL needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _is_unique_violation(exc: IntegrityError) -> bool:
    original = exc.orig
    if getattr(original, "sqlstate", None) == "23505":  # PostgreSQL unique_violation
        return True
    return "UNIQUE constraint failed" in str(original)


class SqlJobStore:
    """`JobStore` on any SQLAlchemy async URL (sqlite+aiosqlite, postgresql+asyncpg)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self._engine: AsyncEngine = create_async_engine(url, echo=echo, pool_pre_ping=True)
        self._dialect = self._engine.dialect.name
        if self._dialect == "sqlite":
            sa_event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        self._queue: asyncio.Queue[_PendingCommit | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def initialize(self) -> None:
        """Bring the schema to the latest migration, then start the commit writer."""
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(upgrade_to_head)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreUnavailableError(f"cannot open the job store: {exc}") from exc
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="job-store-writer")

    async def close(self) -> None:
        if self._writer is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await self._engine.dispose()

    # -- writes -----------------------------------------------------------------------------

    async def create_job(
        self, job: Job, event: Event, audit: AuditEntry, lease: tuple[str, datetime] | None = None
    ) -> None:
        dept = self._department_values(job)
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        upsert = insert(departments).values(
            {
                "department_id": job.department_id,
                "created_at": job.created_at,
                "spec": job.spec.to_dict(),
                "region": job.spec.region,
                **dept,
            }
        )
        upsert = upsert.on_conflict_do_update(index_elements=["department_id"], set_=dept)
        try:
            async with self._engine.begin() as conn:
                row = codec.new_job_row(job)
                row["lease_owner"], row["lease_expires_at"] = lease or (None, None)
                await conn.execute(jobs.insert(), [row])
                await conn.execute(
                    job_steps.insert(), [codec.step_row(job.job_id, s) for s in job.steps.values()]
                )
                await conn.execute(job_events.insert(), [codec.event_row(event)])
                await conn.execute(upsert)
                await conn.execute(audit_log.insert(), [codec.audit_row(audit)])
        except IntegrityError as exc:
            if not _is_unique_violation(exc):
                raise
            raise ConflictError(
                f"department {job.department_id} already has an unfinished {job.kind} job, "
                "or the request id was used before"
            ) from exc
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreUnavailableError(f"job store unavailable: {exc.__class__.__name__}") from exc

    def _department_values(self, job: Job) -> dict[str, Any]:
        values: dict[str, Any] = {
            "status": department_status(job).value,
            "current_job_id": job.job_id,
            "updated_at": job.updated_at or job.created_at,
        }
        if job.kind is JobKind.PROVISION:
            values["spec"] = job.spec.to_dict()
            values["region"] = job.spec.region
        return values

    async def commit(self, job: Job, events: Sequence[Event], owner: str) -> None:
        if self._writer is None:
            raise RuntimeError("job store used before initialize()")
        pending = _PendingCommit(
            job_values=codec.job_values(job),
            job_id=job.job_id,
            owner=owner,
            # Every step row, not only those the events name: the aggregate is the truth,
            # and a row is cheap next to the transaction it rides in.
            steps=[codec.step_row(job.job_id, step) for step in job.steps.values()],
            events=[codec.event_row(e) for e in events],
            department=self._department_values(job) if job.is_finished else None,
        )
        self._queue.put_nowait(pending)
        await pending.future

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < _BATCH_LIMIT and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            await self._write_batch(batch)
            if stop:
                return

    async def _write_batch(self, batch: list[_PendingCommit]) -> None:
        lost: set[int] = set()
        try:
            async with self._engine.begin() as conn:
                for index, pending in enumerate(batch):
                    result = await conn.execute(
                        jobs.update()
                        .where(jobs.c.job_id == pending.job_id, jobs.c.lease_owner == pending.owner)
                        .values(**pending.job_values)
                    )
                    if result.rowcount != 1:
                        lost.add(index)
                kept = [p for i, p in enumerate(batch) if i not in lost]
                await self._write_children(conn, kept)
        except Exception as exc:
            if len(batch) > 1:
                # Confine the failure to the commit that caused it, if one did.
                for pending in batch:
                    await self._write_batch([pending])
                return
            error = StoreUnavailableError(f"job store write failed: {exc.__class__.__name__}")
            log.error("job store commit of job %s failed", batch[0].job_id, exc_info=exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for index, pending in enumerate(batch):
            if pending.future.done():
                continue
            if index in lost:
                pending.future.set_exception(
                    LeaseLostError(f"job {pending.job_id} is no longer leased to {pending.owner}")
                )
            else:
                pending.future.set_result(None)

    async def _write_children(self, conn: AsyncConnection, batch: list[_PendingCommit]) -> None:
        steps = [s for p in batch for s in p.steps]
        if steps:
            await conn.execute(
                job_steps.update()
                .where(
                    job_steps.c.job_id == sa.bindparam("b_job_id"), job_steps.c.name == sa.bindparam("b_name")
                )
                .values(
                    status=sa.bindparam("status"),
                    attempts=sa.bindparam("attempts"),
                    started_at=sa.bindparam("started_at"),
                    finished_at=sa.bindparam("finished_at"),
                    last_error=sa.bindparam("last_error"),
                    resources=sa.bindparam("resources"),
                ),
                [{**s, "b_job_id": s["job_id"], "b_name": s["name"]} for s in steps],
            )
        events = [e for p in batch for e in p.events]
        if events:
            await conn.execute(job_events.insert(), events)
        for pending in batch:
            if pending.department is not None:
                await conn.execute(
                    departments.update()
                    # A later job (a deprovisioning) may own the department by now.
                    .where(departments.c.current_job_id == pending.job_id)
                    .values(**pending.department)
                )

    # -- leases -----------------------------------------------------------------------------

    async def claim_jobs(self, owner: str, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        candidates = (
            sa.select(jobs.c.job_id)
            .where(
                jobs.c.finished_at.is_(None),
                sa.or_(
                    jobs.c.lease_owner.is_(None),
                    jobs.c.lease_owner == owner,
                    jobs.c.lease_expires_at < now,
                ),
            )
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        stmt = (
            jobs.update()
            .where(jobs.c.job_id.in_(candidates.scalar_subquery()))
            .values(lease_owner=owner, lease_expires_at=lease_until)
            .returning(jobs.c.job_id)
        )
        async with self._writing() as conn:
            return list((await conn.execute(stmt)).scalars())

    async def renew_leases(
        self, owner: str, job_ids: Sequence[str], until: datetime
    ) -> tuple[set[str], set[str]]:
        if not job_ids:
            return set(), set()
        stmt = (
            jobs.update()
            .where(jobs.c.lease_owner == owner, jobs.c.job_id.in_(list(job_ids)))
            .values(lease_expires_at=until)
            .returning(jobs.c.job_id, jobs.c.cancel_requested)
        )
        async with self._writing() as conn:
            rows = (await conn.execute(stmt)).all()
        return {r.job_id for r in rows}, {r.job_id for r in rows if r.cancel_requested}

    async def release(self, owner: str, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        async with self._writing() as conn:
            await conn.execute(
                jobs.update()
                .where(jobs.c.lease_owner == owner, jobs.c.job_id.in_(list(job_ids)))
                .values(lease_owner=None, lease_expires_at=None)
            )

    async def request_cancel(self, job_id: str) -> None:
        async with self._writing() as conn:
            await conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(cancel_requested=True))

    async def record_audit(self, entry: AuditEntry) -> None:
        async with self._writing() as conn:
            await conn.execute(audit_log.insert(), [codec.audit_row(entry)])

    @contextlib.asynccontextmanager
    async def _writing(self) -> Any:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreUnavailableError(f"job store unavailable: {exc.__class__.__name__}") from exc

    # -- reads ------------------------------------------------------------------------------

    async def _jobs_where(self, *criteria: Any, order: Any = None, limit: int | None = None) -> list[Job]:
        query = sa.select(jobs).where(*criteria)
        if order is not None:
            query = query.order_by(order)
        if limit is not None:
            query = query.limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
            if not rows:
                return []
            ids = [r["job_id"] for r in rows]
            step_rows = (
                (await conn.execute(sa.select(job_steps).where(job_steps.c.job_id.in_(ids)))).mappings().all()
            )
        by_job: dict[str, list[Any]] = {}
        for s in step_rows:
            by_job.setdefault(s["job_id"], []).append(s)
        return [codec.job_from_rows(r, by_job.get(r["job_id"], [])) for r in rows]

    @contextlib.asynccontextmanager
    async def _reading(self) -> Any:
        try:
            async with self._engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreUnavailableError(f"job store unavailable: {exc.__class__.__name__}") from exc

    async def get_job(self, job_id: str) -> Job | None:
        found = await self._jobs_where(jobs.c.job_id == job_id)
        return found[0] if found else None

    async def find_by_request_id(self, request_id: str) -> Job | None:
        found = await self._jobs_where(jobs.c.request_id == request_id)
        return found[0] if found else None

    async def unfinished_jobs(self, department_id: str) -> list[Job]:
        return await self._jobs_where(
            jobs.c.department_id == department_id, jobs.c.finished_at.is_(None), order=jobs.c.created_at
        )

    async def latest_job(self, department_id: str) -> Job | None:
        found = await self._jobs_where(
            jobs.c.department_id == department_id, order=jobs.c.created_at.desc(), limit=1
        )
        return found[0] if found else None

    async def latest_provision(self, department_id: str) -> Job | None:
        found = await self._jobs_where(
            jobs.c.department_id == department_id,
            jobs.c.kind == JobKind.PROVISION.value,
            order=jobs.c.created_at.desc(),
            limit=1,
        )
        return found[0] if found else None

    async def events_after(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[Event]:
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.sequence > after_sequence)
            .order_by(job_events.c.sequence)
            .limit(limit)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [codec.event_from_row(r) for r in rows]

    async def get_department(self, department_id: str) -> Department | None:
        query = sa.select(departments).where(departments.c.department_id == department_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).mappings().first()
        return codec.department_from_row(row) if row else None

    async def list_departments(
        self,
        *,
        status: DepartmentStatus | None = None,
        region: str | None = None,
        after_id: str = "",
        limit: int = 100,
    ) -> list[Department]:
        query = sa.select(departments).where(departments.c.department_id > after_id)
        if status is not None:
            query = query.where(departments.c.status == status.value)
        if region is not None:
            query = query.where(departments.c.region == region)
        query = query.order_by(departments.c.department_id).limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [codec.department_from_row(r) for r in rows]

    async def count_departments(self, statuses: frozenset[DepartmentStatus]) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(departments)
            .where(departments.c.status.in_([s.value for s in statuses]))
        )
        async with self._reading() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def audit_log(self, department_id: str) -> list[AuditEntry]:
        query = (
            sa.select(audit_log).where(audit_log.c.department_id == department_id).order_by(audit_log.c.id)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [codec.audit_from_row(r) for r in rows]
