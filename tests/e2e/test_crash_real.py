"""SIGKILL the real control plane, with the real steps, at every point that matters.

The server is killed while each of the seven steps runs, while a failed job rolls back,
and while a department is torn down; each time it is started again on the same state.
Then the real world is inspected, not the job records: every provisioned department
works through Envoy and has exactly one of each resource (no side effect ran twice), and
nothing exists for the departments that were rolled back or torn down (no orphan).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import ControlPlane, control_plane, department_processes, stop_department_services
from tests.e2e.report import record
from tests.e2e.test_departments import METADATA, request, through_envoy, traces

pytestmark = pytest.mark.slow

STEPS = ("validate", "database", "oauth", "container", "workflows", "gateway", "validation")
ROLLED_BACK = "crash-rollback"
TORN_DOWN = "crash-teardown"


@dataclass
class Crashes:
    plane: ControlPlane
    jobs: dict[str, pb.Job]
    kills: int = 0


def kill_when(plane: ControlPlane, job_id: str, seen: Callable[[pb.JobEvent], bool]) -> int:
    """Follow the job; SIGKILL the server at the first event `seen` accepts, restart it.

    Returns the last sequence seen, for the resumed watch.
    """
    last = 0
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        for message in stub.WatchProgress(
            pb.WatchProgressRequest(job_id=job_id), metadata=METADATA, timeout=60
        ):
            if message.HasField("event"):
                last = message.event.sequence
                if seen(message.event):
                    break
    assert plane.stop(signal.SIGKILL) == -signal.SIGKILL
    plane.start()
    return last


def finish(plane: ControlPlane, job_id: str, after: int) -> pb.Job:
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        seen = [
            m.event.sequence
            for m in stub.WatchProgress(
                pb.WatchProgressRequest(job_id=job_id, after_sequence=after), metadata=METADATA, timeout=60
            )
            if m.HasField("event")
        ]
        # The resumed watch misses nothing and repeats nothing across the crash.
        assert seen == list(range(after + 1, after + 1 + len(seen)))
        return stub.GetStatus(pb.GetStatusRequest(job_id=job_id), metadata=METADATA, timeout=10)


def start(plane: ControlPlane, department_id: str, deprovision: bool = False) -> pb.Job:
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        if deprovision:
            return stub.Deprovision(pb.DeprovisionRequest(department_id=department_id), metadata=METADATA)
        return stub.Provision(request(department_id, ("email", "database")), metadata=METADATA)


@pytest.fixture(scope="module")
def crashes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashes]:
    plane = control_plane(
        tmp_path_factory.mktemp("crash"),
        PROVISIONER_STEP_DELAY="0.3",
        PROVISIONER_RETRY_BASE_SECONDS="0.05",
        PROVISIONER_FAULT_INJECTION=f"validation=fail@{ROLLED_BACK}",
    )
    plane.start()
    done = Crashes(plane, {})
    try:
        for step in STEPS:
            job = start(plane, f"crash-{step}")
            last = kill_when(
                plane, job.job_id, lambda e, s=step: e.type == pb.JOB_EVENT_TYPE_STEP_STARTED and e.step == s
            )
            done.jobs[f"crash-{step}"] = finish(plane, job.job_id, last)
            done.kills += 1

        job = start(plane, ROLLED_BACK)
        last = kill_when(
            plane,
            job.job_id,
            lambda e: e.type == pb.JOB_EVENT_TYPE_STEP_COMPENSATING and e.step == "container",
        )
        done.jobs[ROLLED_BACK] = finish(plane, job.job_id, last)
        done.kills += 1

        provisioned = start(plane, TORN_DOWN)
        done.jobs["teardown-provision"] = finish(plane, provisioned.job_id, 0)
        teardown = start(plane, TORN_DOWN, deprovision=True)
        last = kill_when(
            plane,
            teardown.job_id,
            lambda e: e.type == pb.JOB_EVENT_TYPE_STEP_COMPENSATING and e.step == "workflows",
        )
        done.jobs[TORN_DOWN] = finish(plane, teardown.job_id, last)
        done.kills += 1
        yield done
        assert plane.stop() == 0
    finally:
        plane.stop()
        stop_department_services(plane.state_dir)


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_during_each_step_still_yields_one_working_department(crashes: Crashes, step: str) -> None:
    plane, name = crashes.plane, f"crash-{step}"
    job = crashes.jobs[name]
    assert job.state == pb.JOB_STATE_COMPLETED, job.error
    assert through_envoy(plane, name, "healthz").json()["status"] == "SERVING"

    # Exactly one of everything: nothing was made twice by the step that ran again.
    assert Counter(d for d, _ in department_processes(plane.state_dir))[name] == 1
    assert [n for d, n in plane.secrets() if d == name] == ["active"]
    directory = plane.state_dir / "departments" / name
    assert sorted(p.name for p in (directory / "workflows").iterdir()) == ["database.json", "email.json"]
    routes = json.loads((plane.state_dir / "envoy" / "dynamic" / "routes.json").read_text())
    prefixes = [r["match"].get("prefix") for r in routes["resources"][0]["virtual_hosts"][0]["routes"]]
    assert prefixes.count(f"/departments/{name}/") == 1
    with sqlite3.connect(f"file:{directory / 'data.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_a_kill_during_a_rollback_still_removes_everything(crashes: Crashes) -> None:
    job = crashes.jobs[ROLLED_BACK]
    assert job.state == pb.JOB_STATE_FAILED
    assert not job.cleanup.remaining
    assert traces(crashes.plane, ROLLED_BACK) == {}


def test_a_kill_during_a_teardown_still_removes_everything(crashes: Crashes) -> None:
    assert crashes.jobs["teardown-provision"].state == pb.JOB_STATE_COMPLETED
    job = crashes.jobs[TORN_DOWN]
    assert job.state == pb.JOB_STATE_COMPLETED, job.error
    assert traces(crashes.plane, TORN_DOWN) == {}


def test_nothing_exists_but_the_departments_that_were_provisioned(crashes: Crashes) -> None:
    state = crashes.plane.state_dir
    living = {f"crash-{step}" for step in STEPS}
    found = (
        [p.name for p in (state / "departments").iterdir()]
        + [d for d, _ in crashes.plane.secrets()]
        + [d for d, _ in department_processes(state)]
    )
    expected = {f"crash-{step}": pb.JOB_STATE_COMPLETED for step in STEPS}
    expected |= {ROLLED_BACK: pb.JOB_STATE_FAILED, TORN_DOWN: pb.JOB_STATE_COMPLETED}
    record(
        "crash",
        crashes_injected=crashes.kills,
        jobs_recovered=sum(crashes.jobs[name].state == state_ for name, state_ in expected.items()),
        jobs=len(expected),
        orphans_found=sum(name not in living for name in found),
    )
    assert crashes.kills == 9
    assert {p.name for p in (state / "departments").iterdir()} == living
    assert {d for d, _ in crashes.plane.secrets()} == living
    assert sorted(d for d, _ in department_processes(state)) == sorted(living)
