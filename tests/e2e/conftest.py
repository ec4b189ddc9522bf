"""The e2e tier: the installed console scripts in subprocesses, as a user runs them.

`ControlPlane` is `provisioning-server` with its Envoy, on free loopback ports and a
state directory of its own; tests talk to it over REST (httpx), gRPC, grpcurl and
`provisionctl`, never through the server's internals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest
from authlib.integrations.requests_client import OAuth2Session

from tests.ports import free_port

BIN = Path(sys.executable).parent
SECRET = "e2e-secret-" + "x" * 40


def token(role: str = "admin", subject: str = "e2e-user", ttl: float = 600) -> str:
    now = int(time.time())
    claims = {"sub": subject, "roles": [role], "iat": now, "nbf": now, "exp": now + int(ttl)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class ControlPlane:
    """A running `provisioning-server` (gRPC + Envoy) and how to reach it."""

    state_dir: Path
    env: dict[str, str]
    grpc_target: str
    rest_url: str
    admin_url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    stdout: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    metrics_url: str = ""

    def start(self, *args: str, expect_ready: bool = True) -> None:
        out = self.state_dir.parent / "stdout.txt"
        with self.log.open("ab") as log, out.open("wb") as sink:
            self.process = subprocess.Popen(
                [str(BIN / "provisioning-server"), *args], env=self.env, stdout=sink, stderr=log
            )
        deadline = time.monotonic() + 40
        while expect_ready:
            self.stdout = out.read_text()
            if "control plane ready" in self.stdout:
                return
            assert self.process.poll() is None, f"server exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of the job store (SQLite in the state dir, or PROVISIONER_DATABASE_URL)."""
        url = self.env.get("PROVISIONER_DATABASE_URL", "")
        if url:
            with psycopg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1)) as conn:
                return [tuple(row) for row in conn.execute(sql).fetchall()]  # type: ignore[arg-type]
        with sqlite3.connect(f"file:{self.state_dir / 'provisioner.db'}?mode=ro", uri=True) as db:
            return [tuple(row) for row in db.execute(sql).fetchall()]

    def secrets(self) -> list[tuple[str, str]]:
        """The departments' sealed secrets in the job store, as (department, name): the
        vault's real world. (The platform's own token-signing keys are kept there too,
        under `_oauth`, which is no department: they are left out.)"""
        rows = self.query("SELECT department_id, name FROM department_secrets ORDER BY 1, 2")
        return [(str(d), str(n)) for d, n in rows if d != "_oauth"]

    def routes(self) -> set[str]:
        """The departments the job store says the gateway routes."""
        return {str(d) for (d,) in self.query("SELECT department_id FROM department_routes")}

    def http(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.rest_url,
            headers={"authorization": f"Bearer {token(role)}"},
            timeout=10,
            trust_env=False,
        )

    def run(
        self, *args: str, role: str = "admin", bearer: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`provisionctl` against this control plane, with `bearer` or a token for `role`."""
        env = {**self.env, "PROVISIONER_SERVER": self.grpc_target, "PROVISIONER_TOKEN": bearer or token(role)}
        return subprocess.run(
            [str(BIN / "provisionctl"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )


def access_token(plane: ControlPlane, client_id: str, secret: str, **params: str) -> str:
    """An access token for a department's client, got as any OAuth 2.0 client gets one:
    Authlib's client credentials grant at the platform's token endpoint, through Envoy."""
    with OAuth2Session(client_id, secret) as oauth:
        oauth.trust_env = False
        answer = oauth.fetch_token(
            f"{plane.rest_url}/oauth2/token", grant_type="client_credentials", timeout=10, **params
        )
    return str(answer["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def provisioned(api: httpx.Client, body: dict[str, object], patience: float = 60) -> dict[str, object]:
    """POST a provisioning over REST, then poll until its job ends; the job, as JSON."""
    job = api.post("/api/provision-department", json=body).json()
    deadline = time.monotonic() + patience
    while job["state"] not in ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = api.get(f"/api/provision-status/{job['jobId']}").json()
    return dict(job)


def control_plane(root: Path, **settings: str) -> ControlPlane:
    grpc_port, http_port, admin_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    state_dir = root / "var"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")},
        "PROVISIONER_STATE_DIR": str(state_dir),
        "PROVISIONER_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "PROVISIONER_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "PROVISIONER_ENVOY_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
        "PROVISIONER_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "PROVISIONER_JWT_SECRET": SECRET,
        # Tests inject faults, slow steps and let the server keep its key file; production
        # mode's refusals have their own test (test_lifecycle.py).
        "PROVISIONER_MODE": "development",
        "PROVISIONER_CLAIM_INTERVAL": "0.2",
        # Tests provision far more than a person would; the limit has its own test.
        "PROVISIONER_RATE_LIMIT_PROVISION": "1000/h",
        "PROVISIONER_RATE_LIMIT_DEPROVISION": "1000/h",
        **settings,
    }
    return ControlPlane(
        state_dir,
        env,
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{http_port}",
        f"http://127.0.0.1:{admin_port}",
        root / "server.log",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
    )


@contextlib.contextmanager
def started_plane(root: Path, **settings: str) -> Iterator[ControlPlane]:
    """A running control plane with `settings`. When the block ends without an error, the
    server must stop cleanly (status 0); in every case the department services it leaves
    running by design are stopped after it."""
    plane = control_plane(root, **settings)
    try:
        plane.start()
        yield plane
        assert plane.stop() == 0, plane.log.read_text()[-3000:]
    finally:
        if plane.process is not None:
            plane.stop()
        stop_department_services(plane.state_dir)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One control plane shared by a module's tests; steps slowed to watch them happen."""
    with started_plane(
        tmp_path_factory.mktemp("plane"),
        # The edge is under test here: marker steps, slowed down to watch them happen.
        PROVISIONER_STEPS="local",
        PROVISIONER_STEP_DELAY="0.15",
        PROVISIONER_CORS_ORIGINS="http://console.example",
        PROVISIONER_WATCH_HEARTBEAT="1",
    ) as running:
        yield running


def department_services(state_dir: Path) -> dict[str, int]:
    """The department service processes of a state dir, by department: the real world."""
    return dict(department_processes(state_dir))


def department_processes(state_dir: Path) -> list[tuple[str, int]]:
    """Every department service process of a state dir, duplicates included."""
    found = []
    marker = str(state_dir.absolute() / "departments").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and b"department_service" in command and any(marker in part for part in command):
            found.append((command[command.index(b"--department-id") + 1].decode(), int(proc.name)))
    return found


def stop_department_services(state_dir: Path) -> None:
    """Department services outlive the control plane by design; tests clean up after it."""
    for pid in department_services(state_dir).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
