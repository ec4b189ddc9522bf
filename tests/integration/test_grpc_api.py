"""The gRPC API on a real grpc.aio server (port 0) through a real channel.

Every status a caller can provoke is asserted, with its `google.rpc` details.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from provisioner.core.retry import RetryPolicy
from provisioner.core.states import StepName
from provisioner.edge.server import GrpcEdge
from provisioner.engine.config import EngineConfig
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.steps.faults import SlowedStep
from provisioner.steps.local import LocalMarkerStep
from provisioner.store.memory import InMemoryJobStore
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc

# Health answers are not kept here (each call checks anew); sharing them is tested in
# tests/unit/test_health.py.
CONFIG = EngineConfig(
    step_timeout=5, job_deadline=30, retry=RetryPolicy(base_delay=0.01, max_delay=0.02), health_ttl=0
)


def request(department_id: str = "hr", **overrides: object) -> pb.ProvisionRequest:
    fields: dict[str, object] = {
        "department_id": department_id,
        "department_name": "Human Resources",
        "workflows": ["email", "google_drive", "database"],
        "data_retention": "90d",
        "region": "us-west",
        "admin_email": "admin@synrgscaling.com",
    }
    fields.update(overrides)
    return pb.ProvisionRequest(**fields)  # type: ignore[arg-type]


class Api:
    def __init__(self, stub: pb_grpc.ProvisioningServiceStub, orchestrator: Orchestrator, root: Path) -> None:
        self.stub = stub
        self.orchestrator = orchestrator
        self.root = root

    async def finished(self, job_id: str) -> list[pb.WatchProgressResponse]:
        return [m async for m in self.stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id))]


async def serve(tmp_path: Path, delay: float = 0.0, heartbeat: float = 15.0) -> AsyncIterator[Api]:
    store = InMemoryJobStore()
    steps = {n: SlowedStep(LocalMarkerStep(n, tmp_path), delay) for n in StepName}
    orchestrator = Orchestrator(store, EventHub(store), steps, CONFIG)
    await orchestrator.start()
    edge = GrpcEdge(orchestrator, heartbeat_seconds=heartbeat)
    port = await edge.start("127.0.0.1:0")
    await edge.serving()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Api(pb_grpc.ProvisioningServiceStub(channel), orchestrator, tmp_path)
    await edge.stop(None)
    orchestrator.hub.close()
    await orchestrator.stop()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for it in serve(tmp_path):
        yield it


def details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)
    assert status is not None
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


async def test_provision_then_watch_every_state_to_the_end(api: Api) -> None:
    job = await api.stub.Provision(request())
    assert job.state == pb.JOB_STATE_PENDING
    assert job.department_id == "hr"
    assert len(job.steps) == 7
    messages = await api.finished(job.job_id)
    assert messages[0].WhichOneof("kind") == "snapshot"
    events = [m.event for m in messages[1:]]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.state for e in events if e.type == pb.JOB_EVENT_TYPE_STATE_CHANGED]
    assert states == list(range(pb.JOB_STATE_VALIDATING, pb.JOB_STATE_COMPLETED + 1))
    assert events[-1].type == pb.JOB_EVENT_TYPE_JOB_FINISHED
    status = await api.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))
    assert status.state == pb.JOB_STATE_COMPLETED
    assert status.progress == 100
    assert status.last_sequence == events[-1].sequence


async def test_a_watch_resumed_after_a_sequence_misses_nothing_and_repeats_nothing(api: Api) -> None:
    job = await api.stub.Provision(request())
    everything = [m.event.sequence for m in (await api.finished(job.job_id))[1:]]
    resumed = [
        m.event.sequence
        async for m in api.stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id, after_sequence=5))
        if m.WhichOneof("kind") == "event"
    ]
    assert resumed == everything[5:]


async def test_a_watch_after_a_sequence_never_sent_is_refused_not_left_waiting(tmp_path: Path) -> None:
    async for api in serve(tmp_path, delay=0.3):
        job = await api.stub.Provision(request())  # running: its last event is still to come
        watch = api.stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id, after_sequence=2**63 - 1))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(anext(aiter(watch)), 5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "after_sequence" in (caught.value.details() or "")


async def test_heartbeats_flow_while_nothing_happens(tmp_path: Path) -> None:
    async for api in serve(tmp_path, delay=0.3, heartbeat=0.05):
        job = await api.stub.Provision(request())
        kinds = [m.WhichOneof("kind") for m in await api.finished(job.job_id)]
        assert "heartbeat" in kinds
        assert kinds[-1] == "event"


async def test_a_bad_request_lists_every_violated_field(api: Api) -> None:
    bad = request(
        "HR", department_name="", workflows=["fax"], data_retention="forever", region="x", admin_email="no"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.Provision(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(caught.value)
    assert found["ErrorInfo"].reason == "INVALID_SPEC"  # type: ignore[attr-defined]
    fields = [v.field for v in found["BadRequest"].field_violations]  # type: ignore[attr-defined]
    assert fields == [
        "department_id",
        "department_name",
        "workflows[0]",
        "data_retention",
        "region",
        "admin_email",
    ]
    assert "Traceback" not in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s: s.GetStatus(pb.GetStatusRequest(job_id=str(uuid.uuid4()))), grpc.StatusCode.NOT_FOUND),
        (lambda s: s.GetStatus(pb.GetStatusRequest(job_id="nope")), grpc.StatusCode.INVALID_ARGUMENT),
        (
            lambda s: s.GetDepartment(pb.GetDepartmentRequest(department_id="ghost")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (lambda s: s.Deprovision(pb.DeprovisionRequest(department_id="ghost")), grpc.StatusCode.NOT_FOUND),
        (
            lambda s: s.Deprovision(pb.DeprovisionRequest(department_id="../x")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.GetDepartmentHealth(pb.GetDepartmentHealthRequest(department_id="ghost")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda s: s.ListDepartments(pb.ListDepartmentsRequest(page_size=501)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.ListDepartments(pb.ListDepartmentsRequest(page_token="bogus")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda s: s.ListJobs(pb.ListJobsRequest(page_token="bogus")), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda s: s.ListJobs(pb.ListJobsRequest(department_id="../x")), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda s: s.ListJobs(pb.ListJobsRequest(state=99)), grpc.StatusCode.INVALID_ARGUMENT),
        (
            lambda s: s.ListAuditEvents(pb.ListAuditEventsRequest(page_token="bogus")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
async def test_error_statuses(api: Api, call: object, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(api.stub)  # type: ignore[operator]
    assert caught.value.code() == code


async def test_watching_an_unknown_job_is_not_found(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.finished(str(uuid.uuid4()))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_idempotent_provisioning_and_conflicts(api: Api) -> None:
    key = str(uuid.uuid4())
    first = await api.stub.Provision(request(request_id=key))
    replay = await api.stub.Provision(request(request_id=key))
    assert replay.job_id == first.job_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.Provision(request(region="eu-west"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(caught.value)["ErrorInfo"].reason == "CONFLICT"  # type: ignore[attr-defined]


async def test_deprovision_and_department_views(api: Api) -> None:
    job = await api.stub.Provision(request())
    await api.finished(job.job_id)
    department = await api.stub.GetDepartment(pb.GetDepartmentRequest(department_id="hr"))
    assert department.status == pb.DEPARTMENT_STATUS_ACTIVE
    assert list(department.workflows) == ["email", "google_drive", "database"]
    teardown = await api.stub.Deprovision(pb.DeprovisionRequest(department_id="hr"))
    assert teardown.kind == pb.JOB_KIND_DEPROVISION
    messages = await api.finished(teardown.job_id)
    assert messages[-1].event.state == pb.JOB_STATE_COMPLETED
    department = await api.stub.GetDepartment(pb.GetDepartmentRequest(department_id="hr"))
    assert department.status == pb.DEPARTMENT_STATUS_DEPROVISIONED
    assert not list(api.root.rglob("*.json"))


async def test_list_departments_pages_and_filters(api: Api) -> None:
    for name, region in [
        ("a1", "us-west"),
        ("b2", "eu-west"),
        ("c3", "us-west"),
        ("d4", "us-west"),
        ("e5", "eu-west"),
    ]:
        await api.stub.Provision(request(name, region=region))
    seen, token = [], ""
    while True:
        page = await api.stub.ListDepartments(
            pb.ListDepartmentsRequest(page_size=2, page_token=token, region="us-west")
        )
        seen += [d.department_id for d in page.departments]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["a1", "c3", "d4"]
    first = await api.stub.ListDepartments(pb.ListDepartmentsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.ListDepartments(
            pb.ListDepartmentsRequest(page_size=1, page_token=first.next_page_token, region="eu-west")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_jobs_newest_first_pages_and_filters(api: Api) -> None:
    made = []
    for name in ("j1", "j2", "j3"):
        job = await api.stub.Provision(request(name))
        await api.finished(job.job_id)
        made.append(job.job_id)
    teardown = await api.stub.Deprovision(pb.DeprovisionRequest(department_id="j2"))
    await api.finished(teardown.job_id)

    seen, token = [], ""
    while True:
        page = await api.stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token))
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [teardown.job_id, *reversed(made)]
    history = await api.stub.ListJobs(pb.ListJobsRequest(department_id="j2"))
    assert [j.kind for j in history.jobs] == [pb.JOB_KIND_DEPROVISION, pb.JOB_KIND_PROVISION]
    assert all(j.state == pb.JOB_STATE_COMPLETED for j in history.jobs)
    provisions = await api.stub.ListJobs(pb.ListJobsRequest(kind=pb.JOB_KIND_PROVISION))
    assert [j.job_id for j in provisions.jobs] == list(reversed(made))
    assert not (await api.stub.ListJobs(pb.ListJobsRequest(state=pb.JOB_STATE_FAILED))).jobs
    first = await api.stub.ListJobs(pb.ListJobsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.ListJobs(pb.ListJobsRequest(page_token=first.next_page_token, department_id="j1"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_audit_events_newest_first_pages_and_filters(api: Api) -> None:
    before = datetime.now(UTC)
    for name in ("a1", "a2", "a3"):
        await api.finished((await api.stub.Provision(request(name))).job_id)
    await api.stub.Deprovision(pb.DeprovisionRequest(department_id="a2"))
    with pytest.raises(grpc.aio.AioRpcError):
        await api.stub.Deprovision(pb.DeprovisionRequest(department_id="ghost"))

    seen, token = [], ""
    while True:
        page = await api.stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=2, page_token=token))
        seen += [(e.action, e.department_id, e.outcome) for e in page.audit_events]
        token = page.next_page_token
        if not token:
            break
    assert seen[0][:2] == ("deprovision", "ghost") and seen[0][2] != "accepted"
    assert seen[1:] == [
        ("deprovision", "a2", "accepted"),
        ("provision", "a3", "accepted"),
        ("provision", "a2", "accepted"),
        ("provision", "a1", "accepted"),
    ]
    about_a2 = await api.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(department_id="a2", action="provision")
    )
    assert [(e.action, e.principal) for e in about_a2.audit_events] == [("provision", "anonymous")]
    assert about_a2.audit_events[0].job_id and about_a2.audit_events[0].time.ToDatetime(UTC) >= before
    window = pb.ListAuditEventsRequest(principal="anonymous")
    window.end_time.FromDatetime(before)
    assert not (await api.stub.ListAuditEvents(window)).audit_events
    window = pb.ListAuditEventsRequest(principal="anonymous")
    window.start_time.FromDatetime(before)
    assert len((await api.stub.ListAuditEvents(window)).audit_events) == 5
    assert not (await api.stub.ListAuditEvents(pb.ListAuditEventsRequest(principal="mallory"))).audit_events


async def test_a_dry_run_answers_every_check_and_changes_nothing(api: Api) -> None:
    preview = await api.stub.Provision(request(validate_only=True))
    assert preview.job_id == "" and preview.department_id == "hr"
    assert preview.state == pb.JOB_STATE_PENDING and len(preview.steps) == 7
    assert not (await api.stub.ListDepartments(pb.ListDepartmentsRequest())).departments
    assert not (await api.stub.ListJobs(pb.ListJobsRequest())).jobs
    assert not (await api.stub.ListAuditEvents(pb.ListAuditEventsRequest())).audit_events
    assert not list(api.root.rglob("*.json")), "no step ran"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.Provision(
            request("HR", department_name="", data_retention="0d", admin_email="no", validate_only=True)
        )
    fields = {v.field for v in details(caught.value)["BadRequest"].field_violations}  # type: ignore[attr-defined]
    assert fields == {"department_id", "department_name", "data_retention", "admin_email"}

    job = await api.stub.Provision(request())
    await api.finished(job.job_id)
    again = await api.stub.Provision(request(validate_only=True))
    assert again.job_id == job.job_id, "a repeat would return the job that did it"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.Provision(request(region="eu-west", validate_only=True))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    teardown = await api.stub.Deprovision(pb.DeprovisionRequest(department_id="hr", validate_only=True))
    assert teardown.job_id == "" and teardown.kind == pb.JOB_KIND_DEPROVISION
    department = await api.stub.GetDepartment(pb.GetDepartmentRequest(department_id="hr"))
    assert department.status == pb.DEPARTMENT_STATUS_ACTIVE
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.Deprovision(pb.DeprovisionRequest(department_id="ghost", validate_only=True))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    audited = (await api.stub.ListAuditEvents(pb.ListAuditEventsRequest())).audit_events
    assert [(e.action, e.department_id) for e in audited] == [("provision", "hr")], "dry runs are not audited"


async def test_cancel_rolls_a_running_provisioning_back_and_nothing_else(tmp_path: Path) -> None:
    async for api in serve(tmp_path, delay=0.2):
        job = await api.stub.Provision(request())
        await asyncio.sleep(0.3)  # into its first steps
        cancelled = await api.stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id))
        assert cancelled.job_id == job.job_id
        messages = await api.finished(job.job_id)
        final = await api.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))
        assert final.state == pb.JOB_STATE_FAILED and final.error.reason == "CANCELLED"
        assert any(m.event.type == pb.JOB_EVENT_TYPE_STEP_COMPENSATED for m in messages[1:])
        assert not list(api.root.rglob("*.json")), "everything it made was undone"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        done = await api.stub.Provision(request("ops"))
        await api.finished(done.job_id)
        teardown = await api.stub.Deprovision(pb.DeprovisionRequest(department_id="ops"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub.CancelJob(pb.CancelJobRequest(job_id=teardown.job_id))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "teardown" in (caught.value.details() or "")
        audited = (await api.stub.ListAuditEvents(pb.ListAuditEventsRequest(action="cancel"))).audit_events
        assert [(e.department_id, e.job_id) for e in audited] == [("hr", job.job_id)]


async def test_health_reports_each_component_live(api: Api) -> None:
    job = await api.stub.Provision(request())
    await api.finished(job.job_id)
    health = await api.stub.GetDepartmentHealth(pb.GetDepartmentHealthRequest(department_id="hr"))
    assert health.healthy
    assert [c.step for c in health.conditions] == [s.value for s in StepName]
    (api.root / "hr" / "gateway.json").unlink()
    health = await api.stub.GetDepartmentHealth(pb.GetDepartmentHealthRequest(department_id="hr"))
    assert not health.healthy
    broken = [c for c in health.conditions if not c.healthy]
    assert [(c.step, c.reason) for c in broken] == [("gateway", "MISSING")]
    assert broken[0].observed_time.seconds > 0


async def test_an_unexpected_error_is_internal_and_says_nothing_of_itself(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(job_id: str) -> None:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(api.orchestrator, "get_job", explode)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.GetStatus(pb.GetStatusRequest(job_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in str(caught.value)
