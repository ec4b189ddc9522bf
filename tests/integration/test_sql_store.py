"""The SQL job store against real SQLite and PostgreSQL: what its users can observe.

Every test runs on both backends through the `store_url` / `sql_store` fixtures.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from provisioner.core.department import AuditEntry
from provisioner.core.errors import ConflictError, LeaseLostError, QuotaExceededError
from provisioner.core.job import Event, EventType, Job
from provisioner.core.notifications import notifications
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import STEP_ORDER, DepartmentStatus, JobKind, State, StepName, StepStatus
from provisioner.engine.config import EngineConfig
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.steps.base import StepContext
from provisioner.steps.noop import NoopStep
from provisioner.store.migrations import alembic_config
from provisioner.store.protocol import JobHead
from provisioner.store.schema import metadata
from provisioner.store.sql import SqlJobStore
from tests.unit.factories import fail_outright, walk_to_completion

OWNER = "replica-a"
OTHER = "replica-b"


def make_spec(department_id: str = "hr", region: str = "us-west") -> DepartmentSpec:
    return DepartmentSpec(
        department_id, f"Department {department_id}", ("email",), "90d", region, "admin@example.com"
    )


def new_job(
    department_id: str = "hr",
    *,
    kind: JobKind = JobKind.PROVISION,
    region: str = "us-west",
    request_id: str | None = None,
    now: datetime | None = None,
) -> tuple[Job, Event]:
    now = now or datetime.now(UTC)
    return Job.create(
        job_id=str(uuid.uuid4()),
        kind=kind,
        spec=make_spec(department_id, region),
        principal="alice@example.com",
        now=now,
        deadline_at=now + timedelta(minutes=5),
        request_id=request_id,
    )


def audit_of(job: Job) -> AuditEntry:
    return AuditEntry(
        job.created_at,
        job.principal,
        job.kind.value,
        job.department_id,
        "accepted",
        job.job_id,
        job.request_id,
    )


async def add_job(
    store: SqlJobStore,
    department_id: str = "hr",
    *,
    owner: str | None = OWNER,
    lease_for: timedelta = timedelta(minutes=5),
    kind: JobKind = JobKind.PROVISION,
    region: str = "us-west",
    request_id: str | None = None,
    now: datetime | None = None,
) -> Job:
    """Create a job in the store, leased to `owner` (unleased if None)."""
    job, first = new_job(department_id, kind=kind, region=region, request_id=request_id, now=now)
    lease = (owner, datetime.now(UTC) + lease_for) if owner is not None else None
    await store.create_job(job, first, audit_of(job), lease)
    return job


async def sequences(store: SqlJobStore, job_id: str) -> list[int]:
    return [e.sequence for e in await store.events_after(job_id, 0)]


# -- schema -------------------------------------------------------------------------------------


def _schema_differences(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


def _current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def test_migrations_build_exactly_the_declared_schema(sql_store: SqlJobStore) -> None:
    async with sql_store.engine.connect() as conn:
        assert await conn.run_sync(_schema_differences) == []
        revision = await conn.run_sync(_current_revision)
    assert revision == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_initialize_again_is_harmless_and_keeps_data(sql_store: SqlJobStore, store_url: str) -> None:
    job = await add_job(sql_store)
    await sql_store.initialize()
    second = SqlJobStore(store_url)
    try:
        await second.initialize()
        assert await second.get_job(job.job_id) == job
    finally:
        await second.close()
    assert await sql_store.get_job(job.job_id) == job
    async with sql_store.engine.connect() as conn:
        assert await conn.run_sync(_schema_differences) == []


# Run in separate processes, as replicas are: Alembic keeps its migration context in a
# module global, so one process cannot run two migrations at once anyway.
_MIGRATE_WHEN_TOLD = """
import asyncio, sys
from provisioner.store.sql import SqlJobStore

