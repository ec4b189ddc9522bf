"""The gateway step: a route `/departments/<id>/` on the Envoy that serves the REST API.

A department is routed while its `route.json` exists, which records where the route
leads: the container step's answer to `upstream` (a local service's address, or a
container platform's public domain over TLS). Every change rewrites Envoy's dynamic
route and cluster files from all routed departments (atomically; Envoy watches the
directory and applies them without a restart), and is then verified through Envoy
itself: the department's `/healthz` must answer through the new route, and must stop
answering once the route is removed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.container import Placement
from provisioner.steps.departments import DepartmentDirs, get, read_json, remove, write_json
from provisioner.steps.envoy_config import SYSTEM_CA_FILE, Address, Upstream, http_url, write_dynamic_config

ROUTE_FILE = "route.json"
_CONVERGE_TIMEOUT = 10.0


class Routable(Protocol):
    """The container step, asked where a department's service can be reached."""

    async def upstream(self, department_id: str) -> Upstream | None: ...


class EnvoyGateway:
    name = StepName.GATEWAY

    def __init__(
        self,
        dirs: DepartmentDirs,
        *,
        services: Routable,
        dynamic_dir: Path,
        http_addr: Address,
        admin_addr: Address,
        cors_origins: Sequence[str] = (),
        ca_file: Path = SYSTEM_CA_FILE,
    ) -> None:
        self._dirs = dirs
        self._services = services
        self._ca_file = ca_file
        self._dynamic_dir = dynamic_dir
        self._base = http_url(http_addr)
        self._admin = http_url(admin_addr)
        self._cors_origins = tuple(cors_origins)
        # One writer of the route files at a time: each write is the whole table.
        self._lock = asyncio.Lock()

    def url(self, department_id: str, path: str = "") -> str:
        """Where the department answers through Envoy."""
        return f"{self._base}/departments/{department_id}/{path.lstrip('/')}"

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        await self._require_envoy()
        upstream = await self._services.upstream(ctx.department_id)
        if upstream is None:
            raise StepError("the department has no service to route to")
        directory = self._dirs.ensure(ctx.department_id)
        async with self._lock:
            await settle(asyncio.to_thread(self._route, directory, upstream))
        await self._converge(ctx.department_id, lambda status: status == 200, "answer through")
        return {
            "route": f"/departments/{ctx.department_id}/",
            "upstream": str(upstream),
        }

    def _route(self, directory: Path, upstream: Upstream) -> None:
        record = {"host": upstream.host, "port": upstream.port, "tls": upstream.tls}
        write_json(directory / ROUTE_FILE, record, mode=0o644)
        self.sync()

    async def compensate(self, ctx: StepContext) -> None:
        directory = self._dirs.path(ctx.department_id)
        async with self._lock:
            routed = await settle(asyncio.to_thread(self._unroute, directory))
        if routed and await self._envoy_running():
            await self._converge(ctx.department_id, lambda status: status == 404, "stop answering on")
        self._dirs.tidy(ctx.department_id)

    def _unroute(self, directory: Path) -> bool:
        routed = remove(directory / ROUTE_FILE)
        self.sync()
        return routed

    def sync(self) -> None:
        """Write Envoy's files from every department that has a route.

        The upstream is a local service's desired place when there is one, so a route
        follows its service when the service had to move to another port; else the place
        recorded when the route was made (a platform's domain; or a route whose removal
        failed, which stays as it was).
        """
        routes = {}
        for department_id in self._dirs.ids():
            directory = self._dirs.path(department_id)
            route = read_json(directory / ROUTE_FILE)
            if route is not None:
                placed = Placement.read(directory)
                routes[department_id] = (
                    Upstream(placed.host, placed.port)
                    if placed is not None
                    else Upstream(str(route["host"]), int(route["port"]), tls=bool(route.get("tls", False)))
                )
        write_dynamic_config(
            self._dynamic_dir, routes, cors_origins=self._cors_origins, ca_file=self._ca_file
        )

    async def check(self, ctx: StepContext) -> Condition:
        if read_json(self._dirs.path(ctx.department_id) / ROUTE_FILE) is None:
            return Condition(self.name, False, "NOT_ROUTED", "no route for the department")
        try:
            reply = await get(self.url(ctx.department_id, "healthz"))
        except TransientStepError as exc:
            return Condition(self.name, False, "GATEWAY_DOWN", str(exc))
        if reply.status_code != 200:
            return Condition(
                self.name, False, "NOT_ANSWERING", f"/healthz through Envoy: {reply.status_code}"
            )
        return Condition(self.name, True, "ROUTED", self.url(ctx.department_id))

    async def _converge(self, department_id: str, done: Callable[[int], bool], what: str) -> None:
        deadline = time.monotonic() + _CONVERGE_TIMEOUT
        status = 0
        while time.monotonic() < deadline:
            try:
                status = (await get(self.url(department_id, "healthz"))).status_code
            except TransientStepError:
                status = 0
            if done(status):
                return
            await asyncio.sleep(0.05)
        raise TransientStepError(
            f"the department did not {what} Envoy within {_CONVERGE_TIMEOUT:g} s (last status {status})"
        )

    async def _envoy_running(self) -> bool:
        try:
            return (await get(f"{self._admin}/ready")).status_code == 200
        except TransientStepError:
            return False

    async def _require_envoy(self) -> None:
        if not await self._envoy_running():
            raise TransientStepError(
                "the Envoy gateway is not running (the server was started with --no-envoy, "
                "or Envoy is down); a route cannot be verified"
            )
