"""The durable job store on SQLAlchemy 2 (async): SQLite by default, PostgreSQL by URL.

Job creations and commits go through the group-commit writer (`store/writer.py`); leases,
the audit log and every read use a pool of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from provisioner.core.department import AuditEntry, Department, department_status
from provisioner.core.errors import StoreUnavailableError
from provisioner.core.job import Event, Job
from provisioner.core.notifications import Notification
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.core.states import DepartmentStatus, JobKind
from provisioner.store import codec
from provisioner.store.admissions import SqlAdmissions
from provisioner.store.connections import reading, writing
from provisioner.store.inline_sqlite import inline_creator
from provisioner.store.migrations import upgrade_to_head
from provisioner.store.notify import Head, Listener
from provisioner.store.outbox import SqlOutbox, outbox_row
from provisioner.store.protocol import Census, JobHead, Pruned
from provisioner.store.routes import SqlRouteStore
from provisioner.store.schema import audit_log, departments, job_events, job_steps, jobs, webhook_outbox
from provisioner.store.secrets import SqlSecretStore
from provisioner.store.writer import GroupCommitWriter, PendingCommit, PendingCreate

log = logging.getLogger(__name__)

_BATCH_LIMIT = 512
#: Ids per `IN (...)`: well under any SQLite build's limit on bound parameters.
_IN_CHUNK = 500


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Switching a new database to WAL takes an exclusive lock: a replica starting beside
    # another waits for it (`inline_sqlite` retries what finds the database locked).
    # WAL lets readers (watchers, status queries) run beside the single writer; NORMAL
    # synchronous is durable across process crashes, which is what WAL needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # The writer's transactions take SQLite's write lock when they start: what a batch
    # reads cannot change before it commits, even with other replicas on the same file.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class SqlJobStore:
    """`JobStore` on any SQLAlchemy async URL (sqlite+aiosqlite, postgresql+asyncpg)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        sqlite = make_url(url).get_backend_name() == "sqlite"
        # SQLite runs on the loop's thread (`inline_sqlite`); the writer's connection
        # begins its transactions itself, so that a batch's checks (unique jobs, the quota)
        # read inside the transaction that writes.
        self._engine: AsyncEngine = create_async_engine(
            url,
            echo=echo,
            pool_pre_ping=not sqlite,
            **({"async_creator": inline_creator(url)} if sqlite else {}),
        )
        self._dialect = self._engine.dialect.name
        # The writer's own single connection: it never waits behind readers for the pool.
        write_engine = create_async_engine(
            url,
            echo=echo,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=not sqlite,
            **({"async_creator": inline_creator(url, autocommit=True)} if sqlite else {}),
        )
        if sqlite:
            sa_event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
            sa_event.listen(write_engine.sync_engine, "connect", _sqlite_pragmas)
            sa_event.listen(write_engine.sync_engine, "begin", _sqlite_begin_immediate)
        self._writer = GroupCommitWriter(write_engine)
        self._write_engine = write_engine
        #: Department secrets and store-wide settings, on the same database.
        self.secrets = SqlSecretStore(self._engine)
        #: The gateway's routes, on the same database.
        self.routes = SqlRouteStore(self._engine)
        #: The API's rate-limit windows, shared by every replica.
        self.admissions = SqlAdmissions(self._writer, self._engine)
        #: Webhook messages, written by `commit` and sent by `webhooks`.
        self.outbox = SqlOutbox(self._engine)
        #: Step rows as last committed per running job, so commits send only what changed.
        self._written_steps: dict[str, list[dict[str, Any]]] = {}

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
        self._writer.start()

    async def close(self) -> None:
        await self._writer.stop()
        await self._engine.dispose()
        await self._write_engine.dispose()

    def listener(
        self, *, on_heads: Callable[[list[Head]], None], on_state: Callable[[bool], None]
    ) -> Listener | None:
        """Who hears of commits by other replicas: on PostgreSQL a LISTEN connection; on
        SQLite nobody (its watchers poll)."""
        if self._dialect != "postgresql":
            return None
        return Listener(self.url, on_heads=on_heads, on_state=on_state)

    # -- writes -----------------------------------------------------------------------------

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
        dept = self._department_values(job)
        if job.kind is JobKind.PROVISION:
            dept["home"] = home
        row = codec.new_job_row(job)
        row["lease_owner"], row["lease_expires_at"] = lease or (None, None)
        row["pinned_to"] = home
        pending = PendingCreate(
            job_row=row,
            steps=[codec.step_row(job.job_id, s) for s in job.steps.values()],
            event=codec.event_row(event),
            department={
                "department_id": job.department_id,
                "created_at": job.created_at,
                "spec": job.spec.to_dict(),
                "region": job.spec.region,
                "home": home,
                **dept,
            },
            department_keys=tuple(sorted(dept)),
            audit=codec.audit_row(audit),
            quota=quota if job.kind is JobKind.PROVISION else None,
        )
        await self._writer.write(pending)

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

    async def commit(
        self, job: Job, events: Sequence[Event], owner: str, notices: Sequence[Notification] = ()
    ) -> None:
        rows = [codec.step_row(job.job_id, step) for step in job.steps.values()]
        previous = self._written_steps.get(job.job_id)
        changed = rows if previous is None else [r for r, p in zip(rows, previous, strict=True) if r != p]
        pending = PendingCommit(
            job_values=codec.job_values(job),
            job_id=job.job_id,
            owner=owner,
            # Whatever changed since the last commit, named by an event or not (resources
            # adopted before a teardown starts): the aggregate is the truth.
            steps=changed,
            events=[codec.event_row(e) for e in events],
            department=self._department_values(job) if job.is_finished else None,
            outbox=[outbox_row(n) for n in notices],
        )
        try:
            await self._writer.write(pending)
        except BaseException:
            self._written_steps.pop(job.job_id, None)
            raise
        if job.is_finished:
            self._written_steps.pop(job.job_id, None)
        else:
            self._written_steps[job.job_id] = rows

    # -- leases -----------------------------------------------------------------------------

    async def claim_jobs(
        self, owner: str, now: datetime, lease_until: datetime, limit: int, *, pinned: bool = False
    ) -> list[str]:
        candidates = (
            sa.select(jobs.c.job_id)
            .where(
                jobs.c.finished_at.is_(None),
                jobs.c.pinned_to == owner if pinned else jobs.c.pinned_to.is_(None),
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
        async with writing(self._engine) as conn:
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
        async with writing(self._engine) as conn:
            rows = (await conn.execute(stmt)).all()
        return {r.job_id for r in rows}, {r.job_id for r in rows if r.cancel_requested}

    async def release(self, owner: str, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        async with writing(self._engine) as conn:
            await conn.execute(
                jobs.update()
                .where(jobs.c.lease_owner == owner, jobs.c.job_id.in_(list(job_ids)))
                .values(lease_owner=None, lease_expires_at=None)
            )

    async def request_cancel(self, job_id: str) -> None:
        async with writing(self._engine) as conn:
            await conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(cancel_requested=True))

    async def record_audit(self, entry: AuditEntry) -> None:
        async with writing(self._engine) as conn:
            await conn.execute(audit_log.insert(), [codec.audit_row(entry)])

    # -- reads ------------------------------------------------------------------------------

    async def _jobs_where(self, *criteria: Any, order: Any = None, limit: int | None = None) -> list[Job]:
        query = sa.select(jobs).where(*criteria)
        if order is not None:
            query = query.order_by(*(order if isinstance(order, tuple) else (order,)))
        if limit is not None:
            query = query.limit(limit)
        async with reading(self._engine) as conn:
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

    async def get_job(self, job_id: str) -> Job | None:
        found = await self._jobs_where(jobs.c.job_id == job_id)
        return found[0] if found else None

    async def job_head(self, job_id: str) -> JobHead | None:
        query = sa.select(jobs.c.finished_at, jobs.c.last_sequence).where(jobs.c.job_id == job_id)
        async with reading(self._engine) as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else JobHead(row.finished_at is not None, row.last_sequence)

    async def job_heads(self, job_ids: Sequence[str]) -> dict[str, JobHead]:
        found: dict[str, JobHead] = {}
        columns = (jobs.c.job_id, jobs.c.finished_at, jobs.c.last_sequence)
        async with reading(self._engine) as conn:
            for start in range(0, len(job_ids), _IN_CHUNK):
                chunk = job_ids[start : start + _IN_CHUNK]
                for row in await conn.execute(sa.select(*columns).where(jobs.c.job_id.in_(chunk))):
                    found[row.job_id] = JobHead(row.finished_at is not None, row.last_sequence)
        return found

    async def find_by_request_id(self, request_id: str) -> Job | None:
        found = await self._jobs_where(jobs.c.request_id == request_id)
        return found[0] if found else None

    async def unfinished_jobs(self, department_id: str) -> list[Job]:
        return await self._jobs_where(
            jobs.c.department_id == department_id, jobs.c.finished_at.is_(None), order=jobs.c.created_at
        )

    async def latest_job(self, department_id: str, kind: JobKind | None = None) -> Job | None:
        criteria = [jobs.c.department_id == department_id]
        if kind is not None:
            criteria.append(jobs.c.kind == kind.value)
        found = await self._jobs_where(*criteria, order=jobs.c.created_at.desc(), limit=1)
        return found[0] if found else None

    async def events_after(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[Event]:
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.sequence > after_sequence)
            .order_by(job_events.c.sequence)
            .limit(limit)
        )
        async with reading(self._engine) as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [codec.event_from_row(r) for r in rows]

    async def get_department(self, department_id: str) -> Department | None:
        query = sa.select(departments).where(departments.c.department_id == department_id)
        async with reading(self._engine) as conn:
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
        async with reading(self._engine) as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [codec.department_from_row(r) for r in rows]

    async def census(self, now: datetime) -> Census:
        by_status = sa.select(departments.c.status, sa.func.count()).group_by(departments.c.status)
        overdue = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.finished_at.is_(None), jobs.c.deadline_at < now)
        )
        outbox = sa.select(
            sa.func.count().filter(
                webhook_outbox.c.delivered_at.is_(None), webhook_outbox.c.failed_at.is_(None)
            ),
            sa.func.count(webhook_outbox.c.failed_at),
        )
        async with reading(self._engine) as conn:
            counts = {status: int(n) for status, n in await conn.execute(by_status)}
            late = int((await conn.execute(overdue)).scalar_one())
            pending, failed = (await conn.execute(outbox)).one()
        return Census({s: counts.get(s.value, 0) for s in DepartmentStatus}, late, int(pending), int(failed))

    async def prune(self, before: datetime, batch: int) -> Pruned:
        finished = (
            sa.select(jobs.c.job_id)
            .where(
                jobs.c.finished_at < before,
                sa.exists().where(job_events.c.job_id == jobs.c.job_id),
            )
            .limit(batch)
        )
        old_audit = (
            sa.select(audit_log.c.id).where(audit_log.c.at < before).order_by(audit_log.c.id).limit(batch)
        )
        w = webhook_outbox.c
        settled = (
            sa.select(w.message_id)
            .where(w.created_at < before, sa.or_(w.delivered_at.is_not(None), w.failed_at.is_not(None)))
            .limit(batch)
        )
        counts = []
        for table, column, chosen in (
            (job_events, job_events.c.job_id, finished),
            (audit_log, audit_log.c.id, old_audit),
            (webhook_outbox, w.message_id, settled),
        ):
            # One short transaction each, so the commit writer never waits long.
            async with writing(self._engine) as conn:
                ids = list((await conn.execute(chosen)).scalars())
                if ids:
                    await conn.execute(table.delete().where(column.in_(ids)))
            counts.append(len(ids))
        return Pruned(*counts)

    async def list_jobs(
        self, query: JobQuery, *, before: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[Job]:
        criteria = []
        if query.department_id is not None:
            criteria.append(jobs.c.department_id == query.department_id)
        if query.kind is not None:
            criteria.append(jobs.c.kind == query.kind.value)
        if query.state is not None:
            criteria.append(jobs.c.state == query.state.value)
        if before is not None:
            criteria.append(sa.tuple_(jobs.c.created_at, jobs.c.job_id) < sa.tuple_(*before))
        newest = (jobs.c.created_at.desc(), jobs.c.job_id.desc())
        return await self._jobs_where(*criteria, order=newest, limit=limit)

    async def list_audit(
        self, query: AuditQuery, *, before_id: int | None = None, limit: int = 100
    ) -> list[tuple[int, AuditEntry]]:
        a = audit_log.c
        criteria = []
        for column, value in ((a.department_id, query.department_id), (a.principal, query.principal)):
            if value is not None:
                criteria.append(column == value)
        if query.action is not None:
            criteria.append(a.action == query.action)
        if query.since is not None:
            criteria.append(a.at >= query.since)
        if query.until is not None:
            criteria.append(a.at < query.until)
        if before_id is not None:
            criteria.append(a.id < before_id)
        statement = sa.select(audit_log).where(*criteria).order_by(a.id.desc()).limit(limit)
        async with reading(self._engine) as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [(int(r["id"]), codec.audit_from_row(r)) for r in rows]

    async def audit_log(self, department_id: str) -> list[AuditEntry]:
        query = (
            sa.select(audit_log).where(audit_log.c.department_id == department_id).order_by(audit_log.c.id)
        )
        async with reading(self._engine) as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [codec.audit_from_row(r) for r in rows]
