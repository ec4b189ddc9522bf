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
import signal
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.departments import DepartmentDirs, get, read_json, remove, write_json

log = logging.getLogger(__name__)

CONTAINER_FILE = "container.json"
SERVICE_FILE = "service.json"
LOG_FILE = "service.log"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def alive(pid: int, directory: Path) -> bool:
    """Whether `pid` is the department service of `directory` (not a reused pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"department_service" in command and str(directory).encode() in command


class LocalProcessContainer:
    name = StepName.CONTAINER

    def __init__(
        self, dirs: DepartmentDirs, *, host: str = "127.0.0.1", python: str = sys.executable
    ) -> None:
        self._dirs = dirs
        self._host = host
        self._python = python
        # The step and the supervisor never act on one department at the same time.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def address(self, department_id: str) -> tuple[str, int] | None:
        """Where the department's service listens, from its desired state."""
        desired = read_json(self._dirs.path(department_id) / CONTAINER_FILE)
        return None if desired is None else (str(desired["host"]), int(desired["port"]))

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        async with self._locks[ctx.department_id]:
            return await settle(self._ensure_running(ctx.department_id))

    async def _ensure_running(self, department_id: str) -> dict[str, str]:
        directory = self._dirs.ensure(department_id)
        desired = read_json(directory / CONTAINER_FILE)
        if desired is None:
            desired = {"host": self._host, "port": free_port(self._host), "desired": "running"}
            write_json(directory / CONTAINER_FILE, desired)
        running = read_json(directory / SERVICE_FILE)
        if running is not None and alive(int(running["pid"]), directory) and await self._healthy(desired):
            return self._resources(running, desired)
        if running is not None and alive(int(running["pid"]), directory):
            await self._stop(int(running["pid"]), directory)
        pid = await self._launch(department_id, directory, desired)
        return self._resources({"pid": pid}, desired)

    @staticmethod
    def _resources(running: dict[str, object], desired: dict[str, object]) -> dict[str, str]:
        return {"pid": str(running["pid"]), "address": f"{desired['host']}:{desired['port']}"}

    async def _launch(self, department_id: str, directory: Path, desired: dict[str, object]) -> int:
        remove(directory / SERVICE_FILE)
        with (directory / LOG_FILE).open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                self._python, "-m", "department_service",
                "--department-id", department_id, "--dir", str(directory),
                "--host", str(desired["host"]), "--port", str(desired["port"]),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                # Its own session: a Ctrl-C or crash of the control plane leaves it running,
                # to be adopted when the control plane comes back.
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            running = read_json(directory / SERVICE_FILE)
            if running is not None and running.get("pid") == process.pid and await self._healthy(desired):
                log.info("department service started", extra={"fields": {"department": department_id}})
                return process.pid
            if process.returncode is not None:
                raise TransientStepError(
                    f"the department service exited with status {process.returncode} while starting; "
                    f"see {directory / LOG_FILE}"
                )
            if time.monotonic() > deadline:
                await self._stop(process.pid, directory)
                raise TransientStepError(f"the department service was not healthy after {_START_TIMEOUT:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), 0.05)

    async def _healthy(self, desired: dict[str, object]) -> bool:
        try:
            reply = await get(f"http://{desired['host']}:{desired['port']}/healthz")
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

    async def check(self, ctx: StepContext) -> Condition:
        directory = self._dirs.path(ctx.department_id)
        desired = read_json(directory / CONTAINER_FILE)
        running = read_json(directory / SERVICE_FILE)
        if desired is None:
            return Condition(self.name, False, "NOT_DEPLOYED", "no department service is wanted")
        if running is None or not alive(int(running["pid"]), directory):
            return Condition(self.name, False, "NOT_RUNNING", "the department service is not running")
        if not await self._healthy(desired):
            return Condition(self.name, False, "UNHEALTHY", "the department service does not answer /healthz")
        return Condition(self.name, True, "SERVING", f"pid {running['pid']} on port {desired['port']}")

    async def reconcile(self) -> list[str]:
        """Start every wanted service that is not running; returns the departments started."""
        started = []
        for department_id in self._dirs.ids():
            directory = self._dirs.path(department_id)
            desired = read_json(directory / CONTAINER_FILE)
            if desired is None:
                continue
            async with self._locks[department_id]:
                running = read_json(directory / SERVICE_FILE)
                if running is not None and alive(int(running["pid"]), directory):
                    continue
                if read_json(directory / CONTAINER_FILE) is None:
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

    async def supervise(self, interval: float = 2.0) -> None:
        """Keep every wanted department service running, until cancelled."""
        while True:
            await self.reconcile()
            await asyncio.sleep(interval)
