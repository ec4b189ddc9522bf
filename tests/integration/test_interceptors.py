"""The interceptors (logging → authentication → concurrency → rate limit) on a real grpc.aio server, port 0,
with the real servicer, health and reflection, through a real channel.

Every method is called with every kind of caller against the role matrix; every refusal is
checked for its status, its `google.rpc` details and its trailers; the log lines for their
fields and for the absence of tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from provisioner.core.states import StepName
from provisioner.edge.auth import Authenticator, mint_token
from provisioner.edge.concurrency import ConcurrencyLimiter, ConcurrencyLimits, Kind
from provisioner.edge.interceptors import server_interceptors
from provisioner.edge.ratelimit import Rate, RateLimiter
from provisioner.edge.server import GrpcEdge
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.logs import JsonFormatter
from provisioner.steps.faults import SlowedStep
from provisioner.steps.local import LocalMarkerStep
from provisioner.store.memory import InMemoryJobStore
from provisioner.store.protocol import JobStore
from provisioner.store.sql import SqlJobStore
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.integration.test_grpc_api import CONFIG, details, request

SECRET = "an-integration-test-secret-of-32-chars+"
SERVICE = pb.DESCRIPTOR.services_by_name["ProvisioningService"]
ACCESS_LOG = "provisioner.edge.interceptors"
LOOSE = Rate(1000, 60.0)
Metadata = tuple[tuple[str, str], ...]


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def token(subject: str, *roles: str) -> str:
    return mint_token(SECRET, subject, roles, ttl=3600)


def bearer(value: str, *extra: tuple[str, str]) -> Metadata:
    return (("authorization", f"Bearer {value}"), *extra)


ADMIN = token("alice", "admin")
VIEWER = token("victor", "viewer")
NO_ROLE = token("nora")
CALLERS: dict[str, Metadata] = {
    "no token": (),
    "no role": bearer(NO_ROLE),
    "viewer": bearer(VIEWER),
    "admin": bearer(ADMIN),
}


@dataclass
class Api:
    channel: grpc.aio.Channel
    stub: pb_grpc.ProvisioningServiceStub
    limiter: RateLimiter
    clock: Clock


def limiter(
    provision: Rate = LOOSE, deprovision: Rate = LOOSE, read: Rate = LOOSE, shared: SqlJobStore | None = None
) -> RateLimiter:
    return RateLimiter(
        provision=provision,
        deprovision=deprovision,
        read=read,
        shared=shared.admissions if shared is not None else None,
    )


async def serve(
    tmp_path: Path,
    store: JobStore | None = None,
    limits: RateLimiter | None = None,
    clock: Clock | None = None,
    delay: float = 0.0,
    concurrency: ConcurrencyLimiter | None = None,
) -> AsyncIterator[Api]:
    store = store or InMemoryJobStore()
    limits = limits or limiter()
    clock = clock or Clock()
    steps = {n: SlowedStep(LocalMarkerStep(n, tmp_path), delay) for n in StepName}
    orchestrator = Orchestrator(store, EventHub(store), steps, CONFIG)
    await orchestrator.start()
    # The server provisioning-server runs, with the interceptors under test.
    edge = GrpcEdge(
        orchestrator,
        interceptors=server_interceptors(Authenticator(secret=SECRET), limits, concurrency, clock=clock),
    )
    port = await edge.start("127.0.0.1:0")
    await edge.serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Api(channel, pb_grpc.ProvisioningServiceStub(channel), limits, clock)
    finally:
        await edge.stop(None)
        orchestrator.hub.close()
        await orchestrator.stop()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for it in serve(tmp_path):
        yield it


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def drain(stream: Any) -> list[Any]:
    return [message async for message in stream]


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# One call per method, each answered by the servicer itself once let through.
Call = Callable[[pb_grpc.ProvisioningServiceStub, Metadata], Awaitable[Any]]
CALLS: dict[str, tuple[Call, grpc.StatusCode]] = {
    "Provision": (
        lambda s, md: s.Provision(request("Not_Valid"), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "GetStatus": (
        lambda s, md: s.GetStatus(pb.GetStatusRequest(job_id=str(uuid.uuid4())), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    ),
    "WatchProgress": (
        lambda s, md: drain(s.WatchProgress(pb.WatchProgressRequest(job_id=str(uuid.uuid4())), metadata=md)),
        grpc.StatusCode.NOT_FOUND,
    ),
    "Deprovision": (
        lambda s, md: s.Deprovision(pb.DeprovisionRequest(department_id="ghost"), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    ),
    "ListDepartments": (
        lambda s, md: s.ListDepartments(pb.ListDepartmentsRequest(), metadata=md),
        grpc.StatusCode.OK,
    ),
    "GetDepartment": (
        lambda s, md: s.GetDepartment(pb.GetDepartmentRequest(department_id="ghost"), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    ),
    "GetDepartmentHealth": (
        lambda s, md: s.GetDepartmentHealth(
            pb.GetDepartmentHealthRequest(department_id="ghost"), metadata=md
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "ListJobs": (
        lambda s, md: s.ListJobs(pb.ListJobsRequest(), metadata=md),
        grpc.StatusCode.OK,
    ),
    "CancelJob": (
        lambda s, md: s.CancelJob(pb.CancelJobRequest(job_id=str(uuid.uuid4())), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    ),
    "ListAuditEvents": (
        lambda s, md: s.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=md),
        grpc.StatusCode.OK,
    ),
}
ADMIN_ONLY = {"Provision", "Deprovision", "CancelJob", "ListAuditEvents"}


def expected(caller: str, method: str) -> grpc.StatusCode:
    if caller == "no token":
        return grpc.StatusCode.UNAUTHENTICATED
    if caller == "no role" or (caller == "viewer" and method in ADMIN_ONLY):
        return grpc.StatusCode.PERMISSION_DENIED
    return CALLS[method][1]


def test_the_matrix_covers_every_method_of_the_contract() -> None:
    assert set(CALLS) == {m.name for m in SERVICE.methods}


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_every_method_against_the_role_matrix(api: Api, caller: str) -> None:
    found = {method: await status_of(call(api.stub, CALLERS[caller])) for method, (call, _) in CALLS.items()}
    assert found == {method: expected(caller, method) for method in CALLS}


async def test_unauthenticated_says_why_in_one_sentence_without_the_token(api: Api) -> None:
    for metadata, message in [
        ((), "missing bearer token"),
        ((("authorization", "Bearer "),), "empty bearer token"),
        (bearer("secret-looking-garbage"), "token is malformed"),
        (bearer(mint_token("another-secret-of-at-least-32-characters", "alice", ["admin"])), None),
        (bearer(mint_token(SECRET, "alice", ["admin"], now=time.time() - 7200)), "token expired"),
    ]:
        call = api.stub.GetStatus(pb.GetStatusRequest(job_id=str(uuid.uuid4())), metadata=metadata)
        error = await refused(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == (message or "token signature is invalid")
        info = details(error)["ErrorInfo"]
        assert info.reason == "UNAUTHENTICATED"  # type: ignore[attr-defined]
        sent = dict(metadata).get("authorization", "").removeprefix("Bearer ")
        if sent:
            assert sent not in str(error)


async def test_permission_denied_names_the_role_needed(api: Api) -> None:
    error = await refused(api.stub.Provision(request(), metadata=bearer(VIEWER)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "Provision needs the admin role"
    info = details(error)["ErrorInfo"]
    assert info.reason == "PERMISSION_DENIED"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {"required_role": "admin"}  # type: ignore[attr-defined]
    error = await refused(api.stub.GetStatus(pb.GetStatusRequest(job_id="x"), metadata=bearer(NO_ROLE)))
    assert error.details() == "GetStatus needs the viewer role"


async def test_the_handler_sees_the_principal(api: Api) -> None:
    job = await api.stub.Provision(request("hr"), metadata=bearer(ADMIN))
    assert job.principal == "alice"


async def test_health_and_reflection_need_no_token(api: Api) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stream = reflection_pb2_grpc.ServerReflectionStub(api.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    [listing] = [m async for m in stream]
    assert SERVICE.full_name in {s.name for s in listing.list_services_response.service}


async def test_unknown_methods_need_a_token_before_they_are_unimplemented(api: Api) -> None:
    async def call(method: str, metadata: Metadata) -> grpc.StatusCode:
        return await status_of(api.channel.unary_unary(method)(b"", metadata=metadata))

    assert await call(f"/{SERVICE.full_name}/Nope", ()) == grpc.StatusCode.UNAUTHENTICATED
    assert await call("/some.other.Service/Method", ()) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(f"/{SERVICE.full_name}/Nope", bearer(VIEWER)) == grpc.StatusCode.UNIMPLEMENTED
    assert await call("/some.other.Service/Method", bearer(NO_ROLE)) == grpc.StatusCode.UNIMPLEMENTED
    assert await call("/grpc.health.v1.Health/Nope", ()) == grpc.StatusCode.UNIMPLEMENTED


async def test_rate_limits_per_principal_with_the_exact_retry_delay(tmp_path: Path) -> None:
    clock = Clock()  # frozen: the waits are exact (tokens live an hour, past what we move it)
    limits = limiter(provision=Rate(2, 3600.0), read=Rate(3, 60.0))
    async for api in serve(tmp_path, limits=limits, clock=clock):
        provision, admitted = CALLS["Provision"]
        for _ in range(2):
            assert await status_of(provision(api.stub, bearer(ADMIN))) == admitted
        clock.now += 100
        call = api.stub.Provision(request("Not_Valid"), metadata=bearer(ADMIN))
        error = await refused(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        found = details(error)
        assert found["ErrorInfo"].reason == "RATE_LIMITED"  # type: ignore[attr-defined]
        assert found["ErrorInfo"].metadata["bucket"] == "provision"  # type: ignore[attr-defined]
        assert found["RetryInfo"].retry_delay.ToSeconds() == 3500  # type: ignore[attr-defined]
        trailers = dict(await call.trailing_metadata())
        assert trailers["retry-after"] == "3500"
        assert "grpc-status-details-bin" in trailers
        # Another admin has a quota of their own.
        other = bearer(token("bob", "admin"))
        assert await status_of(provision(api.stub, other)) == admitted

        # Reads: a bucket of their own, sliding.
        for _ in range(3):
            await api.stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=bearer(VIEWER))
        clock.now += 59.5
        error = await refused(api.stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=bearer(VIEWER)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(error)["RetryInfo"].retry_delay.ToMilliseconds() == 500  # type: ignore[attr-defined]
        assert dict(error.trailing_metadata() or ())["retry-after"] == "1"
        # Public services are never limited; refused callers cost nobody anything.
        health = health_pb2_grpc.HealthStub(api.channel)
        for _ in range(5):
            await health.Check(health_pb2.HealthCheckRequest())
        await status_of(api.stub.Provision(request(), metadata=bearer(VIEWER)))
        assert "victor" not in limits.windows["provision"]._log
        clock.now += 0.5
        await api.stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=bearer(VIEWER))


async def test_the_limit_holds_across_a_restart_and_across_replicas(tmp_path: Path, store_url: str) -> None:
    store = SqlJobStore(store_url)
    await store.initialize()
    hourly = Rate(2, 3600.0)
    try:
        async for api in serve(tmp_path, store, limiter(provision=hourly, shared=store)):
            first = await api.stub.Provision(request("hr"), metadata=bearer(ADMIN))
        # Another replica (or this one restarted): its limiter counts the same window.
        other = SqlJobStore(store_url)
        await other.initialize()
        try:
            async for api in serve(tmp_path, other, limiter(provision=hourly, shared=other)):
                await api.stub.Provision(request("it"), metadata=bearer(ADMIN))
                error = await refused(api.stub.Provision(request("ops"), metadata=bearer(ADMIN)))
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                delay = details(error)["RetryInfo"].retry_delay.ToMilliseconds() / 1000  # type: ignore[attr-defined]
                created = first.create_time.ToDatetime().timestamp()
                assert delay == pytest.approx(3600 - (time.time() - created), abs=2)
                job = await api.stub.Provision(request("ops"), metadata=bearer(token("bob", "admin")))
                assert job.principal == "bob"
        finally:
            await other.close()
    finally:
        await store.close()


# -- request ids and logs --------------------------------------------------------------------------


async def test_the_request_id_is_echoed_and_errors_stay_trailers_only(api: Api) -> None:
    listing = pb.ListDepartmentsRequest()
    call = api.stub.ListDepartments(listing, metadata=bearer(VIEWER, ("x-request-id", "req-42")))
    await call
    assert dict(await call.initial_metadata())["x-request-id"] == "req-42"

    # Not a request id we would log: replaced by one of ours.
    call = api.stub.ListDepartments(listing, metadata=bearer(VIEWER, ("x-request-id", "a b")))
    await call
    uuid.UUID(dict(await call.initial_metadata())["x-request-id"])

    # Refusals and handler errors: no headers were sent before the status, so the id
    # travels among the trailers of a trailers-only response.
    for metadata in [(("x-request-id", "req-43"),), bearer(VIEWER, ("x-request-id", "req-43"))]:
        call = api.stub.GetStatus(pb.GetStatusRequest(job_id=str(uuid.uuid4())), metadata=metadata)
        await refused(call)
        assert "x-request-id" not in dict(await call.initial_metadata())
        trailers = dict(await call.trailing_metadata())
        assert trailers["x-request-id"] == "req-43"
        assert "grpc-status-details-bin" in trailers

    # Streams: before the first message.
    job = await api.stub.Provision(request("hr"), metadata=bearer(ADMIN))
    stream = api.stub.WatchProgress(
        pb.WatchProgressRequest(job_id=job.job_id), metadata=bearer(VIEWER, ("x-request-id", "req-44"))
    )
    assert dict(await stream.initial_metadata())["x-request-id"] == "req-44"
    await drain(stream)


async def access_log(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The access log's lines, once there are `count`: grpc writes them when each RPC is
    done, which may be just after the client has its answer."""
    for _ in range(200):
        records = [r for r in caplog.records if r.name == ACCESS_LOG]
        if len(records) >= count:
            return [json.loads(JsonFormatter().format(r)) for r in records]
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} access log lines, got {len(records)}")


