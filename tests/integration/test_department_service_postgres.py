"""The department service on PostgreSQL: its rows land in its own schema, under its own role.

The control plane's PostgreSQL database step provisions the department; the real
`python -m department_service` then runs with the `DATABASE_URL` that step gives it (as
the container step passes it) and is driven over HTTP. What it wrote is read back as the
administrator, an auditor's view, and through the step's own `execution_status`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from provisioner.core.spec import DepartmentSpec
from provisioner.steps.base import StepContext
from provisioner.steps.tenant_postgres import PostgresTenantDatabase
from tests.department_service.harness import ISSUER, DepartmentDir, RunningService, bearer, mint
from tests.e2e.conftest import free_port
from tests.smtp import MailServer, mail_server

__all__ = ["mail_server"]

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
CLIENT = "hr.client"


def ctx(department_id: str) -> StepContext:
    return StepContext(job_id="job-1", spec=DepartmentSpec(department_id, "Department"), attempt=1)


class Passwords(dict[str, str]):
    """A `password_for` that remembers, and a `forget_password` that is watched."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten: list[str] = []

    async def password_for(self, department_id: str) -> str:
        return self.setdefault(department_id, secrets.token_urlsafe(32))

    async def forget(self, department_id: str) -> None:
        self.forgotten.append(department_id)
        self.pop(department_id, None)


@pytest.fixture
def passwords() -> Passwords:
    return Passwords()


@pytest.fixture
async def step(admin_url: str, passwords: Passwords) -> AsyncIterator[PostgresTenantDatabase]:
    adapter = PostgresTenantDatabase(admin_url, passwords.password_for, forget_password=passwords.forget)
    try:
        yield adapter
    finally:
        await adapter.close()


async def service_on(
    step: PostgresTenantDatabase, root: Path, department_id: str, **env: str
) -> RunningService:
    """The real service for `department_id`, on the database step's URL; no data.db at all."""
    directory = DepartmentDir(root / department_id, department_id)
    directory.write_credentials()
    directory.deploy("database", {"type": "database"})
    directory.deploy("email", {"type": "email", "to": "team@example.com", "subject": "Hello {name}"})
    return RunningService(
        directory,
        root / f"{department_id}.log",
        env={"DATABASE_URL": await step.department_url(department_id), **env},
    )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[RunningService]]:
    started: list[RunningService] = []
    yield started
    for service in started:
        service.stop()
        service.close()


async def test_the_service_writes_to_its_own_schema_as_its_own_role(
    step: PostgresTenantDatabase,
    admin_url: str,
    tmp_path: Path,
    running: list[RunningService],
    mail_server: MailServer,
) -> None:
    await step.apply(ctx("hr"))
    service = await service_on(step, tmp_path, "hr", SMTP_URL=mail_server.url)
    running.append(service)

    health = service.anonymous.get("/healthz").json()
    assert health["status"] == "SERVING" and health["database"] == "ok"
    stored = service.post("database", {"employee": "Ada"})
    mailed = service.post("email", {"name": "Grace"})
    assert stored.status_code == mailed.status_code == 200, stored.text + mailed.text

    admin = await asyncpg.connect(admin_url)
    try:
        rows = await admin.fetch(
            "SELECT workflow, status, department_id, current_user FROM dept_hr.workflow_executions"
        )
        record = await admin.fetchrow("SELECT data, department_id FROM dept_hr.records")
        outbox = await admin.fetchrow("SELECT recipient, subject, status, reply FROM dept_hr.outbox")
        sessions = await admin.fetch(
            "SELECT usename FROM pg_stat_activity WHERE application_name = 'department_service:hr'"
        )
    finally:
        await admin.close()
    assert sorted((r["workflow"], r["status"], r["department_id"]) for r in rows) == [
        ("database", "succeeded", "hr"),
        ("email", "succeeded", "hr"),
    ]
    assert record["department_id"] == "hr" and '"employee": "Ada"' in record["data"]
    assert tuple(outbox) == ("team@example.com", "Hello Grace", "sent", "250 2.0.0 Ok: queued as Q0001")
    assert [m.message["Subject"] for m in mail_server.received] == ["Hello Grace"]
    assert all(s["usename"] == "dept_hr" for s in sessions)  # never as the administrator

    listed = service.client.get("/executions").json()["executions"]
    assert [e["workflow"] for e in listed] == ["email", "database"]  # newest first
    assert listed[1]["request"] == {"employee": "Ada"}
    assert listed[0]["received_at"].endswith("Z") and len(listed[0]["received_at"]) == 27
    assert await step.execution_status("hr", str(stored.json()["execution_id"])) == "succeeded"
    assert await step.execution_status("hr", "no-such-execution") is None


async def test_files_are_kept_as_bytes_in_the_departments_schema(
    step: PostgresTenantDatabase, tmp_path: Path, running: list[RunningService]
) -> None:
    await step.apply(ctx("hr"))
    service = await service_on(step, tmp_path, "hr")
    running.append(service)
    service.directory.deploy("google_drive", {"type": "google_drive", "folder": "Docs"})
    data = bytes(range(256)) * 100

    kept = service.post(
        "google_drive", {"name": "blob.bin", "contentBase64": base64.b64encode(data).decode()}
    )

    assert kept.status_code == 200, kept.text
    file_id = kept.json()["result"]["file_id"]
    assert service.client.get(f"/files/{file_id}").content == data
    [listed] = service.client.get("/files").json()["files"]
    assert (listed["name"], listed["size"], listed["folder"]) == ("blob.bin", len(data), "Docs")
    assert listed["created_at"].endswith("Z")


