"""SIGKILL the real server in the middle of every step, of a rollback and of a teardown.

After each kill the server is restarted on the same state directory and database. At the
end every job must have finished (COMPLETED, or FAILED with a clean rollback), no step may
have run its side effect twice, and the disk must hold exactly the resources of the
departments that exist: nothing orphaned, nothing missing. The checks read the real
world (marker files and the steps' own ledger), not just the job records.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.core.job import Job
from provisioner.core.states import JobKind, State, StepName, StepStatus
from provisioner.engine.config import EngineConfig
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.steps.noop import NoopStep
from provisioner.store.sql import SqlJobStore
from tests.unit.factories import spec

pytestmark = pytest.mark.slow

STEP_DELAY = 0.4


@dataclass
class Server:
    """The real `provisioning-server` in a subprocess, restartable on the same state."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, **extra: str) -> None:
        self.starts += 1
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                # The engine is under test here: no REST gateway.
                [sys.executable, "-m", "provisioner.app", "--no-envoy"],
                env={**self.env, **extra},
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while self.log.read_text().count("control plane ready") < self.starts:
            assert self.process.poll() is None, f"server died on start:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            assert self.process.wait(timeout=20) == 0


@pytest.fixture
async def world(tmp_path: Path, store_url: str) -> AsyncIterator[tuple[Server, Orchestrator, Path]]:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "PROVISIONER_STATE_DIR": str(state),
        "PROVISIONER_DATABASE_URL": store_url,
        "PROVISIONER_MODE": "development",  # marker steps, slowed
        "PROVISIONER_STEPS": "local",
        "PROVISIONER_GRPC_ADDR": "127.0.0.1:0",
        "PROVISIONER_METRICS_ADDR": "127.0.0.1:0",
        "PROVISIONER_STEP_DELAY": str(STEP_DELAY),
        "PROVISIONER_CLAIM_INTERVAL": "0.1",
        "PROVISIONER_LEASE_SECONDS": "3",
        "PROVISIONER_STEP_TIMEOUT": "10",
        "PROVISIONER_RETRY_BASE_SECONDS": "0.05",
        "PROVISIONER_REPLICA_ID": "crash-server",
    }
    server = Server(env, tmp_path / "server.log")
    # This process only accepts requests; the server subprocess runs every job. Its steps
    # keep their resources on its machine, so the jobs accepted here are pinned to it.
    store = SqlJobStore(store_url)
    steps = {n: NoopStep(n) for n in StepName}
    front = Orchestrator(
        store,
        EventHub(store, poll_interval=0.1),
        steps,
        EngineConfig(run_jobs=False),
        owner="crash-server",
        pinned=True,
    )
    server.start()
    await store.initialize()
    await front.start()
    try:
        yield server, front, state / "resources"
    finally:
        server.stop()
        await front.stop()
        await store.close()


async def until(check: Callable[[], object], what: str, patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def kill_while(
    server: Server, front: Orchestrator, job_id: str, what: str, seen: Callable[[Job], bool]
) -> None:
    async def check() -> bool:
        job = await front.store.get_job(job_id)
        return job is not None and seen(job)

    await until(check, what)
    server.kill()


def ledger(root: Path) -> list[list[str]]:
    """(action, department, step, resource id) per line of the local steps' ledger."""
    path = root / "ledger.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def resource_ids(root: Path) -> set[str]:
    return {json.loads(p.read_text())["resource_id"] for p in root.rglob("*.json")}


def markers(root: Path) -> set[tuple[str, str]]:
    return {(p.parent.name, p.stem) for p in root.rglob("*.json")}


async def test_every_job_survives_sigkill_at_every_point(world: tuple[Server, Orchestrator, Path]) -> None:
    server, front, resources = world
    jobs: dict[str, str] = {}

    # Forward: kill while each of the seven steps is running.
    for step in StepName:
        department = f"crash-{step.value}"
        job, _ = await front.provision(spec(department), principal="ci")
        jobs[department] = job.job_id
        await kill_while(server, front, job.job_id, f"{step} running",
                         lambda j, s=step: j.steps[s].status is StepStatus.RUNNING)  # fmt: skip
        server.start()

    # Deprovisioning: kill in the middle of tearing a department down.
    await until(lambda: finished(front, jobs["crash-validate"]), "crash-validate to finish")
    teardown, _ = await front.deprovision("crash-validate", principal="ci")
    await kill_while(server, front, teardown.job_id, "teardown in flight",
                     lambda j: any(s.status is StepStatus.COMPENSATING for s in j.steps.values())
                     and j.steps[StepName.VALIDATE].status is not StepStatus.COMPENSATED)  # fmt: skip
    server.start()

    # Rollback: make the last step fail, and kill while the rollback undoes earlier steps.
    for job_id in [*jobs.values(), teardown.job_id]:
        await until(lambda job_id=job_id: finished(front, job_id), f"job {job_id} to finish", patience=60)
    server.stop()
    server.start(PROVISIONER_FAULT_INJECTION="validation=fail")
    doomed, _ = await front.provision(spec("crash-rollback"), principal="ci")
    await kill_while(server, front, doomed.job_id, "rollback in flight",
                     lambda j: j.state is State.ROLLING_BACK
                     and any(s.status is StepStatus.COMPENSATED for s in j.steps.values()))  # fmt: skip
    server.start(PROVISIONER_FAULT_INJECTION="validation=fail")

    everything = [*jobs.values(), teardown.job_id, doomed.job_id]
    for job_id in everything:
        await until(lambda job_id=job_id: finished(front, job_id), f"job {job_id} to finish", patience=60)
    server.stop()

    outcomes = {job_id: await front.get_job(job_id) for job_id in everything}
    for job in outcomes.values():
        events = await front.store.events_after(job.job_id, 0)
        assert [e.sequence for e in events] == list(range(1, job.last_sequence + 1))
        assert events[-1].is_terminal
        if job.kind is JobKind.DEPROVISION or job.department_id != "crash-rollback":
            assert job.state is State.COMPLETED, (job.department_id, job.error)
        else:
            assert job.state is State.FAILED
            assert job.error is not None and job.error.step is StepName.VALIDATION
            assert job.cleanup is not None and job.cleanup.clean

    alive = {f"crash-{s.value}" for s in StepName} - {"crash-validate"}
    assert markers(resources) == {(d, s.value) for d in alive for s in StepName}

    # No side effect ran twice: per resource, creations and removals alternate. A creation
    # counts if its resource ever existed (it was removed later, or is still on disk); a
    # crash may leave a logged intent whose resource never appeared.
    lines = ledger(resources)
    existed = {rid for action, _, _, rid in lines if action == "remove"} | resource_ids(resources)
    history: dict[tuple[str, str], list[str]] = {}
    for action, department, step, rid in lines:
        if rid in existed:
            history.setdefault((department, step), []).append(action)
    for key, actions in history.items():
        assert all(a != b for a, b in itertools.pairwise(actions)), (key, actions)
        assert actions[0] == "create", (key, actions)
    assert {k for k, a in history.items() if a[-1] == "create"} == markers(resources)


async def finished(front: Orchestrator, job_id: str) -> bool:
    job = await front.store.get_job(job_id)
    return job is not None and job.is_finished