async def test_one_log_line_per_rpc_with_code_latency_and_no_secrets(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unknown = str(uuid.uuid4())
    status, watch = pb.GetStatusRequest(job_id=unknown), pb.WatchProgressRequest(job_id=unknown)
    await api.stub.ListDepartments(
        pb.ListDepartmentsRequest(), metadata=bearer(VIEWER, ("x-request-id", "r-1"))
    )
    await status_of(api.stub.GetStatus(status, metadata=bearer(ADMIN)))
    await status_of(api.stub.GetStatus(status, metadata=bearer("not.a.token")))
    await status_of(api.stub.Provision(request(), metadata=bearer(VIEWER)))
    await status_of(drain(api.stub.WatchProgress(watch, metadata=bearer(ADMIN))))
    await health_pb2_grpc.HealthStub(api.channel).Check(health_pb2.HealthCheckRequest())
    lines = await access_log(caplog, 6)
    # Each line is written when grpc is done with its RPC: compare them in any order.
    assert sorted((line["method"].rpartition("/")[2], line["principal"], line["code"]) for line in lines) == [
        ("Check", "anonymous", "OK"),
        ("GetStatus", "alice", "NOT_FOUND"),
        ("GetStatus", "anonymous", "UNAUTHENTICATED"),
        ("ListDepartments", "victor", "OK"),
        ("Provision", "victor", "PERMISSION_DENIED"),
        ("WatchProgress", "alice", "NOT_FOUND"),
    ]
    for line in lines:
        assert line["level"] == "INFO"
        assert isinstance(line["latency_ms"], float)
        assert 0 <= line["latency_ms"] < 5000
        assert line["peer"].startswith("ipv4:127.0.0.1:")
        if line["method"].endswith("/ListDepartments"):
            assert line["request_id"] == "r-1"
            assert line["msg"] == f"/{SERVICE.full_name}/ListDepartments OK"
        else:
            uuid.UUID(line["request_id"])
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (VIEWER, ADMIN, "not.a.token", SECRET, "Bearer"):
        assert secret not in everything


async def test_cancelled_and_expired_streams_are_logged_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOG)
    async for api in serve(tmp_path, delay=5.0):
        job = await api.stub.Provision(request("hr"), metadata=bearer(ADMIN))
        stream = api.stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), metadata=bearer(VIEWER))
        await stream.read()
        stream.cancel()
        expiring = api.stub.WatchProgress(
            pb.WatchProgressRequest(job_id=job.job_id), metadata=bearer(VIEWER), timeout=0.3
        )
        assert await status_of(drain(expiring)) == grpc.StatusCode.DEADLINE_EXCEEDED
        lines = await access_log(caplog, 3)
        watches = [line["code"] for line in lines if line["method"].endswith("/WatchProgress")]
        assert sorted(watches) == ["CANCELLED", "DEADLINE_EXCEEDED"]


