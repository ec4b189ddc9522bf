"""The department service as the control plane runs it: a real `python -m department_service`
process over a department directory written here, reached over real HTTP.

`DepartmentDir` writes the inputs the control plane owns (database, credentials, workflow
files, the published signing keys); `RunningService` starts the process, waits for its
service.json and stops it. `mint` makes access tokens as the platform's token endpoint
does, signed with this module's key (or another, to be refused).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from department_service import schema

DEPARTMENT = "hr"
CLIENT_ID = "hr.0a1b2c3d4e5f6789"
ISSUER = "http://platform.test"
KEY = ec.generate_private_key(ec.SECP256R1())
KID = "test-key-1"
SCOPES = "workflows:run executions:read files:read"


def mint(
    *,
    scope: str = SCOPES,
    client_id: str = CLIENT_ID,
    department_id: str = DEPARTMENT,
    key: ec.EllipticCurvePrivateKey = KEY,
    kid: str = KID,
    typ: str = "at+jwt",
    **claims: Any,
) -> str:
    """An access token as the platform issues it (RFC 9068), with any claim overridden."""
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "sub": client_id,
        "client_id": client_id,
        "aud": f"{ISSUER}/departments/{department_id}/",
        "scope": scope,
        "iat": now,
        "exp": now + 300,
        "jti": f"t{time.monotonic_ns()}",
        **claims,
    }
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid, "typ": typ})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


WORKFLOWS: dict[str, dict[str, Any]] = {
    "email": {"type": "email", "to": "hr-team@example.com", "subject": "New hire: {name} ({employee_id})"},
    "google_drive": {"type": "google_drive", "folder": "Onboarding"},
    "database": {"type": "database"},
}


class DepartmentDir:
    """A department directory as the control plane's steps leave it."""

    def __init__(self, root: Path, department_id: str = DEPARTMENT) -> None:
        self.root = root
        self.department_id = department_id
        self.db_path = root / "data.db"
        (root / "workflows").mkdir(parents=True, exist_ok=True)
        if not self.jwks_file.exists():
            self.publish_keys(KEY)

    @property
    def jwks_file(self) -> Path:
        return self.root.parent / "jwks.json"

    @property
    def environment(self) -> dict[str, str]:
        """What the control plane gives a local service: its issuer and its keys."""
        return {"OAUTH_ISSUER": ISSUER, "OAUTH_JWKS_FILE": str(self.jwks_file)}

    def prepare(self) -> DepartmentDir:
        schema.create(self.db_path)
        self.write_credentials()
        for name, action in WORKFLOWS.items():
            self.deploy(name, action)
        return self

    def write_credentials(self, *, client_id: str = CLIENT_ID, revoked: bool = False) -> None:
        self._atomic_write(self.root / "credentials.json", {"client_id": client_id, "revoked": revoked})

    def publish_keys(self, *keys: ec.EllipticCurvePrivateKey) -> None:
        """The key set the control plane publishes: `KEY` is `KID`, others get ids of their own."""
        published = [
            {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": KID if key is KEY else f"k{i}"}
            for i, key in enumerate(keys)
        ]
        self._atomic_write(self.jwks_file, {"keys": published})

    def deploy(self, name: str, action: dict[str, Any]) -> None:
        definition = {
            "id": f"{self.department_id}-{name}",
            "name": name,
            "department_id": self.department_id,
            "version": 1,
            "action": action,
        }
        self._atomic_write(self.root / "workflows" / f"{name}.json", definition)

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Read the department database directly, as an auditor would."""
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    @staticmethod
    def _atomic_write(path: Path, data: object) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


class RunningService:
    """One service process; `client` is an httpx client with the department's credentials."""

    def __init__(
        self, directory: DepartmentDir, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "department_service", "--department-id", directory.department_id,
             "--dir", str(directory.root)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, **directory.environment, **(env or {})},
        )  # fmt: skip
        self.info = self._wait_for_service_file()
        self.base_url = f"http://{self.info['host']}:{self.info['port']}"
        token = mint(department_id=directory.department_id)
        self.client = httpx.Client(base_url=self.base_url, trust_env=False, timeout=10, headers=bearer(token))
        self.anonymous = httpx.Client(base_url=self.base_url, trust_env=False, timeout=10)

    def _wait_for_service_file(self, timeout: float = 5.0) -> dict[str, Any]:
        path = self.directory.root / "service.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                info: dict[str, Any] = json.loads(path.read_text())
                if info["pid"] == self.process.pid:
                    return info
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited with {self.process.returncode}: {self.logs()}")
            time.sleep(0.005)
        raise AssertionError(f"no service.json after {timeout} s: {self.logs()}")

    def post(self, workflow: str, body: object = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.client.post(f"/workflows/{workflow}", **kwargs)

    def wait_for_threads(self, count: int, timeout: float = 5.0, *, at_most: bool = False) -> None:
        """Wait until the process runs `count` threads or more (`at_most`: or fewer): main,
        the accept loop, one per request, and for a moment after start the warm-up thread
        that imports the token and mail libraries (Linux only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
            threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
            if threads <= count if at_most else threads >= count:
                return
            time.sleep(0.005)
        raise AssertionError(f"the service never ran {'at most' if at_most else 'at least'} {count} threads")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal the process and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def close(self) -> None:
        self.client.close()
        self.anonymous.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs().splitlines() if line.strip()]
