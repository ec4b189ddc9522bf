"""The production profile end to end: PostgreSQL, Railway, n8n, an Envoy route over TLS.

The control plane runs with every production adapter selected by its settings. The
tenant database is a real PostgreSQL; Railway's control API is the local fake, whose
deployments really run the department service (configured only by the variables the
container step set) behind a TLS front with a certificate from a throwaway authority;
n8n's API is the in-memory fake behind HTTP (the real n8n has its own opt-in tests). The
department must answer through Envoy, over verified TLS, with its own client, and leave
nothing anywhere once deprovisioned.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from provisioner.steps.envoy_config import SYSTEM_CA_FILE
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import ControlPlane, access_token, bearer, started_plane
from tests.e2e.platform import LocalPlatform
from tests.e2e.test_departments import METADATA, deprovision, provision, through_envoy, traces
from tests.e2e.test_tenant_database import in_postgres
from tests.integration.fake_n8n import KEY, FakeN8n, serving
from tests.integration.fake_railway import FakeRailway

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKEN, PROJECT, ENVIRONMENT = "railway-test-token-0123456789", "project-1", "environment-1"


def text_of(path: Path) -> str:
    """A file's bytes as text; nothing for a directory, a socket, or a temporary file renamed meanwhile."""
    try:
        return path.read_bytes().decode("latin-1") if not path.is_socket() else ""
    except (IsADirectoryError, FileNotFoundError):
        return ""


@dataclass(frozen=True)
class Production:
    plane: ControlPlane
    railway: FakeRailway
    n8n: FakeN8n
    platform: LocalPlatform


@pytest.fixture
def production(admin_url: str, tmp_path: Path) -> Iterator[Production]:
    with running_production(admin_url, tmp_path) as running:
        yield running


@contextmanager
def running_production(admin_url: str, tmp_path: Path, *, trusted: bool = True) -> Iterator[Production]:
    """The control plane on every production adapter; with `trusted` False, Envoy is told
    to trust the system's authorities only, which never signed the platform's certificate."""
    with ExitStack() as stack:
        platform = LocalPlatform(tmp_path / "platform")
        stack.callback(platform.close)
        railway = stack.enter_context(FakeRailway(TOKEN, PROJECT, ENVIRONMENT, runtime=platform))
        n8n = FakeN8n()
        n8n_url = stack.enter_context(serving(n8n))
        (tmp_path / "plane").mkdir()
        plane = stack.enter_context(
            started_plane(
                tmp_path / "plane",
                PROVISIONER_TENANT_DATABASE_URL=admin_url,
                PROVISIONER_RAILWAY_TOKEN=TOKEN,
                PROVISIONER_RAILWAY_PROJECT_ID=PROJECT,
                PROVISIONER_RAILWAY_ENVIRONMENT_ID=ENVIRONMENT,
                PROVISIONER_RAILWAY_IMAGE="ghcr.io/example/department-service:test",
                PROVISIONER_RAILWAY_ENDPOINT=railway.url,
                PROVISIONER_N8N_URL=n8n_url,
                PROVISIONER_N8N_API_KEY=KEY,
                PROVISIONER_UPSTREAM_CA_FILE=str(platform.ca_file if trusted else SYSTEM_CA_FILE),
                PROVISIONER_MAX_RETRIES="0",
            )
        )
        yield Production(plane, railway, n8n, platform)


