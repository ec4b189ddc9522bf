"""Real departments on the embedded default, checked in the real world, not in job records.

A department is real when its service answers through Envoy at `/departments/<id>/`,
its workflows run with its own client credentials and write to its own database, and
it is gone when deprovisioned: no directory, no process, no route, no credential.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from authlib.integrations.base_client import OAuthError

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import (
    BIN,
    ControlPlane,
    access_token,
    bearer,
    control_plane,
    department_services,
    started_plane,
    stop_department_services,
    token,
)
from tests.smtp import MailServer

pytestmark = pytest.mark.slow

METADATA = (("authorization", f"Bearer {token()}"),)


@pytest.fixture(scope="module")
def relay() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, relay: MailServer) -> Iterator[ControlPlane]:
    with started_plane(tmp_path_factory.mktemp("real"), PROVISIONER_SMTP_URL=relay.url) as running:
        yield running


def request(
    department_id: str, workflows: tuple[str, ...] = ("email", "google_drive", "database")
) -> pb.ProvisionRequest:
    return pb.ProvisionRequest(
        department_id=department_id,
        department_name="Research & Development",
        workflows=list(workflows),
        data_retention="90d",
        region="eu-west",
        admin_email="rnd@example.com",
    )


def provision(plane: ControlPlane, department_id: str) -> tuple[pb.Job, pb.Job]:
    """(the Provision response, the job once finished)."""
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        created = stub.Provision(request(department_id), metadata=METADATA, timeout=10)
        return created, finish(stub, created.job_id)


def finish(stub: pb_grpc.ProvisioningServiceStub, job_id: str) -> pb.Job:
    for _ in stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), metadata=METADATA, timeout=60):
        pass
    return stub.GetStatus(pb.GetStatusRequest(job_id=job_id), metadata=METADATA, timeout=10)


def deprovision(plane: ControlPlane, department_id: str) -> pb.Job:
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        job = stub.Deprovision(
            pb.DeprovisionRequest(department_id=department_id), metadata=METADATA, timeout=10
        )
        return finish(stub, job.job_id)


def through_envoy(plane: ControlPlane, department_id: str, path: str, **kwargs: object) -> httpx.Response:
    with httpx.Client(base_url=plane.rest_url, trust_env=False, timeout=10) as client:
        return client.request(
            str(kwargs.pop("method", "GET")),
            f"/departments/{department_id}/{path}",
            **kwargs,  # type: ignore[arg-type]
        )


def executions(plane: ControlPlane, department_id: str) -> list[tuple[str, str]]:
    database = plane.state_dir / "departments" / department_id / "data.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        return connection.execute("SELECT workflow, status FROM workflow_executions").fetchall()


def traces(plane: ControlPlane, department_id: str) -> dict[str, object]:
    """Everything of the department that exists in the real world, by kind."""
    directory = plane.state_dir / "departments" / department_id
    secrets = [name for department, name in plane.secrets() if department == department_id]
    found: dict[str, object] = {}
    if directory.exists():
        found["files"] = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    if secrets:
        found["secrets"] = secrets
    if department_id in plane.routes():
        found["route"] = True
    if department_id in department_services(plane.state_dir):
        found["process"] = department_services(plane.state_dir)[department_id]
    routes = (plane.state_dir / "envoy" / "dynamic" / "routes.json").read_text()
    if f"/departments/{department_id}/" in routes:
        found["envoy_route"] = True
    status = through_envoy(plane, department_id, "healthz").status_code
    if status != 404:
        found["envoy_answers"] = status
    return found


def test_a_provisioned_department_serves_runs_its_workflows_and_vanishes_when_deprovisioned(
    real: ControlPlane, relay: MailServer
) -> None:
    dept = f"rnd-{uuid.uuid4().hex[:6]}"
    created, job = provision(real, dept)
    assert job.state == pb.JOB_STATE_COMPLETED, job.error
    client_id, secret = created.issued_client.client_id, created.issued_client.client_secret
    assert client_id.startswith(f"{dept}.") and len(secret) >= 43
    # The secret is returned once: not by a status read, not in any file or log line.
    assert not job.issued_client.client_secret
    on_disk = [p for p in real.state_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert on_disk == []
    assert secret not in real.log.read_text()

    health = through_envoy(real, dept, "healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "SERVING"
    # An off-the-shelf OAuth 2.0 client gets an access token for the department's client.
    token = access_token(real, client_id, secret)
    for workflow, payload in (
        ("email", {"name": "quarterly report"}),
        ("google_drive", {"name": "budget.xlsx"}),
        ("database", {"name": "row", "amount": 3}),
    ):
        ran = through_envoy(
            real, dept, f"workflows/{workflow}", method="POST", json=payload, headers=bearer(token)
        )
        assert ran.status_code == 200, ran.text
    # The email workflow mailed the administrator through the SMTP relay (and only that run:
    # the validation step's smoke test was a dry run).
    [mail] = [m for m in relay.received if dept in m.message["Subject"]]
    assert mail.message["Subject"] == f"New event for {dept}: quarterly report"
    assert mail.recipients == ["rnd@example.com"]
    with pytest.raises(OAuthError, match="invalid_client"):
        access_token(real, client_id, "guess")
    wrong = through_envoy(
        real, dept, "workflows/email", method="POST", json={"name": "x"}, auth=(client_id, secret)
    )
    assert wrong.status_code == 401  # client credentials are for the token endpoint only
    recorded = executions(real, dept)
    # The validation step's own smoke test, then ours, each in the department's database.
    assert ("database", "succeeded") in recorded
    assert {w for w, s in recorded if s == "succeeded"} == {"email", "google_drive", "database"}

    with grpc.insecure_channel(real.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        report = stub.GetDepartmentHealth(
            pb.GetDepartmentHealthRequest(department_id=dept), metadata=METADATA, timeout=10
        )
    assert report.healthy, report
    assert {c.step for c in report.conditions} == {
        "validate", "database", "oauth", "container", "workflows", "gateway", "validation"
    }  # fmt: skip

    teardown = deprovision(real, dept)
    assert teardown.state == pb.JOB_STATE_COMPLETED, teardown.error
    assert traces(real, dept) == {}
    revoked = through_envoy(
        real, dept, "workflows/email", method="POST", json={"name": "x"}, headers=bearer(token)
    )
    assert revoked.status_code == 404
    with pytest.raises(OAuthError, match="invalid_client"):
        access_token(real, client_id, secret)  # the client is revoked: no new tokens


def test_a_service_that_dies_is_restarted_and_a_restarted_control_plane_adopts_the_rest(
    tmp_path: Path,
) -> None:
    plane = control_plane(tmp_path)
    plane.start()
    try:
        _, first = provision(plane, "keeper")
        _, second = provision(plane, "survivor")
        assert first.state == second.state == pb.JOB_STATE_COMPLETED
        before = department_services(plane.state_dir)

        # A control-plane restart adopts the running services: same processes.
        assert plane.stop() == 0
        assert department_services(plane.state_dir) == before
        plane.start()
        assert department_services(plane.state_dir) == before

        # A service that dies is started again, on the same port: Envoy's route holds.
        os.kill(before["keeper"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while department_services(plane.state_dir).get("keeper") in (None, before["keeper"]):
            assert time.monotonic() < deadline, "the dead service was not restarted"
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while through_envoy(plane, "keeper", "healthz").status_code != 200:
            assert time.monotonic() < deadline, "the restarted service does not answer through Envoy"
            time.sleep(0.1)
        assert department_services(plane.state_dir)["survivor"] == before["survivor"]
    finally:
        plane.stop()
        stop_department_services(plane.state_dir)


def test_keys_rotate_while_the_server_runs_and_every_secret_still_works(real: ControlPlane) -> None:
    dept = f"keys-{uuid.uuid4().hex[:6]}"
    created, job = provision(real, dept)
    assert job.state == pb.JOB_STATE_COMPLETED
    keyfile = real.state_dir / "encryption-keys.json"
    old = {k["id"] for k in json.loads(keyfile.read_text())["keys"]}

    rotated = subprocess.run(
        [str(BIN / "provisioning-server"), "rotate-key"],
        env=real.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotated.returncode == 0, rotated.stderr
    new = {k["id"] for k in json.loads(keyfile.read_text())["keys"]}
    assert len(new) == 1 and not new & old
    with sqlite3.connect(f"file:{real.state_dir / 'provisioner.db'}?mode=ro", uri=True) as db:
        sealed = "".join(s for (s,) in db.execute("SELECT sealed FROM department_secrets"))
        recorded = db.execute("SELECT value FROM store_settings WHERE name = 'encryption_key_id'").fetchone()
    assert sealed
    assert not any(f".{key}." in sealed for key in old)
    assert recorded == (next(iter(new)),)  # every replica must now hold the new key

    # The running server reads the new key: health decrypts, and the department still
    # takes its client's calls; a department provisioned now is sealed with the new key.
    with grpc.insecure_channel(real.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        report = stub.GetDepartmentHealth(
            pb.GetDepartmentHealthRequest(department_id=dept), metadata=METADATA, timeout=10
        )
    assert report.healthy, report
    # The token endpoint still opens the client and its signing keys, all resealed.
    token = access_token(real, created.issued_client.client_id, created.issued_client.client_secret)
    ran = through_envoy(real, dept, "workflows/database", method="POST", json={"n": 1}, headers=bearer(token))
    assert ran.status_code == 200
    _, later = provision(real, f"after-{uuid.uuid4().hex[:6]}")
    assert later.state == pb.JOB_STATE_COMPLETED


def test_a_stopped_server_says_what_keeps_running_and_stop_departments_stops_it(tmp_path: Path) -> None:
    plane = control_plane(tmp_path)
    plane.start()
    try:
        _, done = provision(plane, "lingerer")
        assert done.state == pb.JOB_STATE_COMPLETED
        assert plane.stop() == 0
        said = (tmp_path / "stdout.txt").read_text()
        assert "department services keep running, so their departments stay up: lingerer" in said
        assert "provisioning-server stop-departments" in said
        assert set(department_services(plane.state_dir)) == {"lingerer"}

        stopped = subprocess.run(
            [str(BIN / "provisioning-server"), "stop-departments"],
            env=plane.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "stopped 1 department services: lingerer"
        assert department_services(plane.state_dir) == {}

        # They start again with the control plane.
        plane.start()
        deadline = time.monotonic() + 20
        while "lingerer" not in department_services(plane.state_dir):
            assert time.monotonic() < deadline, "the department service did not come back"
            time.sleep(0.1)
    finally:
        plane.stop()
        stop_department_services(plane.state_dir)
