"""No secret leaks: after a busy run, no client secret, token, signing secret or
encryption key appears in any log line, error message, API response or file, except the
one-time secret in the response to the Provision call that made it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import httpx
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import SECRET, control_plane, stop_department_services, token
from tests.e2e.report import record
from tests.e2e.test_departments import request

pytestmark = pytest.mark.slow


def test_secrets_appear_nowhere_but_the_one_response_that_hands_them_over(tmp_path: Path) -> None:
    plane = control_plane(tmp_path, PROVISIONER_FAULT_INJECTION="gateway=fail@doomed")
    plane.start()
    secrets: set[str] = {SECRET}
    seen: list[str] = []  # every response body and error message but the handovers
    try:
        admin = token()
        secrets.add(admin)
        metadata = (("authorization", f"Bearer {admin}"),)
        with grpc.insecure_channel(plane.grpc_target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)
            jobs = []
            for name in ("alpha", "beta", "doomed"):
                created = stub.Provision(request(name, ("email", "database")), metadata=metadata, timeout=10)
                secrets.add(created.issued_client.client_secret)
                jobs.append(created.job_id)
                seen += [
                    str(m)
                    for m in stub.WatchProgress(
                        pb.WatchProgressRequest(job_id=created.job_id), metadata=metadata
                    )
                ]
            seen += [str(stub.GetStatus(pb.GetStatusRequest(job_id=j), metadata=metadata)) for j in jobs]
            seen.append(str(stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=metadata)))
            seen.append(
                str(
                    stub.GetDepartmentHealth(
                        pb.GetDepartmentHealthRequest(department_id="alpha"), metadata=metadata
                    )
                )
            )
            for bad in (
                f"Bearer {admin}x",
                "Bearer " + SECRET,
                "Basic " + base64.b64encode(SECRET.encode()).decode(),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=(("authorization", bad),))
                seen.append(str(refused.value.details()))
        with httpx.Client(base_url=plane.rest_url, trust_env=False, timeout=10) as http:
            auth = {"authorization": f"Bearer {admin}"}
            seen.append(http.get(f"/api/provision-status/{jobs[0]}", headers=auth).text)
            seen.append(http.get("/api/departments", headers=auth).text)
            seen.append(http.get("/api/departments", headers={"authorization": f"Bearer {admin}x"}).text)
            seen.append(
                http.post("/api/provision-department", headers=auth, json={"departmentId": SECRET}).text
            )
            for name in ("alpha", "beta"):
                # Wrong and right client credentials against the departments themselves.
                webhook = f"/departments/{name}/workflows/email"
                seen.append(http.post(webhook, json={"name": "x"}, auth=(f"{name}.nobody", SECRET)).text)
            mine = next(iter(s for s in secrets if s not in (SECRET, admin)))
            seen.append(
                http.post(
                    "/departments/beta/workflows/email", json={"name": "x"}, auth=("alpha.x", mine)
                ).text
            )
        listed = plane.run("--timeout", "5", "list")
        seen += [listed.stdout, listed.stderr]
    finally:
        plane.stop()
        stop_department_services(plane.state_dir)

    keyfile = plane.state_dir / "encryption-keys.json"
    secrets |= {k["key"] for k in json.loads(keyfile.read_text())["keys"]}
    written = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p != keyfile and p.suffix not in (".db", ".pb") and "-wal" not in p.name
    ]
    found = {
        where: [s[:6] + "…" for s in secrets if s in text]
        for where, text in [*((f"response {i}", body) for i, body in enumerate(seen)),
                            *((str(p.relative_to(tmp_path)), p.read_text(errors="replace")) for p in written)]
    }  # fmt: skip
    leaks = {where: which for where, which in found.items() if which}
    record("secrets", places_scanned=len(found), secrets_looked_for=len(secrets), secrets_found=len(leaks))
    assert leaks == {}
    assert len(secrets) >= 6  # the signing secret, a token, 3 client secrets, a key
    # What was scanned: the server's and Envoy's logs, and both live departments' logs.
    scanned = {p.name for p in written}
    assert {"server.log", "envoy.log"} <= scanned
    assert sum(p.name == "service.log" for p in written) == 2