def test_a_department_on_the_production_adapters_answers_over_tls_and_leaves_nothing(
    production: Production, admin_url: str
) -> None:
    plane, railway, n8n, platform = production.plane, production.railway, production.n8n, production.platform
    dept = f"ops-{uuid.uuid4().hex[:6]}"

    created, job = provision(plane, dept)
    assert job.state == pb.JOB_STATE_COMPLETED, job.error
    client_id, secret = created.issued_client.client_id, created.issued_client.client_secret

    # Railway runs the service, told who it is, where its data is and whom to let in.
    service = railway.service_named(f"dept-{dept}")
    assert service is not None and platform.running() == [f"dept-{dept}"]
    variables = service.variables[ENVIRONMENT]
    assert sorted(variables) == [
        "CLIENT_ID",
        "DATABASE_URL",
        "DEPARTMENT_ID",
        "OAUTH_AUDIENCE",
        "OAUTH_ISSUER",
        "OAUTH_JWKS_URL",
    ]
    assert variables["DEPARTMENT_ID"] == dept and variables["CLIENT_ID"] == client_id
    assert variables["OAUTH_JWKS_URL"] == f"{plane.rest_url}/.well-known/jwks.json"
    assert variables["OAUTH_AUDIENCE"] == f"{plane.rest_url}/departments/{dept}/"
    assert variables["DATABASE_URL"].startswith(f"postgresql://dept_{dept.replace('-', '_')}:")
    assert secret not in str(railway.calls) and secret not in plane.log.read_text()
    # Nor are the platforms' own credentials anywhere the control plane writes.
    written = plane.log.read_text() + "".join(map(text_of, plane.state_dir.rglob("*")))
    assert TOKEN not in written and KEY not in written
    assert variables["DATABASE_URL"].split("@")[0].rsplit(":", 1)[1] not in written  # the role's password

    # Through Envoy, which reaches the service's domain over TLS it verified.
    health = through_envoy(plane, dept, "healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok", health.text
    assert platform.fronts[f"dept-{dept}"].handshakes > 0
    # It checks its callers' tokens against the key set it fetches from the platform.
    token = access_token(plane, client_id, secret)
    assert through_envoy(plane, dept, "executions", headers=bearer(token)).status_code == 200
    assert through_envoy(plane, dept, "executions", headers=bearer(token[:-2])).status_code == 401

    # Its workflows are active on n8n, tagged with the department.
    workflows = n8n.of(dept)
    assert sorted(w["name"] for w in workflows) == [
        f"dept-{dept}-{k}" for k in ("database", "email", "google_drive")
    ]
    assert all(w["active"] for w in workflows)
    assert "schema" in asyncio.run(in_postgres(admin_url, dept))

    with grpc.insecure_channel(plane.grpc_target) as channel:
        report = pb_grpc.ProvisioningServiceStub(channel).GetDepartmentHealth(
            pb.GetDepartmentHealthRequest(department_id=dept), metadata=METADATA, timeout=30
        )
    assert report.healthy, report
    conditions = {c.step: c for c in report.conditions}
    assert conditions["container"].reason == "RUNNING" and conditions["database"].reason == "READY"
    assert conditions["validation"].message == "answers its own client through the gateway"
    # The client reached the service as its variables, not as a file on this machine.
    assert not (plane.state_dir / "departments" / dept / "credentials.json").exists()

    teardown = deprovision(plane, dept)
    assert teardown.state == pb.JOB_STATE_COMPLETED, teardown.error
    assert railway.service_named(f"dept-{dept}") is None and platform.running() == []
    assert n8n.of(dept) == [] and f"department:{dept}" not in n8n.tags.values()
    assert asyncio.run(in_postgres(admin_url, dept)) == {}
    assert traces(plane, dept) == {}  # no directory, vault entry, route, or answer through Envoy


def test_a_service_that_never_gets_healthy_rolls_the_whole_department_back(
    production: Production, admin_url: str
) -> None:
    plane, railway, n8n, platform = production.plane, production.railway, production.n8n, production.platform
    # Railway reports the deployment FAILED: the container step fails, and all is undone.
    railway.deploy_outcome = "FAILED"
    dept = f"bad-{uuid.uuid4().hex[:6]}"

    _, job = provision(plane, dept)

    assert job.state == pb.JOB_STATE_FAILED
    assert "FAILED" in job.error.message
    assert railway.service_named(f"dept-{dept}") is None and platform.running() == []
    assert n8n.of(dept) == []
    assert asyncio.run(in_postgres(admin_url, dept)) == {}
    assert traces(plane, dept) == {}


def test_a_domain_whose_certificate_envoy_does_not_trust_is_never_routed(
    admin_url: str, tmp_path: Path
) -> None:
    with running_production(admin_url, tmp_path, trusted=False) as production:
        dept = f"tls-{uuid.uuid4().hex[:6]}"
        _, job = provision(production.plane, dept)

        assert job.state == pb.JOB_STATE_FAILED
        assert job.error.step == "gateway" and "did not answer through Envoy" in job.error.message
        assert production.platform.running() == []
        assert traces(production.plane, dept) == {}


def test_workflows_on_n8n_beside_the_embedded_steps(tmp_path: Path) -> None:
    """`PROVISIONER_N8N_*` alone: services and data stay on this machine, workflows go to n8n."""
    n8n = FakeN8n()
    with (
        serving(n8n) as n8n_url,
        started_plane(tmp_path, PROVISIONER_N8N_URL=n8n_url, PROVISIONER_N8N_API_KEY=KEY) as plane,
    ):
        dept = f"mkt-{uuid.uuid4().hex[:6]}"
        created, job = provision(plane, dept)
        assert job.state == pb.JOB_STATE_COMPLETED, job.error
        validation = next(s for s in job.steps if s.name == "validation")
        assert validation.resources["workflows"] == "active in n8n: database, email, google_drive"
        assert all(w["active"] for w in n8n.of(dept)) and len(n8n.of(dept)) == 3
        # The validation step ran one workflow on n8n.
        assert [path for path, _ in n8n.executions] == [f"{dept}/database"]
        # The service serves its data, and no workflow of its own.
        token = access_token(plane, created.issued_client.client_id, created.issued_client.client_secret)
        assert through_envoy(plane, dept, "workflows", headers=bearer(token)).json()["workflows"] == []
        assert (plane.state_dir / "departments" / dept / "data.db").exists()

        teardown = deprovision(plane, dept)
        assert teardown.state == pb.JOB_STATE_COMPLETED, teardown.error
        assert n8n.of(dept) == [] and traces(plane, dept) == {}
