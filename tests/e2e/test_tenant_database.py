"""`PROVISIONER_TENANT_DATABASE_URL`: departments on a shared PostgreSQL, end to end.

The control plane runs with the PostgreSQL database step in place of the embedded SQLite
file; everything else is the embedded default. A provisioned department's service then
keeps its data in its own schema, logged in as its own role, and deprovisioning leaves no
schema, role or password behind. Checked in PostgreSQL itself, as its administrator.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import access_token, bearer, department_services, started_plane
from tests.e2e.test_departments import METADATA, deprovision, provision, through_envoy, traces

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def in_postgres(admin_url: str, department_id: str) -> dict[str, object]:
    """What PostgreSQL holds of the department: its schema, role and execution rows."""
    name = "dept_" + department_id.replace("-", "_")
    admin = await asyncpg.connect(admin_url)
    try:
        found: dict[str, object] = {}
        if await admin.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", name):
            found["schema"] = name
            found["executions"] = [
                tuple(row)
                for row in await admin.fetch(
                    f"SELECT workflow, status, department_id FROM {name}.workflow_executions"
                    " ORDER BY received_at"
                )
            ]
        if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
            found["role"] = name
        return found
    finally:
        await admin.close()


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_a_department_on_postgres_keeps_its_data_in_its_schema_and_leaves_nothing(
    admin_url: str, tmp_path: Path
) -> None:
    doomed = f"bad-{uuid.uuid4().hex[:6]}"
    with started_plane(
        tmp_path,
        PROVISIONER_TENANT_DATABASE_URL=admin_url,
        # Aimed at one department: its gateway step fails after its database was made.
        PROVISIONER_FAULT_INJECTION=f"gateway=fail@{doomed}",
    ) as plane:
        dept = f"fin-{uuid.uuid4().hex[:6]}"
        created, job = provision(plane, dept)
        assert job.state == pb.JOB_STATE_COMPLETED, job.error
        token = access_token(plane, created.issued_client.client_id, created.issued_client.client_secret)
        assert not (plane.state_dir / "departments" / dept / "data.db").exists()

        ran = through_envoy(
            plane, dept, "workflows/database", method="POST", json={"n": 1}, headers=bearer(token)
        )
        assert ran.status_code == 200, ran.text
        held = await in_postgres(admin_url, dept)
        # The validation step's smoke test, then ours: rows of this department only.
        assert held["executions"] == [("database", "succeeded", dept)] * 2

        # The service got its own database URL, and none of the control plane's settings.
        environment = environment_of(department_services(plane.state_dir)[dept])
        assert environment["DATABASE_URL"].startswith(f"postgresql://{held['role']}:")
        assert [k for k in environment if k.startswith("PROVISIONER_")] == []
        password = environment["DATABASE_URL"].split(":", 2)[2].split("@")[0]
        assert password not in plane.log.read_text()

        with grpc.insecure_channel(plane.grpc_target) as channel:
            report = pb_grpc.ProvisioningServiceStub(channel).GetDepartmentHealth(
                pb.GetDepartmentHealthRequest(department_id=dept), metadata=METADATA, timeout=10
            )
        assert report.healthy, report
        database = next(c for c in report.conditions if c.step == "database")
        assert database.reason == "READY" and "row-level security" in database.message

        teardown = deprovision(plane, dept)
        assert teardown.state == pb.JOB_STATE_COMPLETED, teardown.error
        assert await in_postgres(admin_url, dept) == {}
        assert traces(plane, dept) == {}  # no directory, vault entry, process or route

        # A failure after the database step rolls the schema, role and password back too.
        _, failed = provision(plane, doomed)
        assert failed.state == pb.JOB_STATE_FAILED and failed.error.step == "gateway"
        assert "database" in failed.cleanup.compensated
        assert await in_postgres(admin_url, doomed) == {}
        assert traces(plane, doomed) == {}
