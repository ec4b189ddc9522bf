"""Group commit: one writer task turns whatever is queued into a single transaction.

Each caller still awaits the commit of its own change before publishing it, but a
thousand busy jobs share a handful of transactions (and fsyncs) instead of a thousand.
The writer has a connection of its own, so it never queues behind readers, and every
statement is sent once per batch with all its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from provisioner.core.department import HOLDING_RESOURCES
from provisioner.core.errors import (
    ConflictError,
    LeaseLostError,
    ProvisioningError,
    QuotaExceededError,
    StoreUnavailableError,
)
from provisioner.store.admissions import PendingAdmission, decide
from provisioner.store.notify import CHANNEL, payloads
from provisioner.store.prepared import Prepared, PreparedInserts
from provisioner.store.schema import audit_log, departments, job_events, job_steps, jobs, webhook_outbox
from provisioner.telemetry import metrics

log = logging.getLogger(__name__)

_BATCH_LIMIT = 512
#: The PostgreSQL advisory lock that makes quota checks of concurrent creations take turns
#: across replicas (SQLite has one writer at a time anyway).
_QUOTA_LOCK = 0x70726F76  # "prov"
_HOLDING = [s.value for s in HOLDING_RESOURCES]

_JOB_COLUMNS = ("state", "progress", "error", "cleanup", "last_sequence", "updated_at", "finished_at")
_UPDATE_JOB = (
    sa.update(jobs)
    .where(jobs.c.job_id == sa.bindparam("b_job_id"), jobs.c.lease_owner == sa.bindparam("b_owner"))
    .values({c: sa.bindparam(c) for c in _JOB_COLUMNS})
)
_UPDATE_STEP = (
    job_steps.update()
    .where(job_steps.c.job_id == sa.bindparam("job_id_"), job_steps.c.name == sa.bindparam("name_"))
    .values(
        {
            c: sa.bindparam(c)
            for c in ("status", "attempts", "started_at", "finished_at", "last_error", "resources")
        }
    )
)


@dataclass(slots=True)
class PendingCommit:
    """A job's new row values, changed step rows and events, fenced by `owner`'s lease."""

    job_values: dict[str, Any]
    job_id: str
    owner: str
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    department: dict[str, Any] | None
    #: Webhook messages the events call for (`store.outbox`).
    outbox: list[dict[str, Any]] = field(default_factory=list)
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(slots=True)
class PendingCreate:
    """A new job with its steps, first event, department row and audit entry."""

    job_row: dict[str, Any]
    steps: list[dict[str, Any]]
    event: dict[str, Any]
    department: dict[str, Any]
    department_keys: tuple[str, ...]
    audit: dict[str, Any]
    #: For a provisioning: how many departments may hold resources, this one included.
    quota: int | None = None
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


_Item = PendingCommit | PendingCreate | PendingAdmission


def _is_unique_violation(exc: IntegrityError) -> bool:
    original = exc.orig
    if getattr(original, "sqlstate", None) == "23505":  # PostgreSQL unique_violation
        return True
    return "UNIQUE constraint failed" in str(original)


def _conflict(job_row: dict[str, Any]) -> ConflictError:
    return ConflictError(
        f"department {job_row['department_id']} already has an unfinished {job_row['kind']} job, "
        "or the request id was used before"
    )


class GroupCommitWriter:
    """Owns the store's writes of jobs: creations and commits, batched per transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect
        self._dialect = dialect.name
        self._update_job = Prepared(_UPDATE_JOB, dialect)
        self._update_step = Prepared(_UPDATE_STEP, dialect)
        self._insert = {
            table.name: PreparedInserts(table, dialect)
            for table in (jobs, job_steps, job_events, audit_log, webhook_outbox)
        }
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_loop(), name="job-store-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def write(self, item: PendingCommit | PendingCreate) -> None:
        """Queue `item` and wait until its transaction committed (or failed)."""
        await self._queued(item)

    async def admit(self, item: PendingAdmission) -> float | None:
        """Queue a rate-limit admission; None once admitted and committed, else the wait."""
        wait = await self._queued(item)
        assert wait is None or isinstance(wait, float)
        return wait

    async def _queued(self, item: _Item) -> object:
        if self._task is None:
            raise RuntimeError("job store used before initialize()")
        self._queue.put_nowait(item)
        return await item.future

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

    async def _write_batch(self, items: list[_Item]) -> None:
        creates = [p for p in items if isinstance(p, PendingCreate)]
        batch = [p for p in items if isinstance(p, PendingCommit)]
        admissions = [p for p in items if isinstance(p, PendingAdmission)]
        lost: set[int] = set()
        refused: dict[int, ProvisioningError] = {}
        waits: list[float | None] = []
        began = time.perf_counter()
        try:
            async with self._engine.begin() as conn:
                if admissions:
                    waits = await decide(conn, admissions, self._dialect == "postgresql")
                if creates:
                    refused = await self._create_conflicts(conn, creates)
                    refused |= await self._over_quota(conn, creates, refused)
                    await self._insert_creates(conn, [c for i, c in enumerate(creates) if i not in refused])
                if batch:
                    lost = await self._update_jobs(conn, batch)
                    kept = [p for i, p in enumerate(batch) if i not in lost]
                    await self._write_children(conn, kept)
                if self._dialect == "postgresql":
                    await self._announce(
                        conn,
                        [(c.job_row["job_id"], 1) for i, c in enumerate(creates) if i not in refused]
                        + [
                            (p.job_id, p.events[-1]["sequence"])
                            for i, p in enumerate(batch)
                            if i not in lost and p.events
                        ],
                    )
        except Exception as exc:
            if len(items) > 1:
                for pending in items:
                    await self._write_batch([pending])
                return
            if isinstance(exc, IntegrityError) and creates and _is_unique_violation(exc):
                error: Exception = _conflict(creates[0].job_row)
            elif isinstance(exc, OperationalError | DBAPIError | OSError):
                error = StoreUnavailableError(f"job store unavailable: {exc.__class__.__name__}")
            else:
                error = StoreUnavailableError(f"job store write failed: {exc.__class__.__name__}")
                log.error("job store write failed", exc_info=exc)
            for pending in items:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        metrics.STORE_COMMIT.observe(time.perf_counter() - began)
        metrics.STORE_BATCH.observe(len(items))
        for admission, wait in zip(admissions, waits, strict=True):
            if not admission.future.done():
                admission.future.set_result(wait)
        for index, created in enumerate(creates):
            if created.future.done():
                continue
            if index in refused:
                created.future.set_exception(refused[index])
            else:
                created.future.set_result(None)
        for index, pending in enumerate(batch):
            if pending.future.done():
                continue
            if index in lost:
                pending.future.set_exception(
                    LeaseLostError(f"job {pending.job_id} is no longer leased to {pending.owner}")
                )
            else:
                pending.future.set_result(None)

    @staticmethod
    async def _announce(conn: AsyncConnection, heads: list[tuple[str, int]]) -> None:
        """Tell every replica's listener (`store.notify`) what this batch commits; sent by
        PostgreSQL only if, and when, the transaction commits."""
        for payload in payloads(heads):
            await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, payload)))

    async def _update_jobs(self, conn: AsyncConnection, batch: list[PendingCommit]) -> set[int]:
        """Update every job row whose lease is still held; return the indexes of the others."""
        result = await self._update_job.executemany(
            conn, [{**p.job_values, "b_job_id": p.job_id, "b_owner": p.owner} for p in batch]
        )
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount == len(batch):
            return set()  # the usual case: every lease held, no need to ask which
        # Inside the write transaction nobody else can move a lease: whoever owns the row
        # now is who owned it when it was (or was not) updated.
        rows = await conn.execute(
            sa.select(jobs.c.job_id, jobs.c.lease_owner).where(jobs.c.job_id.in_([p.job_id for p in batch]))
        )
        owners = {row.job_id: row.lease_owner for row in rows}
        return {i for i, p in enumerate(batch) if owners.get(p.job_id) != p.owner}

    async def _create_conflicts(
        self, conn: AsyncConnection, creates: list[PendingCreate]
    ) -> dict[int, ProvisioningError]:
        """Creations that would break a unique index, found up front (and within the batch)."""
        wanted = list({c.job_row["department_id"] for c in creates})
        busy = {
            (r[0], r[1])
            for r in (
                await conn.execute(
                    sa.select(jobs.c.department_id, jobs.c.kind).where(
                        jobs.c.department_id.in_(wanted), jobs.c.finished_at.is_(None)
                    )
                )
            ).all()
        }
        request_ids = [c.job_row["request_id"] for c in creates if c.job_row["request_id"]]
        used: set[str] = set()
        if request_ids:
            used = set(
                (await conn.execute(sa.select(jobs.c.request_id).where(jobs.c.request_id.in_(request_ids))))
                .scalars()
                .all()
            )
        conflicts: dict[int, ProvisioningError] = {}
        for index, c in enumerate(creates):
            key = (c.job_row["department_id"], c.job_row["kind"])
            rid = c.job_row["request_id"]
            if key in busy or (rid and rid in used):
                conflicts[index] = _conflict(c.job_row)
                continue
            busy.add(key)
            if rid:
                used.add(rid)
        return conflicts

    async def _over_quota(
        self, conn: AsyncConnection, creates: list[PendingCreate], refused: dict[int, ProvisioningError]
    ) -> dict[int, ProvisioningError]:
        """Provisionings that would take one department more than their quota.

        Counted in the transaction that inserts them, after every other replica's
        creations committed (PostgreSQL: an advisory lock; SQLite: its single writer), so
        concurrent provisionings can never exceed the quota together.
        """
        checked = [i for i, c in enumerate(creates) if c.quota is not None and i not in refused]
        if not checked:
            return {}
        if self._dialect == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_QUOTA_LOCK)))
        holding = departments.c.status.in_(_HOLDING)
        count = int((await conn.execute(sa.select(sa.func.count()).where(holding))).scalar_one())
        asking = list({creates[i].job_row["department_id"] for i in checked})
        counted = set(
            (
                await conn.execute(
                    sa.select(departments.c.department_id).where(
                        holding, departments.c.department_id.in_(asking)
                    )
                )
            )
            .scalars()
            .all()
        )
        over: dict[int, ProvisioningError] = {}
        for index in checked:
            department_id, quota = creates[index].job_row["department_id"], creates[index].quota
            assert quota is not None
            if department_id in counted:
                continue
            if count >= quota:
                over[index] = QuotaExceededError(quota)
                continue
            counted.add(department_id)
            count += 1
        return over

    async def _insert_creates(self, conn: AsyncConnection, creates: list[PendingCreate]) -> None:
        if not creates:
            return
        await self._insert["jobs"].executemany(conn, [c.job_row for c in creates])
        await self._insert["job_steps"].executemany(conn, [s for c in creates for s in c.steps])
        await self._insert["job_events"].executemany(conn, [c.event for c in creates])
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for c in creates:
            groups.setdefault(c.department_keys, []).append(c.department)
        for keys, rows in groups.items():
            stmt = insert(departments)
            stmt = stmt.on_conflict_do_update(
                index_elements=["department_id"], set_={k: stmt.excluded[k] for k in keys}
            )
            await conn.execute(stmt, rows)
        await self._insert["audit_log"].executemany(conn, [c.audit for c in creates])

    async def _write_children(self, conn: AsyncConnection, batch: list[PendingCommit]) -> None:
        steps = [s for p in batch for s in p.steps]
        if steps:
            await self._update_step.executemany(
                conn, [{**s, "job_id_": s["job_id"], "name_": s["name"]} for s in steps]
            )
        events = [e for p in batch for e in p.events]
        if events:
            await self._insert["job_events"].executemany(conn, events)
        messages = [m for p in batch for m in p.outbox]
        if messages:
            await self._insert["webhook_outbox"].executemany(conn, messages)
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for pending in batch:
            if pending.department is not None:
                groups.setdefault(tuple(sorted(pending.department)), []).append(
                    {**pending.department, "b_job_id": pending.job_id}
                )
        for keys, rows in groups.items():
            await conn.execute(
                departments.update()
                # A later job (a deprovisioning) may own the department by now.
                .where(departments.c.current_job_id == sa.bindparam("b_job_id"))
                .values({k: sa.bindparam(k) for k in keys}),
                rows,
            )
