"""The container step on the embedded default: a department service process per department.

`apply` records the desired process (`container.json`: its port, chosen once and kept,
so Envoy's route stays valid across restarts) and launches `python -m department_service`
in its own session, so it outlives a control plane that crashes. It then waits for the
service's own `service.json` and a healthy `/healthz`. A process that is already running
for the department is adopted, not launched twice.

`Supervisor` keeps the desired processes running: on start it adopts what is alive and
relaunches what died, and then checks again every few seconds. Compensation removes the
desired state first (so the supervisor stops caring), then stops the process and removes
its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.children import child_environment
from provisioner.steps.departments import DepartmentDirs, get, read_json, remove, write_json
from provisioner.steps.envoy_config import Upstream

log = logging.getLogger(__name__)

CONTAINER_FILE = "container.json"
SERVICE_FILE = "service.json"
LOG_FILE = "service.log"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0


#: Department services listen below Linux's ephemeral range (32768-60999 by default), so
#: no outgoing connection of the machine can take a kept port while its service is down.
PORTS = range(20000, 30000)


def free_port(host: str) -> int:
    for port in random.sample(PORTS, 200):
        if _port_free(host, port):
            return port
    raise TransientStepError(f"no free port for a department service in {PORTS.start}-{PORTS.stop - 1}")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a department's service is wanted: `container.json`, kept across restarts."""

    host: str
    port: int

    @classmethod
    def read(cls, directory: Path) -> Placement | None:
        data = read_json(directory / CONTAINER_FILE)
        return None if data is None else cls(str(data["host"]), int(data["port"]))

    def write(self, directory: Path) -> None:
        write_json(directory / CONTAINER_FILE, {"host": self.host, "port": self.port, "desired": "running"})

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the service binds: connections in TIME_WAIT do not make a port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _reap(pid: int) -> int | None:
    """The exit status of `pid` if it is our child and has ended (collecting it), else None.

    Services this process started are its children until they end; one that ends must be
    collected, or it lingers as a zombie. Services adopted after a restart are not ours:
    init collects those.
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def alive(pid: int, directory: Path) -> bool:
    """Whether `pid` is the department service of `directory` (not a reused pid)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    if not command:
        # Still exiting: its memory is gone, its sockets may not be yet.
        return True
    parts = command.split(b"\0")
    return b"department_service" in parts and str(directory).encode() in parts