async def test_a_department_sees_only_its_own_executions(
    step: PostgresTenantDatabase, tmp_path: Path, running: list[RunningService]
) -> None:
    await step.apply(ctx("hr"))
    await step.apply(ctx("ops"))
    hr, ops = await service_on(step, tmp_path, "hr"), await service_on(step, tmp_path, "ops")
    running += [hr, ops]
    executed = hr.post("database", {"salary": 1}).json()["execution_id"]

    listed = ops.client.get("/executions")
    assert listed.json()["executions"] == [], listed.text
    assert [e["id"] for e in hr.client.get("/executions").json()["executions"]] == [executed]
    assert await step.execution_status("ops", str(executed)) is None


async def test_without_its_database_the_service_says_so_and_the_password_is_forgotten(
    step: PostgresTenantDatabase, passwords: Passwords, tmp_path: Path, running: list[RunningService]
) -> None:
    await step.apply(ctx("hr"))
    service = await service_on(step, tmp_path, "hr")
    running.append(service)
    assert service.anonymous.get("/healthz").status_code == 200
    password = passwords["hr"]

    await step.compensate(ctx("hr"))

    assert passwords.forgotten == ["hr"]
    health = service.anonymous.get("/healthz")
    assert health.status_code == 503
    assert health.json()["database"].startswith("the department database cannot be reached")
    failed = service.post("database", {"a": 1})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "database_unavailable"
    assert password not in service.logs()


def test_a_database_url_that_is_not_postgres_is_refused(tmp_path: Path) -> None:
    directory = DepartmentDir(tmp_path / "hr")
    done = subprocess.run(
        [sys.executable, "-m", "department_service", "--department-id", "hr", "--dir", str(directory.root)],
        env={**os.environ, "DATABASE_URL": "mysql://root:hunter2@db/hr"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("department_service: DATABASE_URL must start with postgresql://")
    assert "hunter2" not in done.stderr


def run_from_environment(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m department_service` as a container platform starts it: no --dir, no arguments."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "department_service", "--host", "127.0.0.1"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


async def test_configured_by_its_environment_it_serves_its_data_to_its_client_only(
    step: PostgresTenantDatabase, tmp_path: Path
) -> None:
    await step.apply(ctx("hr"))
    await asyncio.to_thread(serve_from_environment, await step.department_url("hr"), tmp_path)


def serve_from_environment(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    keys = DepartmentDir(tmp_path / "hr").jwks_file  # served over HTTP, as the platform does
    jwks = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(keys.parent))
    )
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    process = run_from_environment(
        {
            "DEPARTMENT_ID": "hr",
            "PORT": str(port),
            "DATABASE_URL": database_url,
            "CLIENT_ID": CLIENT,
            "OAUTH_ISSUER": ISSUER,
            "OAUTH_JWKS_URL": f"http://127.0.0.1:{jwks.server_port}/{keys.name}",
        },
        tmp_path / "service.log",
    )
    token = mint(client_id=CLIENT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as client:
            health = wait_for_health(client, process)
            assert health == {
                "status": "SERVING",
                "department_id": "hr",
                "database": "ok",
                "credentials": "ok",
                "workflows": {},
            }
            assert client.get("/executions", headers=bearer(token)).json()["executions"] == []
            assert client.get("/executions", headers=bearer(mint())).status_code == 401  # another client's
            # Its workflows run on the workflow platform, not here.
            assert client.post("/workflows/database", json={}, headers=bearer(token)).status_code == 404
    finally:
        process.terminate()
        jwks.shutdown()
        jwks.server_close()
        assert process.wait(10) == 0
    assert token.rpartition(".")[0] not in (tmp_path / "service.log").read_text()
    assert not list(tmp_path.glob("**/service.json"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEPARTMENT_ID": "hr"}, "without --dir, DATABASE_URL must name the department's PostgreSQL"),
        ({"DEPARTMENT_ID": "hr", "DATABASE_URL": "postgresql://dept_hr@db/x"}, "CLIENT_ID must be set"),
        (
            {"DEPARTMENT_ID": "hr", "DATABASE_URL": "postgresql://dept_hr@db/x", "CLIENT_ID": "hr.c",
             "OAUTH_ISSUER": "ftp://the-secret-itself"},
            "OAUTH_ISSUER must be the authorization server's",
        ),
        (
            {"DEPARTMENT_ID": "hr", "DATABASE_URL": "postgresql://dept_hr@db/x", "CLIENT_ID": "hr.c",
             "OAUTH_ISSUER": "https://platform.test"},
            "set one of OAUTH_JWKS_FILE and OAUTH_JWKS_URL",
        ),
        ({}, "--department-id (or DEPARTMENT_ID) is required"),
        ({"DEPARTMENT_ID": "hr", "PORT": "http"}, "PORT='http' is not a port number"),
    ],
)  # fmt: skip
def test_an_incomplete_environment_exits_2_naming_what_is_missing(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEPARTMENT_ID", "DATABASE_URL", "PORT")}
    done = subprocess.run(
        [sys.executable, "-m", "department_service"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert "the-secret-itself" not in done.stderr


def wait_for_health(client: httpx.Client, process: subprocess.Popen[bytes]) -> object:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited"
        try:
            return client.get("/healthz").json()
        except httpx.TransportError:
            time.sleep(0.02)
    raise AssertionError("the service never answered /healthz")