async def main() -> None:
    store = SqlJobStore(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        await store.initialize()
    finally:
        await store.close()

asyncio.run(main())
"""


async def test_replicas_starting_together_migrate_once(store_url: str) -> None:
    replicas = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _MIGRATE_WHEN_TOLD,
            store_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        async with asyncio.timeout(60):
            for replica in replicas:
                assert replica.stdout is not None
                assert await replica.stdout.readline() == b"ready\n"
            # Released together, so their migrations overlap.
            outcomes = await asyncio.gather(*(r.communicate(b"go\n") for r in replicas))
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
    for replica, (_, stderr) in zip(replicas, outcomes, strict=True):
        assert replica.returncode == 0, stderr.decode(errors="replace")

    store = SqlJobStore(store_url)
    await store.initialize()
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_schema_differences) == []
    finally:
        await store.close()


# -- jobs and events ----------------------------------------------------------------------------


async def test_create_and_get_round_trip_a_job(sql_store: SqlJobStore) -> None:
    # Not UTC on the way in: the store must give back the same instants, in UTC.
    now = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    request_id = str(uuid.uuid4())
    job, first = new_job("finance", region="eu-central-1", request_id=request_id, now=now)
    await sql_store.create_job(job, first, audit_of(job))

    loaded = await sql_store.get_job(job.job_id)
    assert loaded == job
    assert loaded is not None
    assert loaded.spec == make_spec("finance", "eu-central-1")
    assert loaded.request_id == request_id
    assert loaded.state is State.PENDING
    assert loaded.deadline_at == now + timedelta(minutes=5)
    assert loaded.last_sequence == 1
    assert list(loaded.steps) == list(STEP_ORDER)
    assert all(s.status is StepStatus.PENDING for s in loaded.steps.values())
    for moment in (loaded.created_at, loaded.deadline_at, loaded.updated_at):
        assert moment is not None
        assert moment.utcoffset() == timedelta(0)

    assert await sql_store.events_after(job.job_id, 0) == [first]
    stored = (await sql_store.events_after(job.job_id, 0))[0]
    assert stored.type is EventType.JOB_CREATED
    assert stored.at.utcoffset() == timedelta(0)
    assert await sql_store.find_by_request_id(request_id) == job
    assert await sql_store.get_job(str(uuid.uuid4())) is None
    assert await sql_store.find_by_request_id(str(uuid.uuid4())) is None


async def test_events_after_pages_in_sequence_order(sql_store: SqlJobStore) -> None:
    job = await add_job(sql_store)
    now = datetime.now(UTC)
    await sql_store.commit(job, job.start(now), OWNER)
    started = job.start_step(StepName.VALIDATE, now)
    await sql_store.commit(job, [started], OWNER)
    await sql_store.commit(job, job.step_succeeded(StepName.VALIDATE, {"check": "ok"}, now), OWNER)
    assert job.last_sequence == 5

    assert await sequences(sql_store, job.job_id) == [1, 2, 3, 4, 5]
    page = await sql_store.events_after(job.job_id, 2, limit=2)
    assert [e.sequence for e in page] == [3, 4]
    assert page[0] == started
    assert page[1].type is EventType.STEP_SUCCEEDED
    assert page[1].detail == {"resources": {"check": "ok"}}
    assert await sql_store.events_after(job.job_id, 5) == []
    assert await sql_store.events_after(str(uuid.uuid4()), 0) == []


async def test_job_heads_reads_many_jobs_at_once(sql_store: SqlJobStore) -> None:
    made = [await add_job(sql_store, f"d{i}") for i in range(3)]
    now = datetime.now(UTC)
    await sql_store.commit(made[0], made[0].start(now), OWNER)
    ids = [j.job_id for j in made] + [str(uuid.uuid4())] * 600  # past one IN (...) chunk, and unknown
    heads = await sql_store.job_heads(ids)
    assert heads == {j.job_id: JobHead(False, j.last_sequence) for j in made}
    assert heads[made[0].job_id].last_sequence == 2


async def test_reads_by_department(sql_store: SqlJobStore) -> None:
    earlier = datetime.now(UTC) - timedelta(minutes=1)
    provision = await add_job(sql_store, "hr", now=earlier)
    assert await sql_store.latest_job("hr") == provision
    deprovision = await add_job(sql_store, "hr", kind=JobKind.DEPROVISION)

    assert await sql_store.unfinished_jobs("hr") == [provision, deprovision]
    assert await sql_store.latest_job("hr") == deprovision
    assert await sql_store.latest_job("hr", JobKind.PROVISION) == provision
    assert await sql_store.unfinished_jobs("legal") == []
    assert await sql_store.latest_job("legal") is None

    await sql_store.commit(provision, fail_outright(provision, datetime.now(UTC)), OWNER)
    assert await sql_store.unfinished_jobs("hr") == [deprovision]


# -- conflicts ----------------------------------------------------------------------------------


async def test_reused_request_id_conflicts_and_writes_nothing(sql_store: SqlJobStore) -> None:
    request_id = str(uuid.uuid4())
    await add_job(sql_store, "hr", request_id=request_id)

    job, first = new_job("legal", request_id=request_id)
    with pytest.raises(ConflictError):
        await sql_store.create_job(job, first, audit_of(job))
    assert await sql_store.get_job(job.job_id) is None
    assert await sql_store.get_department("legal") is None
    assert await sql_store.audit_log("legal") == []


async def test_one_unfinished_job_of_a_kind_per_department(sql_store: SqlJobStore) -> None:
    provision = await add_job(sql_store, "hr")
    job, first = new_job("hr")
    with pytest.raises(ConflictError):
        await sql_store.create_job(job, first, audit_of(job))
    assert await sql_store.unfinished_jobs("hr") == [provision]

    # Another kind is fine: a deprovisioning may start while the provisioning winds down.
    deprovision = await add_job(sql_store, "hr", kind=JobKind.DEPROVISION)
    department = await sql_store.get_department("hr")
    assert department is not None
    assert department.status is DepartmentStatus.DEPROVISIONING
    assert department.current_job_id == deprovision.job_id
    job, first = new_job("hr", kind=JobKind.DEPROVISION)
    with pytest.raises(ConflictError):
        await sql_store.create_job(job, first, audit_of(job))

    # The provisioning finishing later must not take the department back.
    await sql_store.commit(provision, fail_outright(provision, datetime.now(UTC)), OWNER)
    department = await sql_store.get_department("hr")
    assert department is not None
    assert department.status is DepartmentStatus.DEPROVISIONING
    assert department.current_job_id == deprovision.job_id


async def test_a_finished_job_frees_its_department_for_a_new_one(sql_store: SqlJobStore) -> None:
    first_try = await add_job(sql_store, "hr")
    await sql_store.commit(first_try, fail_outright(first_try, datetime.now(UTC)), OWNER)
    department = await sql_store.get_department("hr")
    assert department is not None
    assert department.status is DepartmentStatus.FAILED

    second_try = await add_job(sql_store, "hr")
    department = await sql_store.get_department("hr")
    assert department is not None
    assert department.status is DepartmentStatus.PROVISIONING
    assert department.current_job_id == second_try.job_id
    assert [a.job_id for a in await sql_store.audit_log("hr")] == [first_try.job_id, second_try.job_id]


# -- lease fencing ------------------------------------------------------------------------------


async def test_commit_by_a_non_owner_is_refused_and_writes_nothing(sql_store: SqlJobStore) -> None:
    job = await add_job(sql_store, owner=OWNER)
    before = job.snapshot()
    now = datetime.now(UTC)
    events = [*job.start(now), job.start_step(StepName.VALIDATE, now)]

    with pytest.raises(LeaseLostError):
        await sql_store.commit(job, events, OTHER)
    assert await sql_store.get_job(job.job_id) == before
    assert await sequences(sql_store, job.job_id) == [1]


async def test_commit_without_any_lease_is_refused(sql_store: SqlJobStore) -> None:
    job = await add_job(sql_store, owner=None)
    with pytest.raises(LeaseLostError):
        await sql_store.commit(job, job.start(datetime.now(UTC)), OWNER)
    stored = await sql_store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is State.PENDING
    assert await sequences(sql_store, job.job_id) == [1]


async def test_commit_by_the_owner_persists_state_steps_and_events(sql_store: SqlJobStore) -> None:
    job = await add_job(sql_store, owner=OWNER)
    now = datetime.now(UTC)
    events = [*job.start(now), job.start_step(StepName.VALIDATE, now)]
    events += job.step_succeeded(StepName.VALIDATE, {"report": "validate-hr"}, now)
    await sql_store.commit(job, events, OWNER)

    stored = await sql_store.get_job(job.job_id)
    assert stored == job
    assert stored is not None
    assert stored.state is State.CREATING_DATABASE
    validate = stored.steps[StepName.VALIDATE]
    assert validate.status is StepStatus.SUCCEEDED
    assert validate.attempts == 1
    assert validate.resources == {"report": "validate-hr"}
    assert validate.finished_at == now
    assert await sql_store.events_after(job.job_id, 1) == events


async def test_a_lost_lease_fails_only_its_own_commit(sql_store: SqlJobStore) -> None:
    mine = await add_job(sql_store, "hr", owner=OWNER)
    theirs = await add_job(sql_store, "legal", owner=OTHER)
    now = datetime.now(UTC)
    # Both commits are queued together, so the writer may put them in one transaction.
    results = await asyncio.gather(
        sql_store.commit(mine, mine.start(now), OWNER),
        sql_store.commit(theirs, theirs.start(now), OWNER),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], LeaseLostError)
    assert await sequences(sql_store, mine.job_id) == [1, 2]
    assert await sequences(sql_store, theirs.job_id) == [1]


async def test_a_finished_job_moves_its_department(sql_store: SqlJobStore) -> None:
    job = await add_job(sql_store, "hr")
    now = datetime.now(UTC)
    await sql_store.commit(job, walk_to_completion(job, now), OWNER)
    stored = await sql_store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is State.COMPLETED
    assert stored.finished_at == now
    assert stored.progress == 100
    department = await sql_store.get_department("hr")
    assert department is not None
    assert department.status is DepartmentStatus.ACTIVE
    assert department.updated_at == now
    assert await sequences(sql_store, job.job_id) == list(range(1, job.last_sequence + 1))


async def test_resources_adopted_by_a_teardown_survive_a_takeover(sql_store: SqlJobStore) -> None:
    provision = await add_job(sql_store, "hr")
    now = datetime.now(UTC)
    await sql_store.commit(provision, walk_to_completion(provision, now), OWNER)
    teardown = await add_job(sql_store, "hr", kind=JobKind.DEPROVISION)
    # What a runner does before it starts a teardown.
    latest = await sql_store.latest_job("hr", JobKind.PROVISION)
    assert latest is not None
    teardown.adopt_resources({name: step.resources for name, step in latest.steps.items()})
    await sql_store.commit(teardown, teardown.start(now), OWNER)

    # The replica that takes the job over next must know what is left to remove.
    resumed = await sql_store.get_job(teardown.job_id)
    assert resumed is not None
    assert resumed.steps[StepName.GATEWAY].resources == {"id": "gateway-hr"}
    assert resumed == teardown


async def test_concurrent_commits_land_gap_free(sql_store: SqlJobStore) -> None:
    jobs = await asyncio.gather(*(add_job(sql_store, f"dept-{i:03d}") for i in range(200)))

    async def run(job: Job) -> None:
        # One commit at a time per job, like a runner; the 200 jobs run side by side.
        now = datetime.now(UTC)
        await sql_store.commit(job, job.start(now), OWNER)
        await sql_store.commit(job, [job.start_step(StepName.VALIDATE, now)], OWNER)
        await sql_store.commit(job, job.step_succeeded(StepName.VALIDATE, {"n": job.job_id}, now), OWNER)
        await sql_store.commit(job, [job.start_step(StepName.DATABASE, now)], OWNER)
        await sql_store.commit(job, [job.start_step(StepName.OAUTH, now)], OWNER)

    await asyncio.gather(*(run(job) for job in jobs))

    for job in jobs:
        assert job.last_sequence == 7
        assert await sequences(sql_store, job.job_id) == list(range(1, 8))
        assert await sql_store.get_job(job.job_id) == job


# -- claiming and leases ------------------------------------------------------------------------


async def test_claim_takes_free_and_expired_jobs_only(sql_store: SqlJobStore) -> None:
    start = datetime.now(UTC) - timedelta(minutes=10)
    free = await add_job(sql_store, "free", owner=None, now=start)
    finished = await add_job(sql_store, "finished", owner=OTHER, now=start + timedelta(seconds=1))
    await sql_store.commit(finished, fail_outright(finished, datetime.now(UTC)), OTHER)
    await sql_store.release(OTHER, [finished.job_id])
    held = await add_job(sql_store, "held", owner=OTHER, now=start + timedelta(seconds=2))
    expired = await add_job(
        sql_store, "expired", owner=OTHER, lease_for=-timedelta(seconds=1), now=start + timedelta(seconds=3)
    )

    now = datetime.now(UTC)
    claimed = await sql_store.claim_jobs(OWNER, now, now + timedelta(seconds=30), limit=10)
    assert sorted(claimed) == sorted([free.job_id, expired.job_id])
    assert held.job_id not in claimed

    # Taken over: the previous owner's commits are fenced off.
    with pytest.raises(LeaseLostError):
        await sql_store.commit(expired, expired.start(now), OTHER)
    assert await sequences(sql_store, expired.job_id) == [1]

    # Leases we now hold are not up for grabs.
    assert await sql_store.claim_jobs("replica-c", now, now + timedelta(seconds=30), limit=10) == []


async def test_claim_respects_the_limit_oldest_first(sql_store: SqlJobStore) -> None:
    start = datetime.now(UTC) - timedelta(minutes=10)
    jobs = [
        await add_job(sql_store, f"dept-{i}", owner=None, now=start + timedelta(seconds=i)) for i in range(5)
    ]
    now = datetime.now(UTC)
    first = await sql_store.claim_jobs(OWNER, now, now + timedelta(seconds=30), limit=2)
    # Which jobs, not in what order: the protocol promises no order.
    assert sorted(first) == sorted([jobs[0].job_id, jobs[1].job_id])
    rest = await sql_store.claim_jobs(OTHER, now, now + timedelta(seconds=30), limit=10)
    assert sorted(rest) == sorted(j.job_id for j in jobs[2:])


async def test_replicas_claiming_at_once_never_share_a_job(sql_store: SqlJobStore, store_url: str) -> None:
    jobs = [await add_job(sql_store, f"dept-{i:02d}", owner=None) for i in range(30)]
    other = SqlJobStore(store_url)
    await other.initialize()
    try:
        now = datetime.now(UTC)
        until = now + timedelta(seconds=30)
        mine, theirs = await asyncio.gather(
            sql_store.claim_jobs(OWNER, now, until, limit=20),
            other.claim_jobs(OTHER, now, until, limit=20),
        )
    finally:
        await other.close()
    assert not set(mine) & set(theirs)
    assert set(mine) | set(theirs) == {j.job_id for j in jobs}


async def test_renew_reports_held_leases_and_cancel_requests(sql_store: SqlJobStore) -> None:
    a = await add_job(sql_store, "dept-a", owner=OWNER)
    b = await add_job(sql_store, "dept-b", owner=OWNER)
    theirs = await add_job(sql_store, "dept-c", owner=OTHER)
    until = datetime.now(UTC) + timedelta(minutes=1)
    ids = [a.job_id, b.job_id, theirs.job_id]

    assert await sql_store.renew_leases(OWNER, ids, until) == ({a.job_id, b.job_id}, set())
    await sql_store.request_cancel(b.job_id)
    await sql_store.request_cancel(theirs.job_id)
    assert await sql_store.renew_leases(OWNER, ids, until) == ({a.job_id, b.job_id}, {b.job_id})
    assert await sql_store.renew_leases(OTHER, ids, until) == ({theirs.job_id}, {theirs.job_id})
    assert await sql_store.renew_leases(OWNER, [], until) == (set(), set())


async def test_release_frees_only_the_owners_leases(sql_store: SqlJobStore) -> None:
    a = await add_job(sql_store, "dept-a", owner=OWNER)
    b = await add_job(sql_store, "dept-b", owner=OWNER)
    await sql_store.release(OTHER, [a.job_id, b.job_id])
    await sql_store.release(OWNER, [a.job_id])

    until = datetime.now(UTC) + timedelta(minutes=1)
    assert await sql_store.renew_leases(OWNER, [a.job_id, b.job_id], until) == ({b.job_id}, set())
    now = datetime.now(UTC)
    assert await sql_store.claim_jobs(OTHER, now, until, limit=10) == [a.job_id]
    with pytest.raises(LeaseLostError):
        await sql_store.commit(a, a.start(now), OWNER)


# -- departments --------------------------------------------------------------------------------


async def test_list_departments_pages_and_filters(sql_store: SqlJobStore) -> None:
    layout = {
        "dept-a": ("us-west", DepartmentStatus.PROVISIONING),
        "dept-b": ("eu-central", DepartmentStatus.ACTIVE),
        "dept-c": ("us-west", DepartmentStatus.FAILED),
        "dept-d": ("us-west", DepartmentStatus.ACTIVE),
        "dept-e": ("eu-central", DepartmentStatus.PROVISIONING),
        "dept-f": ("us-west", DepartmentStatus.ACTIVE),
        "dept-g": ("ap-south", DepartmentStatus.FAILED),
    }
    # Created out of order: listing is by id, not by age.
    for department_id, (region, status) in sorted(layout.items(), reverse=True):
        job = await add_job(sql_store, department_id, region=region)
        now = datetime.now(UTC)
        if status is DepartmentStatus.ACTIVE:
            await sql_store.commit(job, walk_to_completion(job, now), OWNER)
        elif status is DepartmentStatus.FAILED:
            await sql_store.commit(job, fail_outright(job, now), OWNER)

    pages: list[list[str]] = []
    after = ""
    while True:
        page = await sql_store.list_departments(after_id=after, limit=3)
        if not page:
            break
        pages.append([d.department_id for d in page])
        after = page[-1].department_id
    assert pages == [["dept-a", "dept-b", "dept-c"], ["dept-d", "dept-e", "dept-f"], ["dept-g"]]

    listed = {d.department_id: d for d in await sql_store.list_departments()}
    for department_id, (region, status) in layout.items():
        assert listed[department_id].spec == make_spec(department_id, region)
        assert listed[department_id].status is status

    def ids(found: list[Any]) -> list[str]:
        return [d.department_id for d in found]

    assert ids(await sql_store.list_departments(status=DepartmentStatus.ACTIVE)) == [
        "dept-b",
        "dept-d",
        "dept-f",
    ]
    assert ids(await sql_store.list_departments(region="eu-central")) == ["dept-b", "dept-e"]
    assert ids(
        await sql_store.list_departments(status=DepartmentStatus.ACTIVE, region="us-west", after_id="dept-d")
    ) == ["dept-f"]
    assert ids(await sql_store.list_departments(status=DepartmentStatus.ACTIVE, limit=1)) == ["dept-b"]
    assert await sql_store.list_departments(region="sa-east") == []


async def test_the_census_counts_departments_by_status_and_jobs_past_their_deadline(
    sql_store: SqlJobStore,
) -> None:
    now = datetime.now(UTC)
    for department_id, finish in [("a", None), ("b", walk_to_completion), ("c", fail_outright), ("d", None)]:
        job = await add_job(sql_store, department_id)
        if finish is not None:
            await sql_store.commit(job, finish(job, now), OWNER)

    census = await sql_store.census(now)
    assert census.departments == dict.fromkeys(DepartmentStatus, 0) | {
        DepartmentStatus.PROVISIONING: 2,
        DepartmentStatus.ACTIVE: 1,
        DepartmentStatus.FAILED: 1,
    }
    assert census.overdue_jobs == 0
    # Past the (five-minute) deadline, the two unfinished jobs are overdue; finished ones never are.
    assert (await sql_store.census(now + timedelta(minutes=6))).overdue_jobs == 2


# -- job history and the audit log ------------------------------------------------------------


async def test_jobs_are_listed_newest_first_with_ties_broken_by_id(sql_store: SqlJobStore) -> None:
    now = datetime.now(UTC)
    same_time = [await add_job(sql_store, f"tie-{i}", now=now) for i in range(3)]
    newest = await add_job(sql_store, "tie-0", kind=JobKind.DEPROVISION, now=now + timedelta(seconds=1))
    older = await add_job(sql_store, "old", now=now - timedelta(hours=1))
    await sql_store.commit(older, fail_outright(older, now), OWNER)

    ties = sorted((j.job_id for j in same_time), reverse=True)
    everything = [newest.job_id, *ties, older.job_id]
    pages, before = [], None
    while page := await sql_store.list_jobs(JobQuery(), before=before, limit=2):
        pages.append([j.job_id for j in page])
        before = (page[-1].created_at, page[-1].job_id)
    assert pages == [everything[:2], everything[2:4], everything[4:]]

    assert [j.job_id for j in await sql_store.list_jobs(JobQuery(department_id="tie-0"))] == [
        newest.job_id,
        same_time[0].job_id,
    ]
    assert [j.job_id for j in await sql_store.list_jobs(JobQuery(kind=JobKind.DEPROVISION))] == [
        newest.job_id
    ]
    (failed,) = await sql_store.list_jobs(JobQuery(state=State.FAILED))
    assert failed.job_id == older.job_id and failed.error is not None
    assert len(failed.steps) == len(StepName), "jobs come with their steps"


async def test_the_audit_log_is_listed_newest_first_and_filtered(sql_store: SqlJobStore) -> None:
    now = datetime.now(UTC)
    entries = [
        AuditEntry(now - timedelta(hours=2), "alice", "provision", "hr", "accepted", None),
        AuditEntry(now - timedelta(hours=1), "bob", "provision", "ops", "CONFLICT", None),
        AuditEntry(now, "alice", "deprovision", "hr", "accepted", None),
    ]
    for entry in entries:
        await sql_store.record_audit(entry)
    listed = await sql_store.list_audit(AuditQuery())
    assert [e for _, e in listed] == entries[::-1]
    ids = [number for number, _ in listed]
    assert ids == sorted(ids, reverse=True)
    assert [e for _, e in await sql_store.list_audit(AuditQuery(), before_id=ids[0], limit=1)] == [entries[1]]
    assert [e for _, e in await sql_store.list_audit(AuditQuery(principal="alice", action="provision"))] == [
        entries[0]
    ]
    assert [e.principal for _, e in await sql_store.list_audit(AuditQuery(department_id="ops"))] == ["bob"]
    window = await sql_store.list_audit(AuditQuery(since=now - timedelta(minutes=90), until=now))
    assert [e for _, e in window] == [entries[1]]


async def test_retention_removes_old_events_audit_and_settled_webhooks_in_batches(
    sql_store: SqlJobStore,
) -> None:
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=100)
    old = []
    for name in ("old-a", "old-b", "old-c"):
        job = await add_job(sql_store, name, now=long_ago)
        events = walk_to_completion(job, long_ago)
        await sql_store.commit(job, events, OWNER, notifications(job, events))
        old.append(job)
    # Running since long ago: its events are never removed, however old.
    running = await add_job(sql_store, "running", now=long_ago)
    await sql_store.commit(running, running.start(long_ago), OWNER)
    recent = await add_job(sql_store, "recent", now=now)
    await sql_store.commit(recent, walk_to_completion(recent, now), OWNER)
    await sql_store.record_audit(AuditEntry(long_ago, "alice", "provision", "old-a", "accepted"))
    # One message settled, the others still to send: only the settled one may go.
    (first, *_) = await sql_store.outbox.claim(OWNER, now, now + timedelta(seconds=30), 10)
    await sql_store.outbox.attempted(
        first.notification.message_id, OWNER, attempts=1, now=now, error=None, retry_at=None
    )

    cutoff = now - timedelta(days=90)
    batches = []
    while pruned := await sql_store.prune(cutoff, batch=2):
        batches.append(tuple(pruned))
    # add_job audits each creation at its time: three old jobs, a running one, and alice.
    assert batches == [(2, 2, 1), (1, 2, 0), (0, 1, 0)]
    for job in old:
        assert await sequences(sql_store, job.job_id) == []
        kept = await sql_store.get_job(job.job_id)
        assert kept is not None and kept.state is State.COMPLETED and len(kept.steps) == len(StepName)
    assert await sequences(sql_store, running.job_id) == [1, 2]
    assert len(await sequences(sql_store, recent.job_id)) > 10
    assert [e.department_id for _, e in await sql_store.list_audit(AuditQuery())] == ["recent"]
    assert (await sql_store.census(now)).webhooks_pending == 2


# -- the webhook outbox --------------------------------------------------------------------------


async def test_webhook_messages_are_committed_with_their_event_or_not_at_all(sql_store: SqlJobStore) -> None:
    now = datetime.now(UTC)
    job = await add_job(sql_store, "kept")
    events = walk_to_completion(job, now)
    (notice,) = notifications(job, events)
    await sql_store.commit(job, events, OWNER, [notice])
    stolen = await add_job(sql_store, "stolen", owner=OTHER)
    events = walk_to_completion(stolen, now)
    with pytest.raises(LeaseLostError):
        await sql_store.commit(stolen, events, OWNER, notifications(stolen, events))

    census = await sql_store.census(now)
    assert (census.webhooks_pending, census.webhooks_failed) == (1, 0)
    (message,) = await sql_store.outbox.claim(OWNER, now, now + timedelta(seconds=30), 10)
    assert message.notification == notice and message.attempts == 0


async def test_webhook_messages_are_leased_retried_and_settled(sql_store: SqlJobStore) -> None:
    now = datetime.now(UTC)
    job = await add_job(sql_store)
    events = walk_to_completion(job, now)
    (notice,) = notifications(job, events)
    await sql_store.commit(job, events, OWNER, [notice])
    outbox = sql_store.outbox
    until = now + timedelta(seconds=30)
    message_id = notice.message_id

    assert [m.notification for m in await outbox.claim(OWNER, now, until, 10)] == [notice]
    assert await outbox.claim(OTHER, now, until, 10) == [], "leased to another replica"
    later = now + timedelta(seconds=5)
    assert await outbox.attempted(
        message_id,
        OWNER,
        attempts=1,
        now=later,
        error="HTTP 500",
        retry_at=later + timedelta(seconds=10),
    )
    assert await outbox.claim(OTHER, later, until, 10) == [], "not due yet"
    due = later + timedelta(seconds=10)
    (again,) = await outbox.claim(OTHER, due, due + timedelta(seconds=30), 10)
    assert again.attempts == 1
    assert not await outbox.attempted(message_id, OWNER, attempts=2, now=due, error=None, retry_at=None)
    # OTHER dies while sending: once its lease expires, OWNER sends the message again.
    expired = due + timedelta(seconds=31)
    assert [m.notification.message_id for m in await outbox.claim(OWNER, expired, expired, 10)] == [
        message_id
    ]
    assert await outbox.attempted(
        message_id, OWNER, attempts=2, now=expired, error="timed out", retry_at=None
    )
    census = await sql_store.census(expired)
    assert (census.webhooks_pending, census.webhooks_failed) == (0, 1)
    assert await outbox.claim(OWNER, expired + timedelta(days=1), expired, 10) == []


# -- the engine on the real store -----------------------------------------------------------------


async def test_orchestrator_provisions_a_department_end_to_end(sql_store: SqlJobStore) -> None:
    hub = EventHub(sql_store, poll_interval=0.2)
    orchestrator = Orchestrator(
        sql_store,
        hub,
        {name: NoopStep(name) for name in StepName},
        EngineConfig(step_timeout=5.0, job_deadline=30.0, lease_seconds=3.0, claim_interval=0.5),
    )
    spec = DepartmentSpec("hr", "Human Resources", ("email",), "90d", "us-west", "admin@example.com")
    request_id = str(uuid.uuid4())
    await orchestrator.start()
    try:
        job, created = await orchestrator.provision(
            spec, principal="alice@example.com", request_id=request_id
        )
        assert created
        async with asyncio.timeout(20):
            finished = await orchestrator.wait(job.job_id)

        assert finished.state is State.COMPLETED
        assert finished.progress == 100
        assert all(s.status is StepStatus.SUCCEEDED for s in finished.steps.values())
        department = await orchestrator.get_department("hr")
        assert department.status is DepartmentStatus.ACTIVE
        assert department.current_job_id == job.job_id
        assert department.spec == spec

        events = await sql_store.events_after(job.job_id, 0)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert finished.last_sequence == len(events)
        assert events[0].type is EventType.JOB_CREATED
        assert events[-1].type is EventType.JOB_FINISHED
        assert events[-1].state is State.COMPLETED

        audit = await sql_store.audit_log("hr")
        assert [(a.action, a.outcome, a.job_id, a.request_id) for a in audit] == [
            ("provision", "accepted", job.job_id, request_id)
        ]

        replay, created = await orchestrator.provision(
            spec, principal="alice@example.com", request_id=request_id
        )
        assert not created
        assert replay.job_id == job.job_id
    finally:
        await orchestrator.stop()
        hub.close()


# -- several replicas: pinned departments and an exact quota -------------------------------------


async def test_a_pinned_job_is_claimed_by_its_home_replica_only(sql_store: SqlJobStore) -> None:
    pinned, first = new_job("pinned")
    await sql_store.create_job(pinned, first, audit_of(pinned), home=OWNER)
    shared = await add_job(sql_store, "shared", owner=None)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=30)

    assert await sql_store.claim_jobs(OTHER, now, until, limit=10, pinned=True) == []
    assert await sql_store.claim_jobs(OTHER, now, until, limit=10) == [shared.job_id]
    assert await sql_store.claim_jobs(OWNER, now, until, limit=10, pinned=True) == [pinned.job_id]
    department = await sql_store.get_department("pinned")
    assert department is not None and department.home == OWNER
    assert (await sql_store.get_department("shared")).home is None  # type: ignore[union-attr]


async def test_the_quota_is_exact_across_replicas_under_concurrent_provisionings(
    sql_store: SqlJobStore, store_url: str
) -> None:
    other = SqlJobStore(store_url)
    await other.initialize()

    async def provision(store: SqlJobStore, department_id: str) -> str:
        job, first = new_job(department_id)
        try:
            await store.create_job(job, first, audit_of(job), quota=3)
        except QuotaExceededError:
            return "refused"
        return "created"

    try:
        outcomes = await asyncio.gather(
            *(provision(sql_store if i % 2 else other, f"dept-{i:02d}") for i in range(12))
        )
        assert outcomes.count("created") == 3
        assert len(await sql_store.list_departments()) == 3  # a refused one leaves no row
        assert await provision(other, "one-more") == "refused"
    finally:
        await other.close()


async def test_the_quota_counts_departments_holding_resources(sql_store: SqlJobStore) -> None:
    job = await add_job(sql_store, "hr")
    await sql_store.commit(job, walk_to_completion(job, datetime.now(UTC)), OWNER)
    extra, extra_first = new_job("it")
    with pytest.raises(QuotaExceededError, match="quota of 1 departments"):
        await sql_store.create_job(extra, extra_first, audit_of(extra), quota=1)
    # The department already counted may get a new job (a teardown, a new provisioning).
    again, again_first = new_job("hr")
    await sql_store.create_job(again, again_first, audit_of(again), (OWNER, datetime.now(UTC)), quota=1)
    # Failed with nothing left behind: it holds nothing, so it counts no more.
    await sql_store.commit(again, fail_outright(again, datetime.now(UTC)), OWNER)
    await sql_store.create_job(extra, extra_first, audit_of(extra), quota=1)


class RecordingStep(NoopStep):
    """A step that notes which replica ran what, so a test can see who did the work."""

    def __init__(self, name: StepName, replica: str, ran: list[tuple[str, str, str]]) -> None:
        super().__init__(name)
        self._replica = replica
        self._ran = ran

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        self._ran.append((self._replica, ctx.department_id, f"apply {self.name}"))
        return {"made_by": self._replica}

    async def compensate(self, ctx: StepContext) -> None:
        self._ran.append((self._replica, ctx.department_id, f"undo {self.name}"))


def pinned_replica(store: SqlJobStore, replica: str, ran: list[tuple[str, str, str]]) -> Orchestrator:
    """A replica whose steps keep resources on its own machine (the embedded profile)."""
    return Orchestrator(
        store,
        EventHub(store, poll_interval=0.1),
        {name: RecordingStep(name, replica, ran) for name in StepName},
        EngineConfig(step_timeout=5.0, job_deadline=30.0, lease_seconds=0.6, claim_interval=0.1),
        owner=replica,
        pinned=True,
    )


async def test_a_pinned_department_is_only_ever_touched_by_the_replica_holding_it(
    sql_store: SqlJobStore, store_url: str
) -> None:
    """Embedded steps on a shared store: whichever replica is asked, the department's home
    does the work; with its home down a teardown waits instead of reporting a false
    compensation, and finishes once the home is back."""
    other = SqlJobStore(store_url)
    await other.initialize()
    ran: list[tuple[str, str, str]] = []
    home, elsewhere = pinned_replica(sql_store, OWNER, ran), pinned_replica(other, OTHER, ran)
    spec = make_spec("hr")
    try:
        await home.start()
        await elsewhere.start()
        made, _ = await home.provision(spec, principal="alice@example.com")
        async with asyncio.timeout(20):
            assert (await home.wait(made.job_id)).state is State.COMPLETED
        hr = await elsewhere.get_department("hr")
        assert hr.home == OWNER

        # Asked elsewhere, done at home; a department asked for elsewhere lives there.
        it, _ = await elsewhere.provision(make_spec("it"), principal="alice@example.com")
        async with asyncio.timeout(20):
            assert (await elsewhere.wait(it.job_id)).state is State.COMPLETED
        assert {r for r, d, _ in ran if d == "hr"} == {OWNER}
        assert {r for r, d, _ in ran if d == "it"} == {OTHER}

        # Home down: the teardown asked elsewhere waits for it rather than pretend.
        await home.stop()
        ran.clear()
        teardown, _ = await elsewhere.deprovision("hr", principal="alice@example.com")
        await asyncio.sleep(1.5)  # more than a lease and several claim intervals
        assert (await elsewhere.get_job(teardown.job_id)).state is State.PENDING
        assert ran == []

        await home.start()
        async with asyncio.timeout(20):
            done = await elsewhere.wait(teardown.job_id)
        assert done.state is State.COMPLETED
        assert {r for r, _, _ in ran} == {OWNER}
        assert len([w for _, _, w in ran if w.startswith("undo")]) == len(StepName)
    finally:
        await home.stop()
        await elsewhere.stop()
        home.hub.close()
        elsewhere.hub.close()
        await other.close()


async def test_rate_windows_admit_exactly_their_count_across_replicas(
    sql_store: SqlJobStore, store_url: str
) -> None:
    others = [SqlJobStore(store_url) for _ in range(2)]
    for store in others:
        await store.initialize()
    replicas = [sql_store, *others]
    now = datetime.now(UTC).timestamp()
    try:
        waits = await asyncio.gather(
            *(
                replicas[i % 3].admissions.admit("provision", "alice", 5, 3600.0, now + i * 0.001)
                for i in range(30)
            )
        )
        assert sum(w is None for w in waits) == 5
        assert all(w is None or 3599 < w < 3601 for w in waits)
        # Other principals and buckets have windows of their own; old admissions expire.
        assert await others[0].admissions.admit("provision", "bob", 5, 3600.0, now) is None
        assert await others[0].admissions.admit("deprovision", "alice", 5, 3600.0, now) is None
        assert await others[1].admissions.admit("provision", "alice", 5, 3600.0, now + 3601) is None
    finally:
        for store in others:
            await store.close()
