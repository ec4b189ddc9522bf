"""Every step and every fault mode, on real resources, through the public API.

One control plane runs the whole matrix side by side: each department gets its own
fault (`step=mode@department`). Afterwards the real world is inspected: retries that
should succeed leave a working department; failures leave nothing the earlier steps made;
a compensation that fails leaves exactly what the job reports.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import ControlPlane, control_plane, stop_department_services
from tests.e2e.report import record
from tests.e2e.test_departments import METADATA, finish, request, through_envoy, traces

pytestmark = pytest.mark.slow

STEPS = ("validate", "database", "oauth", "container", "workflows", "gateway", "validation")
MODES = ("fail", "transient", "hang", "fail-compensate")
# What each step leaves in the real world when its undoing fails (see `traces`).
LEFT_BEHIND = {
    "validate": set(),
    "database": {"files"},
    "oauth": {"files", "secrets"},
    "container": {"files", "process"},
    "workflows": {"files"},
    "gateway": {"route", "envoy_route", "envoy_answers"},
    "validation": set(),
}


def dept(step: str, mode: str) -> str:
    return f"f-{step}-{mode}"


def fault_plan() -> str:
    faults = []
    for step in STEPS:
        faults += [
            f"{step}=fail@{dept(step, 'fail')}",
            f"{step}=transient:2@{dept(step, 'transient')}",
            f"{step}=hang@{dept(step, 'hang')}",
            f"{step}=fail-compensate@{dept(step, 'fail-compensate')}",
        ]
        if step != "validation":
            # Something after the step must fail for its undoing to be tried at all.
            faults.append(f"validation=fail@{dept(step, 'fail-compensate')}")
    return ",".join(faults)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, dict[str, pb.Job]]]:
    plane = control_plane(
        tmp_path_factory.mktemp("matrix"),
        PROVISIONER_FAULT_INJECTION=fault_plan(),
        PROVISIONER_STEP_TIMEOUT="4",
        PROVISIONER_MAX_RETRIES="2",
        PROVISIONER_RETRY_BASE_SECONDS="0.05",
    )
    plane.start()
    try:
        with grpc.insecure_channel(plane.grpc_target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)
            created = {
                dept(s, m): stub.Provision(request(dept(s, m), ("database",)), metadata=METADATA, timeout=10)
                for s in STEPS
                for m in MODES
            }
            jobs = {name: finish(stub, job.job_id) for name, job in created.items()}
            # The last step's undoing is only tried by a teardown.
            teardown = stub.Deprovision(
                pb.DeprovisionRequest(department_id=dept("validation", "fail-compensate")), metadata=METADATA
            )
            jobs["teardown"] = finish(stub, teardown.job_id)
        yield plane, jobs
        assert plane.stop() == 0
    finally:
        plane.stop()
        stop_department_services(plane.state_dir)


@pytest.mark.parametrize("step", STEPS)
def test_a_failing_step_rolls_back_everything_before_it(
    outcomes: tuple[ControlPlane, dict[str, pb.Job]], step: str
) -> None:
    plane, jobs = outcomes
    job = jobs[dept(step, "fail")]
    assert job.state == pb.JOB_STATE_FAILED
    assert f"injected fault: {step} failed" in job.error.message
    assert not job.cleanup.remaining
    assert traces(plane, dept(step, "fail")) == {}


@pytest.mark.parametrize("step", STEPS)
def test_a_hanging_step_times_out_and_rolls_back(
    outcomes: tuple[ControlPlane, dict[str, pb.Job]], step: str
) -> None:
    plane, jobs = outcomes
    job = jobs[dept(step, "hang")]
    assert job.state == pb.JOB_STATE_FAILED
    assert next(s for s in job.steps if s.name == step).attempts == 3
    assert traces(plane, dept(step, "hang")) == {}


@pytest.mark.parametrize("step", STEPS)
def test_transient_failures_are_retried_into_a_working_department(
    outcomes: tuple[ControlPlane, dict[str, pb.Job]], step: str
) -> None:
    plane, jobs = outcomes
    name = dept(step, "transient")
    job = jobs[name]
    assert job.state == pb.JOB_STATE_COMPLETED, job.error
    assert next(s for s in job.steps if s.name == step).attempts == 3
    assert through_envoy(plane, name, "healthz").status_code == 200
    assert {"files", "secrets", "process", "envoy_route"} <= set(traces(plane, name))


@pytest.mark.parametrize("step", STEPS)
def test_a_failed_undoing_leaves_exactly_what_the_job_reports(
    outcomes: tuple[ControlPlane, dict[str, pb.Job]], step: str
) -> None:
    plane, jobs = outcomes
    name = dept(step, "fail-compensate")
    job = jobs["teardown"] if step == "validation" else jobs[name]
    assert job.state == pb.JOB_STATE_FAILED
    assert [r.step for r in job.cleanup.remaining] == [step]
    left = traces(plane, name)
    assert set(left) - {"files"} == LEFT_BEHIND[step] - {"files"}
    if "files" in LEFT_BEHIND[step]:
        assert left["files"], left
    else:
        assert "files" not in left, left


def test_the_matrix_in_figures(outcomes: tuple[ControlPlane, dict[str, pb.Job]]) -> None:
    plane, jobs = outcomes
    clean = 0
    for step in STEPS:
        clean += jobs[dept(step, "fail")].state == pb.JOB_STATE_FAILED and not traces(
            plane, dept(step, "fail")
        )
        clean += jobs[dept(step, "hang")].state == pb.JOB_STATE_FAILED and not traces(
            plane, dept(step, "hang")
        )
        clean += jobs[dept(step, "transient")].state == pb.JOB_STATE_COMPLETED
        reported = jobs["teardown"] if step == "validation" else jobs[dept(step, "fail-compensate")]
        clean += [r.step for r in reported.cleanup.remaining] == [step]
    record("faults", faults_injected=len(STEPS) * len(MODES), handled_as_specified=clean)
    assert clean == len(STEPS) * len(MODES)
