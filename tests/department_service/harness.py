"""The department service as the control plane runs it: a real `python -m department_service`
process over a department directory written here, reached over real HTTP.

`DepartmentDir` writes the inputs the control plane owns (database, credentials, workflow
files); `RunningService` starts the process, waits for its service.json and stops it.
"""

from __future__ import annotations

import hashlib
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

from department_service import schema

DEPARTMENT = "hr"
CLIENT_ID = "hr-client-7f3a"
SECRET = "s3cr3t-Zq9wX2vB7nLk4pT1"  # the logs must never show it
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

    def prepare(self) -> DepartmentDir:
        schema.create(self.db_path)
        self.write_credentials()
        for name, action in WORKFLOWS.items():
            self.deploy(name, action)
        return self

    def write_credentials(
        self, *, client_id: str = CLIENT_ID, secret: str = SECRET, revoked: bool = False
    ) -> None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        self._atomic_write(
            self.root / "credentials.json",
            {"client_id": client_id, "secret_sha256": digest, "revoked": revoked},
        )

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
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.info = self._wait_for_service_file()
        self.base_url = f"http://{self.info['host']}:{self.info['port']}"
        self.client = httpx.Client(
            base_url=self.base_url, trust_env=False, timeout=10, auth=(CLIENT_ID, SECRET)
        )
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

    def wait_for_threads(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the process runs `count` threads (main, accept loop, one per request: Linux only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
            threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
            if threads >= count:
                return
            time.sleep(0.005)
        raise AssertionError(f"the service never ran {count} threads")

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