class LocalProcessContainer:
    name = StepName.CONTAINER

    def __init__(
        self,
        dirs: DepartmentDirs,
        *,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        environment: Callable[[str], Awaitable[Mapping[str, str]]] | None = None,
    ) -> None:
        self._dirs = dirs
        #: Extra environment for a department's service (its `DATABASE_URL` on PostgreSQL);
        #: the environment, not the command line, because it may hold a password.
        self._environment = environment
        self._host = host
        self._python = python
        #: Called after a service had to move to another port, so routes can follow it.
        self.on_moved: Callable[[], Awaitable[None]] | None = None
        # The step and the supervisor never act on one department at the same time.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        async with self._locks[ctx.department_id]:
            return await settle(self._ensure_running(ctx.department_id))

    async def _ensure_running(self, department_id: str) -> dict[str, str]:
        directory = self._dirs.ensure(department_id)
        desired = Placement.read(directory)
        if desired is None:
            desired = Placement(self._host, free_port(self._host))
            desired.write(directory)
        running = read_json(directory / SERVICE_FILE)
        if running is not None and alive(int(running["pid"]), directory) and await self._healthy(desired):
            return self._resources(running, desired)
        if running is not None and alive(int(running["pid"]), directory):
            await self._stop(int(running["pid"]), directory)
        pid = await self._launch(department_id, directory, desired)
        return self._resources({"pid": pid}, desired)

    @staticmethod
    def _resources(running: dict[str, object], desired: Placement) -> dict[str, str]:
        return {"pid": str(running["pid"]), "address": str(desired)}

    async def _launch(self, department_id: str, directory: Path, desired: Placement) -> int:
        remove(directory / SERVICE_FILE)
        environment = child_environment(await self._environment(department_id) if self._environment else None)
        pid = await asyncio.to_thread(self._spawn, department_id, directory, desired, environment)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            running = read_json(directory / SERVICE_FILE)
            if running is not None and running.get("pid") == pid and await self._healthy(desired):
                log.info("department service started", extra={"fields": {"department": department_id}})
                return pid
            status = _reap(pid)
            if status is not None:
                if not _port_free(desired.host, desired.port):
                    # Someone else took the kept port while the service was down: move to a
                    # new one (routes follow container.json) and let the retry use it.
                    Placement(desired.host, free_port(desired.host)).write(directory)
                    if self.on_moved is not None:
                        await self.on_moved()
                raise TransientStepError(
                    f"the department service exited with status {status} while starting; "
                    f"its {LOG_FILE}, in the department's directory, says why"
                )
            if time.monotonic() > deadline:
                await self._stop(pid, directory)
                raise TransientStepError(f"the department service was not healthy after {_START_TIMEOUT:g} s")
            await asyncio.sleep(0.02)

    def _spawn(
        self, department_id: str, directory: Path, desired: Placement, environment: Mapping[str, str]
    ) -> int:
        append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        return os.posix_spawn(
            self._python,
            [
                self._python, "-m", "department_service",
                "--department-id", department_id, "--dir", str(directory),
                "--host", desired.host, "--port", str(desired.port),
            ],
            environment,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(directory / LOG_FILE), append, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            # Its own session, and no handle of ours that must outlive it: a Ctrl-C or a
            # crash of the control plane leaves it running, to be adopted on the way back.
            setsid=True,
        )  # fmt: skip

    async def _healthy(self, desired: Placement) -> bool:
        try:
            reply = await get(desired.url("healthz"), "the department service")
        except TransientStepError:
            return False
        return reply.status_code == 200

    async def _stop(self, pid: int, directory: Path) -> None:
        if not alive(pid, directory):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while alive(pid, directory):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
        _reap(pid)

    async def compensate(self, ctx: StepContext) -> None:
        async with self._locks[ctx.department_id]:
            await settle(self._remove(ctx.department_id))

    async def _remove(self, department_id: str) -> None:
        directory = self._dirs.path(department_id)
        remove(directory / CONTAINER_FILE)
        running = read_json(directory / SERVICE_FILE)
        if running is not None:
            await self._stop(int(running["pid"]), directory)
        remove(directory / SERVICE_FILE, directory / LOG_FILE)
        self._dirs.tidy(department_id)

    async def upstream(self, department_id: str) -> Upstream | None:
        """Where the gateway reaches the department's service (plain HTTP on this machine)."""
        desired = Placement.read(self._dirs.path(department_id))
        return None if desired is None else Upstream(desired.host, desired.port)

    async def check(self, ctx: StepContext) -> Condition:
        directory = self._dirs.path(ctx.department_id)
        desired = Placement.read(directory)
        running = read_json(directory / SERVICE_FILE)
        if desired is None:
            return Condition(self.name, False, "NOT_DEPLOYED", "no department service is wanted")
        if running is None or not alive(int(running["pid"]), directory):
            return Condition(self.name, False, "NOT_RUNNING", "the department service is not running")
        if not await self._healthy(desired):
            return Condition(self.name, False, "UNHEALTHY", "the department service does not answer /healthz")
        return Condition(self.name, True, "SERVING", "the department service answers /healthz")

    async def reconcile(self) -> list[str]:
        """Start every wanted service that is not running; returns the departments started."""
        started = []
        for department_id in self._dirs.ids():
            directory = self._dirs.path(department_id)
            desired = Placement.read(directory)
            if desired is None:
                continue
            async with self._locks[department_id]:
                running = read_json(directory / SERVICE_FILE)
                if running is not None:
                    _reap(int(running["pid"]))
                if running is not None and alive(int(running["pid"]), directory):
                    continue
                desired = Placement.read(directory)
                if desired is None:
                    continue  # removed while we waited for the lock
                try:
                    await settle(self._launch(department_id, directory, desired))
                except (StepError, OSError) as exc:
                    log.warning("cannot restart the service of %s: %s", department_id, exc)
                    continue
                started.append(department_id)
        if started:
            log.warning("restarted department services that had stopped: %s", ", ".join(started))
        return started

    def running(self) -> list[str]:
        """The departments whose service is running now."""
        found = []
        for department_id in self._dirs.ids():
            directory = self._dirs.path(department_id)
            service = read_json(directory / SERVICE_FILE)
            if service is not None and alive(int(service["pid"]), directory):
                found.append(department_id)
        return found

    async def stop_all(self) -> list[str]:
        """Stop every running department service (the next start of the control plane
        starts them again); returns the departments stopped."""
        stopped = []
        for department_id in self.running():
            directory = self._dirs.path(department_id)
            async with self._locks[department_id]:
                service = read_json(directory / SERVICE_FILE)
                if service is not None and alive(int(service["pid"]), directory):
                    await self._stop(int(service["pid"]), directory)
                    stopped.append(department_id)
        return stopped

    async def supervise(self, interval: float = 2.0) -> None:
        """Keep every wanted department service running, until cancelled."""
        while True:
            await self.reconcile()
            await asyncio.sleep(interval)
