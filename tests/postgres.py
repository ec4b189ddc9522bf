"""A throwaway PostgreSQL server for the session, shared by the integration and e2e tiers.

It is started from the local PostgreSQL binaries; each test gets a fresh empty database
on it. Without the binaries the PostgreSQL tests are skipped, unless
PROVISIONER_REQUIRE_POSTGRES=1 (CI), where a silent skip would hide that the suite never
touched the production backend.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.ports import free_port

_REQUIRE_ENV = "PROVISIONER_REQUIRE_POSTGRES"
_SUPERUSER = "postgres"
_START_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class PostgresServer:
    host: str
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{_SUPERUSER}@{self.host}:{self.port}/{database}"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: pg_config's answer first, then the newest
    Debian-style /usr/lib/postgresql/<version>/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root; everyone else runs them as themselves.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


#: What the tests' server trades for speed: nothing here must survive a machine crash.
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


@contextlib.contextmanager
def throwaway_postgres(bindir: Path, options: str = FAST) -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own on a private port, removed afterwards (the benchmarks
    use it too, with durable `options`)."""
    root = Path(tempfile.mkdtemp(prefix="provisioner-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    data = root / "data"
    as_postgres = _as_postgres_user()
    started = False
    try:
        _run(
            [
                *as_postgres,
                str(bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                _SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            "initdb",
        )
        port = 0
        # Another process may take the port between our probe and the server's bind; retry.
        for attempt in range(_START_ATTEMPTS):
            port = free_port()
            settings = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                f"-c max_connections=200 {options}"
            )
            try:
                _run(
                    [
                        *as_postgres,
                        str(bindir / "pg_ctl"),
                        "start",
                        "--pgdata",
                        str(data),
                        "--wait",
                        "--timeout",
                        "60",
                        "--log",
                        str(root / "server.log"),
                        "-o",
                        settings,
                    ],
                    "pg_ctl start",
                )
            except RuntimeError as exc:
                log = root / "server.log"
                detail = log.read_text(errors="replace") if log.exists() else ""
                if attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(f"{exc}\nserver log:\n{detail}") from None
                continue
            started = True
            break
        yield PostgresServer("127.0.0.1", port)
    finally:
        if started:
            subprocess.run(
                [*as_postgres, str(bindir / "pg_ctl"), "stop", "--pgdata", str(data), "-m", "immediate"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own for the whole session, on a private port."""
    bindir = find_bindir()
    if bindir is None:
        message = (
            "PostgreSQL binaries (initdb, pg_ctl) not found via `pg_config --bindir` "
            "or /usr/lib/postgresql/*/bin; install PostgreSQL to run the postgres tests"
        )
        if os.environ.get(_REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({_REQUIRE_ENV}=1 demands them)", pytrace=False)
        pytest.skip(message)
    with throwaway_postgres(bindir) as server:
        yield server


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(
        host=postgres_server.host, port=postgres_server.port, user=_SUPERUSER, database="postgres"
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.url(name)
    admin = await asyncpg.connect(
        host=postgres_server.host, port=postgres_server.port, user=_SUPERUSER, database="postgres"
    )
    try:
        # FORCE: a test that failed half-way may have left a connection open.
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def admin_url(postgres_url: str) -> str:
    """The test database as a plain `postgresql://` URL, as an operator would give it."""
    return postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
