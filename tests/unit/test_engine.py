"""The orchestrator on the in-memory store, with steps that make real marker files."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioner.core.errors import (
    ConflictError,
    FailedPreconditionError,
    InvalidSpecError,
    NotFoundError,
    QuotaExceededError,
    ServiceDrainingError,
)
from provisioner.core.job import Event, EventType, Job
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.core.retry import RetryPolicy
from provisioner.core.states import STEP_STATE, DepartmentStatus, State, StepName, StepStatus
from provisioner.engine.config import EngineConfig
from provisioner.engine.orchestrator import Orchestrator, utcnow
from provisioner.events.hub import EventHub
from provisioner.steps.base import Step
from provisioner.steps.faults import FaultInjectingStep, SlowedStep, parse_fault_plan
from provisioner.steps.local import LocalMarkerStep
from provisioner.steps.noop import NoopStep
from provisioner.steps.oauth import VaultIssuer
from provisioner.steps.vault import CredentialVault, KeySource
from provisioner.store.memory import InMemoryJobStore, InMemorySecretStore
from tests.unit.factories import spec

FAST = EngineConfig(
    step_timeout=0.2,
    job_deadline=20,
    retry=RetryPolicy(base_delay=0.01, max_delay=0.02),
    lease_seconds=0.6,
    claim_interval=0.05,
)

Build = Callable[..., Orchestrator]


@pytest.fixture
def store() -> InMemoryJobStore:
    return InMemoryJobStore()


@pytest.fixture
async def build(store: InMemoryJobStore, tmp_path: Path) -> AsyncIterator[Build]:
    started: list[Orchestrator] = []

    def make(
        faults: str = "",
        config: EngineConfig = FAST,
        delay: float = 0.0,
        owner: str = "r1",
        clock: Callable[[], datetime] = utcnow,
    ) -> Orchestrator:
        steps: dict[StepName, Step] = {n: SlowedStep(LocalMarkerStep(n, tmp_path), delay) for n in StepName}
        plan = parse_fault_plan(faults)
        steps = {n: FaultInjectingStep(s, plan[n]) if n in plan else s for n, s in steps.items()}
        orchestrator = Orchestrator(
            store, EventHub(store, poll_interval=0.05), steps, config, owner=owner, clock=clock
        )
        started.append(orchestrator)
        return orchestrator

    yield make
    for orchestrator in started:
        await orchestrator.stop()


def markers(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.json")}


def ledger(root: Path) -> list[str]:
    path = root / "ledger.log"
    return path.read_text().splitlines() if path.exists() else []


async def step_started(orchestrator: Orchestrator, job_id: str, step: StepName) -> None:
    async with contextlib.aclosing(orchestrator.hub.subscribe(job_id)) as events:
        async for event in events:
            if event.type is EventType.STEP_STARTED and event.step is step:
                return
    raise AssertionError(f"{step} never started")


async def run(orchestrator: Orchestrator, department_id: str = "hr") -> tuple[Job, list[Event]]:
    await orchestrator.start()
    job, created = await orchestrator.provision(spec(department_id), principal="alice")
    assert created
    events = [e async for e in orchestrator.hub.subscribe(job.job_id)]
    return await orchestrator.get_job(job.job_id), events


async def test_a_department_is_provisioned_through_every_state(build: Build, tmp_path: Path) -> None:
    job, events = await run(build())
    assert job.state is State.COMPLETED and job.progress == 100
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.state for e in events if e.type is EventType.STATE_CHANGED]
    assert states == [*STEP_STATE.values(), State.COMPLETED]
    assert all(s.status is StepStatus.SUCCEEDED and s.attempts == 1 for s in job.steps.values())
    assert markers(tmp_path) == {f"hr/{n}.json" for n in StepName}
    department = await build().store.get_department("hr")
    assert department is not None and department.status is DepartmentStatus.ACTIVE


@pytest.mark.parametrize("step", list(StepName))
async def test_a_fatal_step_failure_rolls_everything_back(
    build: Build, tmp_path: Path, step: StepName
) -> None:
    job, events = await run(build(f"{step}=fail"))
    assert job.state is State.FAILED
    assert job.error is not None and job.error.step is step and job.error.reason == "STEP_FAILED"
    assert job.cleanup is not None and job.cleanup.clean
    assert markers(tmp_path) == set()
    assert State.ROLLING_BACK in [e.state for e in events]
    assert events[-1].detail["error"]["step"] == step.value
    department = await build().store.get_department("hr")
    assert department is not None and department.status is DepartmentStatus.FAILED


@pytest.mark.parametrize("step", list(StepName))
async def test_transient_failures_are_retried_until_they_pass(
    build: Build, tmp_path: Path, step: StepName
) -> None:
    job, events = await run(build(f"{step}=transient:2"))
    assert job.state is State.COMPLETED
    assert job.steps[step].attempts == 3
    retries = [e for e in events if e.type is EventType.STEP_RETRYING]
    assert [(e.step, e.attempt) for e in retries] == [(step, 1), (step, 2)]
    assert markers(tmp_path) == {f"hr/{n}.json" for n in StepName}


@pytest.mark.parametrize("step", list(StepName))
async def test_a_hanging_step_times_out_retries_then_rolls_back(
    build: Build, tmp_path: Path, step: StepName
) -> None:
    job, _ = await run(build(f"{step}=hang"))
    assert job.state is State.FAILED
    assert job.error is not None and job.error.reason == "STEP_TIMEOUT"
    assert job.steps[step].attempts == 4  # the first try and the seed's three retries
    assert markers(tmp_path) == set()


@pytest.mark.parametrize("step", [s for s in StepName if s is not StepName.VALIDATION])
async def test_a_failed_compensation_leaves_exactly_what_the_job_reports(
    build: Build, tmp_path: Path, step: StepName
) -> None:
    job, _ = await run(build(f"{step}=fail-compensate,validation=fail"))
    assert job.state is State.FAILED
    assert job.cleanup is not None
    assert set(job.cleanup.remaining) == {step}
    assert markers(tmp_path) == {f"hr/{step}.json"}
    assert job.cleanup.remaining[step]["marker"].endswith(f"hr/{step}.json")
    department = await build().store.get_department("hr")
    assert department is not None and department.status is DepartmentStatus.NEEDS_ATTENTION


async def test_the_job_deadline_fails_the_job(build: Build, tmp_path: Path) -> None:
    config = EngineConfig(
        step_timeout=5, job_deadline=5, retry=FAST.retry, lease_seconds=1, claim_interval=0.1
    )
    orchestrator = build("gateway=hang", config=config)
    await orchestrator.start()
    job, _ = await orchestrator.provision(spec(), principal="alice")
    orchestrator.config = config  # same config; the deadline is fixed at creation
    finished = await asyncio.wait_for(orchestrator.wait(job.job_id), 15)
    assert finished.state is State.FAILED
    assert finished.error is not None and finished.error.reason == "DEADLINE_EXCEEDED"
    assert markers(tmp_path) == set()


async def test_provisioning_is_idempotent(build: Build) -> None:
    orchestrator = build()
    await orchestrator.start()
    request_id = str(uuid.uuid4())
    first, created = await orchestrator.provision(spec(), principal="alice", request_id=request_id)
    again, created_again = await orchestrator.provision(spec(), principal="alice")
    replay, replayed_created = await orchestrator.provision(spec(), principal="bob", request_id=request_id)
    assert created and not created_again and not replayed_created
    assert first.job_id == again.job_id == replay.job_id
    await orchestrator.wait(first.job_id)
    done, _ = await orchestrator.provision(spec(), principal="alice")
    assert done.job_id == first.job_id and done.state is State.COMPLETED
    with pytest.raises(ConflictError, match="different request"):
        await orchestrator.provision(spec(region="eu-west"), principal="alice", request_id=request_id)
    with pytest.raises(ConflictError, match="different spec"):
        await orchestrator.provision(spec(region="eu-west"), principal="alice")
    audit = await orchestrator.store.audit_log("hr")
    # Every request is in the audit log, however it was answered (rate limits rebuild from it).
    assert [(a.principal, a.outcome) for a in audit] == [
        ("alice", "accepted"),
        ("alice", "existing job"),
        ("bob", "replayed"),
        ("alice", "existing job"),
        ("alice", "rejected: CONFLICT"),
        ("alice", "rejected: CONFLICT"),
    ]


async def test_after_a_failure_the_same_spec_starts_a_new_job_that_adopts(
    build: Build, store: InMemoryJobStore, tmp_path: Path
) -> None:
    failed, _ = await run(build("container=fail-compensate,validation=fail"))
    assert failed.state is State.FAILED
    retry_orchestrator = build(owner="r2")
    await retry_orchestrator.start()
    second, created = await retry_orchestrator.provision(spec(), principal="alice")
    assert created and second.job_id != failed.job_id
    finished = await retry_orchestrator.wait(second.job_id)
    assert finished.state is State.COMPLETED
    assert markers(tmp_path) == {f"hr/{n}.json" for n in StepName}


async def test_request_ids_must_be_uuids(build: Build) -> None:
    orchestrator = build()
    await orchestrator.start()
    with pytest.raises(InvalidSpecError) as caught:
        await orchestrator.provision(spec(), principal="alice", request_id="not-a-uuid")
    assert [v.field for v in caught.value.violations] == ["request_id"]


async def test_invalid_specs_create_nothing_but_are_audited(build: Build, store: InMemoryJobStore) -> None:
    orchestrator = build()
    await orchestrator.start()
    with pytest.raises(InvalidSpecError):
        await orchestrator.provision(spec("Bad_Id\x00"), principal="mallory")
    assert await store.list_departments() == []
    [entry] = await store.audit_log("Bad_Id?")
    assert (entry.principal, entry.action, entry.outcome) == (
        "mallory",
        "provision",
        "rejected: INVALID_SPEC",
    )


async def test_a_job_resumed_after_its_deadline_rolls_back(
    build: Build, store: InMemoryJobStore, tmp_path: Path
) -> None:
    patient = EngineConfig(
        step_timeout=5, job_deadline=20, retry=FAST.retry, lease_seconds=0.6, claim_interval=0.05
    )
    first = build(delay=0.5, config=patient)
    await first.start()
    job, _ = await first.provision(spec(), principal="alice")
    await step_started(first, job.job_id, StepName.CONTAINER)
    await first.stop()  # the replica goes away for longer than the job's deadline
    late = build(config=patient, clock=lambda: job.deadline_at + timedelta(seconds=1))
    await late.start()
    finished = await asyncio.wait_for(late.wait(job.job_id), 10)
    assert finished.state is State.FAILED
    assert finished.error is not None
    assert finished.error.reason == "DEADLINE_EXCEEDED"
    assert markers(tmp_path) == set()


async def test_deprovisioning_removes_everything(build: Build, tmp_path: Path) -> None:
    orchestrator = build()
    await run(orchestrator)
    teardown, created = await orchestrator.deprovision("hr", principal="alice")
    assert created
    events = [e async for e in orchestrator.hub.subscribe(teardown.job_id)]
    finished = await orchestrator.get_job(teardown.job_id)
    assert finished.state is State.COMPLETED and finished.progress == 100
    compensated = [e.step for e in events if e.type is EventType.STEP_COMPENSATED]
    assert compensated == list(reversed(list(StepName)))
    assert markers(tmp_path) == set()
    department = await orchestrator.store.get_department("hr")
    assert department is not None and department.status is DepartmentStatus.DEPROVISIONED
    with pytest.raises(NotFoundError):
        await orchestrator.deprovision("hr", principal="alice")


async def test_deprovisioning_a_running_provisioning_cancels_and_rolls_it_back(
    build: Build, tmp_path: Path
) -> None:
    config = EngineConfig(
        step_timeout=30, job_deadline=60, retry=FAST.retry, lease_seconds=1, claim_interval=0.1
    )
    orchestrator = build("workflows=hang", config=config)
    await orchestrator.start()
    job, _ = await orchestrator.provision(spec(), principal="alice")
    await step_started(orchestrator, job.job_id, StepName.WORKFLOWS)
    same, created = await orchestrator.provision(spec(), principal="alice")
    assert same.job_id == job.job_id and not created
    teardown, _ = await orchestrator.deprovision("hr", principal="alice")
    with pytest.raises(FailedPreconditionError, match="being deprovisioned"):
        await orchestrator.provision(spec(), principal="alice")
    provision = await asyncio.wait_for(orchestrator.wait(job.job_id), 10)
    assert provision.state is State.FAILED
    assert provision.error is not None and provision.error.reason == "CANCELLED"
    finished = await asyncio.wait_for(orchestrator.wait(teardown.job_id), 10)
    assert finished.state is State.COMPLETED
    assert markers(tmp_path) == set()


async def test_many_jobs_run_concurrently(store: InMemoryJobStore) -> None:
    hub = EventHub(store)
    orchestrator = Orchestrator(store, hub, {n: NoopStep(n) for n in StepName}, FAST)
    await orchestrator.start()
    jobs = await asyncio.gather(
        *(orchestrator.provision(spec(f"dept-{i}"), principal="load") for i in range(200))
    )
    finished = await asyncio.gather(*(orchestrator.wait(job.job_id) for job, _ in jobs))
    assert {j.state for j in finished} == {State.COMPLETED}
    await orchestrator.stop()


async def test_a_stopped_engine_leaves_jobs_resumable_and_a_restart_finishes_them(
    build: Build, store: InMemoryJobStore, tmp_path: Path
) -> None:
    patient = EngineConfig(
        step_timeout=5, job_deadline=20, retry=FAST.retry, lease_seconds=0.6, claim_interval=0.05
    )
    first = build(delay=0.5, owner="r1", config=patient)
    await first.start()
    job, _ = await first.provision(spec(), principal="alice")
    await step_started(first, job.job_id, StepName.CONTAINER)
    await first.stop()
    paused = await store.get_job(job.job_id)
    assert paused is not None and not paused.is_finished
    with pytest.raises(ServiceDrainingError):
        await first.provision(spec("other"), principal="alice")
    second = build(delay=0.0, owner="r1", config=patient)
    await second.start()
    finished = await asyncio.wait_for(second.wait(job.job_id), 10)
    assert finished.state is State.COMPLETED
    creates = [line for line in ledger(tmp_path) if line.startswith("create")]
    assert len(creates) == len(StepName)  # the interrupted step adopted its resource
    assert finished.steps[StepName.CONTAINER].attempts == 2


async def test_a_finished_job_is_read_once_from_the_store_then_from_memory(
    build: Build, store: InMemoryJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    orchestrator = build()
    finished, _ = await run(orchestrator)  # its last read, of the finished job, was the store's
    reads: list[str] = []
    original = store.get_job

    async def counted(job_id: str) -> Job | None:
        reads.append(job_id)
        return await original(job_id)

    monkeypatch.setattr(store, "get_job", counted)
    first = await orchestrator.get_job(finished.job_id)
    again = await orchestrator.get_job(finished.job_id)
    assert first.state is again.state is State.COMPLETED
    assert reads == []


async def test_a_provisioning_past_the_quota_is_refused_and_its_client_forgotten(
    store: InMemoryJobStore, tmp_path: Path
) -> None:
    secrets = InMemorySecretStore()
    vault = CredentialVault(secrets, KeySource(path=tmp_path / "keys.json"))
    config = dataclasses.replace(FAST, max_departments=1)
    steps = {n: NoopStep(n) for n in StepName}
    orchestrator = Orchestrator(store, EventHub(store), steps, config, issuer=VaultIssuer(vault))
    await orchestrator.start()
    try:
        job, _ = await orchestrator.provision(spec("hr"), principal="alice")
        await orchestrator.wait(job.job_id)
        with pytest.raises(QuotaExceededError, match="quota of 1 departments"):
            await orchestrator.provision(spec("it"), principal="alice")
        assert {d for d, _ in secrets.secrets} == {"hr"}  # no sealed client left for "it"
        assert [a.outcome for a in await store.audit_log("it")] == ["rejected: QUOTA_EXCEEDED"]
    finally:
        await orchestrator.stop()


async def test_a_claim_racing_the_creation_of_a_job_never_starts_a_second_runner(
    store: InMemoryJobStore, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    # The job is committed with this replica's lease; a claim that runs before `provision`
    # starts its runner finds a job of its own with no runner, and starts one too.
    orchestrator = build()
    create_job = store.create_job

    async def create_then_claim(*args: Any, **kwargs: Any) -> None:
        await create_job(*args, **kwargs)
        await orchestrator._claim()

    store.create_job = create_then_claim  # type: ignore[method-assign]
    job, events = await run(orchestrator)
    assert job.state is State.COMPLETED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(s.attempts == 1 for s in job.steps.values())
    # A second runner would have collided with the first on the next event's sequence.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_retention_prunes_finished_jobs_events_and_a_watch_of_one_still_ends(
    build: Build, store: InMemoryJobStore
) -> None:
    job, events = await run(build(), "kept-short")
    assert len(events) > 10
    later = datetime.now(UTC) + timedelta(days=91)
    pruner = build(
        config=dataclasses.replace(FAST, retention_days=90, retention_interval=0.05), clock=lambda: later
    )
    await pruner.start()
    for _ in range(100):
        if not await store.events_after(job.job_id, 0):
            break
        await asyncio.sleep(0.02)
    assert await store.events_after(job.job_id, 0) == []
    assert (await pruner.get_job(job.job_id)).state is State.COMPLETED
    assert [e async for e in pruner.watch(job.job_id)] == []
    assert await store.list_audit(AuditQuery()) == [], "audit entries go too"


async def test_a_region_the_platform_does_not_run_is_refused_before_any_job(
    build: Build, store: InMemoryJobStore
) -> None:
    orchestrator = build(config=dataclasses.replace(FAST, regions=("us-west", "eu-west")))
    await orchestrator.start()
    with pytest.raises(InvalidSpecError) as refused:
        await orchestrator.provision(spec("mars", region="mars-1", department_name=""), principal="alice")
    assert {v.field: v.description for v in refused.value.violations} == {
        "department_name": "must not be empty",
        "region": "must be one of this platform's regions: us-west, eu-west",
    }
    assert await store.get_department("mars") is None
    assert await store.list_jobs(JobQuery()) == []


async def test_a_dry_run_reports_the_quota_and_reserves_nothing(
    build: Build, store: InMemoryJobStore
) -> None:
    orchestrator = build(config=dataclasses.replace(FAST, max_departments=1))
    job, _ = await run(orchestrator, "first")
    assert (await orchestrator.preview_provision(spec("first"), principal="alice")).job_id == job.job_id
    with pytest.raises(QuotaExceededError):
        await orchestrator.preview_provision(spec("second"), principal="alice")
    assert await store.get_department("second") is None