async def test_undecodable_bytes_and_unknown_enum_numbers_are_invalid_arguments(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = bearer(VIEWER)
    raw = api.channel.unary_unary(f"/{SERVICE.full_name}/GetStatus")
    # Field 1 (job_id) holding bytes that are not UTF-8: not a GetStatusRequest at all.
    garbled = await refused(raw(b"\x0a\x02\xff\xfe", metadata=metadata))
    assert garbled.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (garbled.details() or "")
    violation = details(garbled)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == "request"
    unknown = await refused(
        api.stub.ListDepartments(pb.ListDepartmentsRequest(status=999), metadata=metadata)
    )
    assert unknown.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "status" in (unknown.details() or "")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# -- concurrency -------------------------------------------------------------------------------


async def test_one_principal_at_its_stream_limit_is_refused_and_nobody_else_notices(tmp_path: Path) -> None:
    limits = ConcurrencyLimiter(ConcurrencyLimits(streams=3, calls=2))
    async for api in serve(tmp_path, delay=0.5, concurrency=limits):
        job = await api.stub.Provision(request("held"), metadata=bearer(ADMIN))
        watch = pb.WatchProgressRequest(job_id=job.job_id)
        held = [api.stub.WatchProgress(watch, metadata=bearer(VIEWER)) for _ in range(3)]
        for stream in held:
            await stream.read()  # the snapshot: the stream is open
        assert limits.held("victor", Kind.STREAM) == 3

        error = await refused(drain(api.stub.WatchProgress(watch, metadata=bearer(VIEWER))))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            "too many streams open at once: at most 3 per caller; "
            "wait for one to end (or close one) and retry"
        )
        info = details(error)["ErrorInfo"]
        assert (info.reason, dict(info.metadata)) == ("CONCURRENCY_LIMITED", {"kind": "stream", "limit": "3"})
        assert dict(error.trailing_metadata() or ()).get("retry-after") == "1"

        # Another principal watches, and the first still reads.
        other = api.stub.WatchProgress(watch, metadata=bearer(ADMIN))
        assert (await other.read()).HasField("snapshot")
        other.cancel()
        assert (
            await status_of(
                api.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id), metadata=bearer(VIEWER))
            )
            is grpc.StatusCode.OK
        )

        # One closed, one more fits.
        held.pop().cancel()
        for _ in range(50):
            if limits.held("victor", Kind.STREAM) < 3:
                break
            await asyncio.sleep(0.02)
        again = api.stub.WatchProgress(watch, metadata=bearer(VIEWER))
        assert (await again.read()).HasField("snapshot")
        for stream in [*held, again]:
            stream.cancel()


