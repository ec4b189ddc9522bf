"""Abuse by a caller with a valid token, against the real server and Envoy: each finding of
the edge review (issue 11) reproduced, and the fixed behaviour asserted.

1-2 (streams held by one principal), 7 (expensive health checks) and the others'
latency while one principal is at its limits are in `test_one_caller_never_degrades_another`;
3 half-open connections; 4 a watch after a sequence never sent; 5 token times that are not
times; 6 lists of thousands of items; 8 oversized messages and headers; 9 and 10 what
Envoy and viewers can see. Figures go to the report (`make report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import SECRET, ControlPlane, department_services, provisioned, started_plane, token
from tests.e2e.report import record

pytestmark = pytest.mark.slow

Code = grpc.StatusCode
SPEC = {"departmentName": "Abuse", "workflows": ["email"], "dataRetention": "30d", "region": "us-west",
        "adminEmail": "admin@example.com"}  # fmt: skip
TOO_MANY = "must list at most 3 item(s)"
#: Envoy's `request_headers_timeout` (steps/envoy_config.py).
HEADERS_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(
        tmp_path_factory.mktemp("abuse"), PROVISIONER_STEPS="local", PROVISIONER_STEP_DELAY="5"
    ) as running:
        yield running


def refused(plane: ControlPlane, call: str, request: object, *, bearer: str | None = None) -> grpc.RpcError:
    """The error a call gets over gRPC (for a stream, before its first message)."""
    metadata = (("authorization", f"Bearer {bearer or token('admin', 'mallory')}"),)
    with grpc.insecure_channel(plane.grpc_target) as channel:
        method = getattr(pb_grpc.ProvisioningServiceStub(channel), call)
        if call == "WatchProgress":
            with pytest.raises(grpc.RpcError) as caught:
                next(method(request, metadata=metadata, timeout=10))
        else:
            with pytest.raises(grpc.RpcError) as caught:
                method(request, metadata=metadata, timeout=10)
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error  # type: ignore[return-value]


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


def test_half_open_connections_are_dropped_and_others_are_served(edge: ControlPlane) -> None:
    """Finding 3: connections whose headers never finish held Envoy for 300 s."""
    address = host_port(edge.rest_url)
    stalled = []
    for _ in range(500):
        sock = socket.create_connection(address, timeout=HEADERS_TIMEOUT * 3)
        sock.sendall(b"GET /api/departments HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
        stalled.append(sock)
    opened = time.monotonic()
    try:
        # Meanwhile, everybody else is served.
        with edge.http("viewer") as api:
            assert api.get("/api/departments").status_code == 200
        closed_after = []
        for sock in stalled:
            while sock.recv(4096):  # a 408, then the end of the connection
                pass
            closed_after.append(time.monotonic() - opened)
    finally:
        for sock in stalled:
            sock.close()
    assert max(closed_after) <= HEADERS_TIMEOUT + 3, max(closed_after)
    record("abuse_half_open", connections=len(stalled), dropped_after_s=round(max(closed_after), 1))


def test_a_watch_after_a_sequence_never_sent_is_refused(edge: ControlPlane) -> None:
    """Finding 4: `after_sequence` = 2^63-1 on a running job kept the watch open forever."""
    with edge.http() as api:
        job = api.post("/api/provision-department", json={"departmentId": "patience", **SPEC}).json()
        answer = api.get(f"/api/provision-status/{job['jobId']}/watch", params={"afterSequence": 2**63 - 1})
    assert answer.status_code == 400, answer.text
    assert "after_sequence" in answer.json()["message"]
    request = pb.WatchProgressRequest(job_id=job["jobId"], after_sequence=2**63 - 1)
    assert refused(edge, "WatchProgress", request).code() is Code.INVALID_ARGUMENT


def forged_times(**times: object) -> str:
    """A validly signed token whose times are whatever is given."""
    now = int(time.time())
    claims = {"sub": "mallory", "roles": ["viewer"], "iat": now, "exp": now + 600, **times}
    return jwt.encode(claims, SECRET, algorithm="HS256")  # Infinity and NaN as Python's json writes them


@pytest.mark.parametrize(
    "times", [{"exp": 10**400}, {"nbf": 10**400}, {"exp": float("inf")}, {"nbf": float("nan")}]
)
def test_token_times_that_are_not_times_are_401_not_500(edge: ControlPlane, times: dict[str, object]) -> None:
    """Finding 5: exp or nbf = 10^400 gave HTTP 500 and a traceback, and no log line."""
    bearer = forged_times(**times)
    answer = httpx.get(
        f"{edge.rest_url}/api/departments", headers={"authorization": f"Bearer {bearer}"}, trust_env=False
    )
    assert answer.status_code == 401, answer.text
    assert (
        refused(edge, "ListDepartments", pb.ListDepartmentsRequest(), bearer=bearer).code()
        is Code.UNAUTHENTICATED
    )
    assert "Traceback" not in edge.log.read_text()


@pytest.mark.parametrize("items", [300, 1_000, 10_000])
def test_a_list_of_thousands_is_one_violation(edge: ControlPlane, items: int) -> None:
    """Finding 6: each of 300+ repeated workflows was a violation: trailers too large
    for gRPC (RESOURCE_EXHAUSTED), 503 and 502 through Envoy."""
    body = {**SPEC, "departmentId": "flood", "workflows": ["email"] * items}
    with edge.http() as api:
        answer = api.post("/api/provision-department", json=body)
    if items == 10_000:  # 80 KB of JSON: past the largest body Envoy reads
        assert answer.status_code == 413, answer.text[:300]
    else:
        assert answer.status_code == 400, answer.text[:300]
        (listed,) = [d["fieldViolations"] for d in answer.json()["details"] if "fieldViolations" in d]
        assert [(v["field"], v["description"]) for v in listed] == [
            ("workflows", "must list at most 3 item(s)")
        ]
    request = pb.ProvisionRequest(department_id="flood", workflows=["email"] * items)
    assert refused(edge, "Provision", request).code() is Code.INVALID_ARGUMENT


def test_oversized_messages_and_headers_are_client_errors_never_429(edge: ControlPlane) -> None:
    """Finding 8: oversized messages and metadata answered RESOURCE_EXHAUSTED, which REST
    callers read as 429, "slow down"."""
    huge = "x" * 200_000
    error = refused(edge, "Provision", pb.ProvisionRequest(department_id="big", department_name=huge))
    assert error.code() is Code.INVALID_ARGUMENT and "at most 65536" in (error.details() or "")
    with edge.http() as api:
        body = api.post(
            "/api/provision-department", json={**SPEC, "departmentId": "big", "departmentName": huge}
        )
        assert body.status_code == 413, body.text[:300]
        headers = api.get("/api/departments", headers={"x-padding": "p" * 20_000})
        assert headers.status_code == 431, headers.text[:300]
    # Metadata under the server's limit but over what Envoy forwards is served over gRPC.
    metadata = (("authorization", f"Bearer {token('viewer', 'mallory')}"), ("x-padding", "p" * 20_000))
    with grpc.insecure_channel(edge.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=metadata, timeout=10)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def sse_watches(plane: ControlPlane, job_id: str, count: int) -> tuple[Counter[int], float]:
    """`count` REST watches of `job_id` by one viewer, opened at once; their statuses, and
    another principal's slowest of 50 reads made while they are open."""
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(base_url=plane.rest_url, limits=limits, timeout=30, trust_env=False) as http:
        viewer = {"authorization": f"Bearer {token('viewer', 'mallory')}"}
        async with contextlib.AsyncExitStack() as stack:
            opened = await asyncio.gather(
                *(
                    stack.enter_async_context(
                        http.stream("GET", f"/api/provision-status/{job_id}/watch", headers=viewer)
                    )
                    for _ in range(count)
                )
            )
            other = {"authorization": f"Bearer {token('viewer', 'alice')}"}
            slowest = 0.0
            for _ in range(50):
                started = time.perf_counter()
                answer = await http.get("/api/departments", headers=other)
                slowest = max(slowest, time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
            return Counter(r.status_code for r in opened), slowest


def test_one_callers_streams_are_capped_and_nobody_else_notices(edge: ControlPlane) -> None:
    """Findings 1 and 2: one viewer's 1,030 SSE watches tripped Envoy's circuit breaker,
    503 for everyone; 2,000 gRPC watches took the server's CPU and others' latency."""
    assert edge.process is not None
    with edge.http() as api:
        job = api.post("/api/provision-department", json={"departmentId": "watched", **SPEC}).json()
    statuses, slowest = asyncio.run(sse_watches(edge, job["jobId"], 150))
    assert statuses == Counter({200: 100, 429: 50}), statuses
    assert slowest < 1.0, slowest

    # Over gRPC: 2,000 at once, 100 held; the others refused at once; RSS given back.
    before = rss_mib(edge.process.pid)

    async def grpc_watches() -> tuple[Counter[str], list[float]]:
        viewer = (("authorization", f"Bearer {token('viewer', 'mallory')}"),)
        other = (("authorization", f"Bearer {token('viewer', 'alice')}"),)
        async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)
            request = pb.WatchProgressRequest(job_id=job["jobId"])
            streams = [stub.WatchProgress(request, metadata=viewer) for _ in range(2_000)]

            async def first(stream: Any) -> str:
                try:
                    await stream.read()
                    return "open"
                except grpc.aio.AioRpcError as error:
                    return error.code().name

            outcomes = Counter(await asyncio.gather(*(first(s) for s in streams)))
            latencies = []
            for _ in range(200):
                started = time.perf_counter()
                await stub.GetStatus(pb.GetStatusRequest(job_id=job["jobId"]), metadata=other)
                latencies.append(time.perf_counter() - started)
            for stream in streams:
                stream.cancel()
            return outcomes, latencies

    outcomes, latencies = asyncio.run(grpc_watches())
    assert outcomes == Counter({"open": 100, "RESOURCE_EXHAUSTED": 1_900}), outcomes
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    time.sleep(2)
    after = rss_mib(edge.process.pid)
    record(
        "abuse_streams",
        sse_opened=statuses[200],
        sse_refused=statuses[429],
        grpc_opened=outcomes["open"],
        grpc_refused=outcomes["RESOURCE_EXHAUSTED"],
        other_getstatus_p99_ms=round(p99 * 1000, 1),
        rss_before_mib=round(before, 1),
        rss_after_mib=round(after, 1),
    )
    assert p99 < 0.05 * 4, p99  # aim 50 ms; bounded loosely on a shared CI machine
    assert after <= before * 1.10 + 5, (before, after)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, str]]:
    """A control plane on the embedded steps (real files, processes and routes) with one
    department made, and that department's job id."""
    with started_plane(tmp_path_factory.mktemp("embedded")) as running:
        with running.http() as api:
            job = provisioned(api, {"departmentId": "seen", **SPEC})
        assert job["state"] == "JOB_STATE_COMPLETED", job
        yield running, str(job["jobId"])


