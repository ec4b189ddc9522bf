"""Where a department lives on the embedded default, and how to talk to what runs there.

Each department has one directory, `<state dir>/departments/<id>/`, shared by the steps:

    data.db            its database (database step)
    credentials.json   its client id and the SHA-256 of its secret (oauth step)
    container.json     the desired process and its port (container step)
    service.json       the running process, written by the department service itself
    service.log        the service's log
    workflows/*.json   deployed workflow definitions (workflows step)

Each step removes only its own files; the directory goes when it is empty. The gateway's
route and the department's secrets are in the job store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import ssl
from pathlib import Path
from typing import Any

import httpx

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.spec import check_department_id
from provisioner.steps.files import write_atomically


class DepartmentDirs:
    """The department directories under one root; ids are checked before becoming paths."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def path(self, department_id: str) -> Path:
        if check_department_id(department_id):
            raise StepError(f"not a department id: {department_id!r}")
        return self.root / department_id

    def ensure(self, department_id: str) -> Path:
        path = self.path(department_id)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def tidy(self, department_id: str) -> None:
        """Remove the department's directory if no step has anything left in it."""
        with contextlib.suppress(FileNotFoundError, OSError):
            self.path(department_id).rmdir()

    def ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not check_department_id(p.name))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when the file does not exist (or is half-made)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON, atomically."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True))


def sweep_interrupted_writes(*roots: Path) -> list[Path]:
    """Delete the temporary files of atomic writes a crash cut short (`.<name>.*.tmp`).

    Run at start, before anything writes: no write can be in flight then, and a
    half-written copy of a secret or a route must not outlive the crash that made it.
    """
    swept = []
    for root in roots:
        if root.exists():
            for path in root.rglob(".*.tmp"):
                path.unlink(missing_ok=True)
                swept.append(path)
    return swept


def remove(*paths: Path) -> bool:
    """Delete files that exist; True if any did."""
    found = False
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            found = True
    return found


#: Building a TLS context loads the system's CA bundle (~17 ms of the event loop): it is
#: built once and shared by every client.
_tls_context = functools.cache(httpx.create_ssl_context)


def pinned(cert_file: Path) -> ssl.SSLContext:
    """Trust exactly the certificate in `cert_file`: our own Envoy's, reached on loopback.

    Read at each call (one small file), so a renewed certificate is trusted at once; the
    pin is the check, so the name (127.0.0.1, not the certificate's) is not.
    """
    context = ssl.create_default_context(cafile=cert_file)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def http_client(timeout: float = 5.0, *, trust: Path | None = None) -> httpx.AsyncClient:
    """A client for the machine's own services; with `trust`, for our Envoy over TLS."""
    # Loopback only: a proxy configured for the machine must never see these calls.
    verify = pinned(trust) if trust else _tls_context()
    return httpx.AsyncClient(timeout=timeout, trust_env=False, verify=verify)


async def get(url: str, what: str, *, trust: Path | None = None, **kwargs: Any) -> httpx.Response:
    """GET `url`; connection trouble is a retryable step error naming `what` (never the
    address: callers with a viewer's token read these messages)."""
    async with http_client(trust=trust) as client:
        try:
            return await client.get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransientStepError(f"cannot reach {what}: {type(exc).__name__}") from exc