async def test_a_call_refused_for_concurrency_costs_no_rate_window(tmp_path: Path) -> None:
    limits = ConcurrencyLimiter(ConcurrencyLimits(calls=1))
    rates = limiter(provision=Rate(1, 3600.0))
    async for api in serve(tmp_path, limits=rates, concurrency=limits):
        release = limits.admit("alice", Kind.CALL)  # alice already has her one call open
        error = await refused(api.stub.Provision(request("later"), metadata=bearer(ADMIN)))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(error)["ErrorInfo"].reason == "CONCURRENCY_LIMITED"
        release()
        # Her one provisioning an hour is still hers.
        assert (
            await status_of(api.stub.Provision(request("later"), metadata=bearer(ADMIN)))
            is grpc.StatusCode.OK
        )
        assert limits.held("alice", Kind.CALL) == 0


async def test_an_overloaded_server_sheds_new_calls_with_a_retry_delay(tmp_path: Path) -> None:
    class Late:
        seconds = 2.0

    limits = ConcurrencyLimiter(ConcurrencyLimits(lag_threshold=0.5), lag=Late())  # type: ignore[arg-type]
    async for api in serve(tmp_path, concurrency=limits):
        error = await refused(api.stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=bearer(VIEWER)))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert details(error)["ErrorInfo"].reason == "OVERLOADED"
        assert "event loop runs 2000 ms late" in (error.details() or "")
        # The server's own health is never shed.
        health = health_pb2_grpc.HealthStub(api.channel)
        assert (
            await health.Check(health_pb2.HealthCheckRequest())
        ).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("shared", [False, True], ids=["in-memory windows", "windows in the job store"])
async def test_a_dry_run_costs_a_read_and_says_whether_the_real_call_would_fit(
    tmp_path: Path, shared: bool
) -> None:
    store = SqlJobStore(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}") if shared else None
    if store is not None:
        await store.initialize()
    limits = limiter(provision=Rate(1, 3600.0), shared=store)
    try:
        async for api in serve(tmp_path, store=store, limits=limits):
            dry = request("dry", validate_only=True)
            for _ in range(3):  # dry runs do not use up the provision window
                preview = await api.stub.Provision(dry, metadata=bearer(ADMIN))
                assert preview.job_id == ""
            await api.stub.Provision(request("dry"), metadata=bearer(ADMIN))
            error = await refused(
                api.stub.Provision(request("other", validate_only=True), metadata=bearer(ADMIN))
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "PROVISIONER_RATE_LIMIT_PROVISION" in (error.details() or "")
    finally:
        if store is not None:
            await store.close()