def environment_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().partition("=")[::2] for p in pairs if p)


def test_envoy_and_department_services_carry_none_of_our_secrets(embedded: tuple[ControlPlane, str]) -> None:
    """Finding 9: Envoy, the internet-facing process, inherited PROVISIONER_JWT_SECRET."""
    plane, _ = embedded
    envoy = int(next(plane.state_dir.rglob("envoy.pid")).read_text())
    service = department_services(plane.state_dir)["seen"]
    assert plane.env["PROVISIONER_JWT_SECRET"] == SECRET  # what the server was given
    inherited = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}
    # A service is told, on purpose, who issues its callers' tokens and where their keys are.
    for pid, given in ((envoy, set()), (service, {"OAUTH_ISSUER", "OAUTH_JWKS_FILE", "OAUTH_AUDIENCE"})):
        environment = environment_of(pid)
        assert not [k for k in environment if k.startswith("PROVISIONER_")], environment.keys()
        assert SECRET not in "".join(environment.values())
        assert set(environment) <= inherited | given, environment.keys()


def test_viewers_see_no_paths_pids_or_ports_and_state_files_are_private(
    embedded: tuple[ControlPlane, str],
) -> None:
    """Finding 10: viewers saw absolute paths, service pids and ports; the job store was 0644."""
    plane, job_id = embedded
    pid = department_services(plane.state_dir)["seen"]
    port = json.loads(next(plane.state_dir.rglob("seen/container.json")).read_text())["port"]
    secrets = (str(plane.state_dir), f"pid {pid}", f'"{pid}"', f":{port}")
    with plane.http("viewer") as viewer, plane.http("admin") as admin:
        seen = [
            viewer.get(f"/api/provision-status/{job_id}").text,
            viewer.get("/api/departments/seen/health").text,
            viewer.get(f"/api/provision-status/{job_id}/watch").text,  # a finished job: replay, end
            viewer.get("/api/departments").text,
        ]
        # The test can fail: the same reads hold those details for an admin.
        assert str(pid) in admin.get(f"/api/provision-status/{job_id}").text
    for text in seen:
        assert "seen" in text, text[:500]
        leaked = [s for s in secrets if s in text]
        assert not leaked, (leaked, text[:2000])
    assert stat.S_IMODE(plane.state_dir.stat().st_mode) == 0o700
    assert (plane.state_dir / "provisioner.db").exists()
    for path in plane.state_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_health_checks_are_shared_and_nobody_else_waits_for_them(embedded: tuple[ControlPlane, str]) -> None:
    """Finding 7: each health check built a TLS context and checked everything anew:
    200 at once took 11.9 s (p50) and others' reads 615 ms."""
    plane, job_id = embedded

    async def storm() -> tuple[list[float], list[float], Counter[str]]:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)

            async def check(caller: int) -> tuple[float, str]:
                metadata = (("authorization", f"Bearer {token('viewer', f'dashboard-{caller % 50}')}"),)
                started = time.perf_counter()
                try:
                    reply = await stub.GetDepartmentHealth(
                        pb.GetDepartmentHealthRequest(department_id="seen"), metadata=metadata
                    )
                    outcome = "healthy" if reply.healthy else "unhealthy"
                except grpc.aio.AioRpcError as error:
                    outcome = error.code().name
                return time.perf_counter() - started, outcome

            async def others() -> list[float]:
                metadata = (("authorization", f"Bearer {token('viewer', 'alice')}"),)
                latencies = []
                for _ in range(50):
                    started = time.perf_counter()
                    await stub.GetStatus(pb.GetStatusRequest(job_id=job_id), metadata=metadata)
                    latencies.append(time.perf_counter() - started)
                return latencies

            checks, reads = await asyncio.gather(asyncio.gather(*(check(i) for i in range(200))), others())
            return sorted(t for t, _ in checks), sorted(reads), Counter(o for _, o in checks)

    checks, reads, outcomes = asyncio.run(storm())
    assert outcomes == Counter({"healthy": 200}), outcomes  # 50 callers, 4 each: all within limits
    p50, others_p99 = checks[len(checks) // 2], reads[int(len(reads) * 0.99) - 1]
    record(
        "abuse_health",
        checks=200,
        check_p50_ms=round(p50 * 1000, 1),
        other_read_p99_ms=round(others_p99 * 1000, 1),
    )
    assert p50 < 2.0, p50  # was 11.9 s
    assert others_p99 < 0.5, others_p99  # was 615 ms at p50
