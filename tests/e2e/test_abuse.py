"""Abuse by a caller with a valid token, against the real server and Envoy: each finding of
the edge review (issue 11) reproduced, and the fixed behaviour asserted.

1-2 (streams held by one principal), 7 (expensive health checks) and the others'
latency while one principal is at its limits are in `test_one_caller_never_degrades_another`;
3 half-open connections; 4 a watch after a sequence never sent; 5 token times that are not
times; 6 lists of thousands of items; 8 oversized messages and headers; 9 and 10 what
Envoy and viewers can see. Figures go to the report (`make report`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import jwt
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import SECRET, ControlPlane, started_plane, token
from tests.e2e.report import record

pytestmark = pytest.mark.slow

Code = grpc.StatusCode
SPEC = {"departmentName": "Abuse", "workflows": ["email"], "dataRetention": "30d", "region": "us-west",
        "adminEmail": "admin@example.com"}  # fmt: skip
TOO_MANY = "must list at most 3 item(s)"
#: Envoy's `request_headers_timeout` (steps/envoy_config.py).
HEADERS_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(
        tmp_path_factory.mktemp("abuse"), PROVISIONER_STEPS="local", PROVISIONER_STEP_DELAY="0.3"
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
