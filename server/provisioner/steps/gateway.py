"""The gateway step: a route `/departments/<id>/` on the Envoy that serves the REST API.

A department is routed while the job store holds its route, which records where the
route leads: the container step's answer to `upstream` (a local service's address, or a
container platform's public domain over TLS). Every replica writes its Envoy's dynamic
route and cluster files from the store (atomically; Envoy watches the directory and
applies them without a restart) when its own step changes a route and, for the routes
other replicas change, within `follow`'s interval. A route to a service on one
replica's machine is served by that replica's Envoy only. Each change is verified
through this replica's Envoy: the department's `/healthz` must answer through the new
route, and must stop answering once the route is removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import httpx

from provisioner.core.errors import ProvisioningError, StepError, TransientStepError
from provisioner.core.routes import Route
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.container import Placement
from provisioner.steps.departments import DepartmentDirs, get, read_json, remove
from provisioner.steps.envoy_config import SYSTEM_CA_FILE, Address, Upstream, http_url, write_dynamic_config

log = logging.getLogger(__name__)

#: Where a route was kept before the store held routes; imported once at start.
ROUTE_FILE = "route.json"
_CONVERGE_TIMEOUT = 10.0


class Routable(Protocol):
    """The container step, asked where a department's service can be reached."""

    async def upstream(self, department_id: str) -> Upstream | None: ...


class RouteStore(Protocol):
    """Where routes live: the job store (`store.routes`), shared by every replica."""

    async def put_route(self, route: Route) -> None: ...

    async def delete_route(self, department_id: str) -> bool:
        """Forget the department's route; True if there was one."""

    async def get_route(self, department_id: str) -> Route | None: ...

    async def routes_for(self, replica: str) -> list[Route]:
        """The routes `replica`'s Envoy serves."""


class EnvoyGateway:
    name = StepName.GATEWAY

    def __init__(
        self,
        dirs: DepartmentDirs,
        *,
        routes: RouteStore,
        replica: str,
        local_services: bool,
        services: Routable,
        dynamic_dir: Path,
        http_addr: Address,
        admin_addr: Address,
        cors_origins: Sequence[str] = (),
        ca_file: Path = SYSTEM_CA_FILE,
        listener_cert_file: Path | None = None,
    ) -> None:
        """`replica` is this replica's id; with `local_services` the services run on this
        machine, so only this replica's Envoy can serve the routes made here. With a
        `listener_cert_file` Envoy's listener speaks TLS, with that certificate."""
        self._dirs = dirs
        self._routes = routes
        self._replica = replica
        self._local_services = local_services
        self._services = services
        self._ca_file = ca_file
        self._dynamic_dir = dynamic_dir
        #: What to trust when calling through Envoy (None: it speaks plain HTTP).
        self.trust = listener_cert_file
        self._base = http_url(http_addr, tls=listener_cert_file is not None)
        self._admin = http_url(admin_addr)
        self._cors_origins = tuple(cors_origins)
        # One writer of the route files at a time: each write is the whole table.
        self._lock = asyncio.Lock()
        self._written: Mapping[str, Upstream] | None = None

    @property
    def token_url(self) -> str:
        """The platform's token endpoint, through this replica's Envoy."""
        return f"{self._base}/oauth2/token"

    def url(self, department_id: str, path: str = "") -> str:
        """Where the department answers through Envoy."""
        return f"{self._base}/departments/{department_id}/{path.lstrip('/')}"

    async def health_through(self, department_id: str) -> httpx.Response:
        """The department's /healthz as its users reach it, through Envoy."""
        return await get(
            self.url(department_id, "healthz"), "the department through the gateway", trust=self.trust
        )

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        await self._require_envoy()
        upstream = await self._services.upstream(ctx.department_id)
        if upstream is None:
            raise StepError("the department has no service to route to")
        route = Route(ctx.department_id, upstream.host, upstream.port, upstream.tls, self._served_by())
        async with self._lock:
            await settle(self._publish(route))
        await self._converge(ctx.department_id, lambda status: status == 200, "answer through")
        return {
            "route": f"/departments/{ctx.department_id}/",
            "upstream": str(upstream),
        }

    def _served_by(self) -> str | None:
        return self._replica if self._local_services else None

    async def _publish(self, route: Route) -> None:
        await self._routes.put_route(route)
        await self._write()

    async def compensate(self, ctx: StepContext) -> None:
        async with self._lock:
            routed = await settle(self._withdraw(ctx.department_id))
        if routed and await self._envoy_running():
            await self._converge(ctx.department_id, lambda status: status == 404, "stop answering on")
        self._dirs.tidy(ctx.department_id)

    async def _withdraw(self, department_id: str) -> bool:
        routed = await self._routes.delete_route(department_id)
        await self._write()
        return routed

    async def sync(self) -> None:
        """Write Envoy's files from the store's routes, if they changed since the last write."""
        async with self._lock:
            await self._write()

    async def follow(self, interval: float = 0.5) -> None:
        """Keep this Envoy's routes in step with the store (routes made on other replicas)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except ProvisioningError as exc:
                log.warning("gateway routes not refreshed: %s", exc.message)

    async def _write(self) -> None:
        table = await asyncio.to_thread(self._table, await self._routes.routes_for(self._replica))
        if table != self._written:
            await asyncio.to_thread(
                write_dynamic_config,
                self._dynamic_dir,
                table,
                cors_origins=self._cors_origins,
                ca_file=self._ca_file,
            )
            self._written = table

    def _table(self, routes: list[Route]) -> dict[str, Upstream]:
        """The upstream of a route to this machine is its service's desired place when
        there is one, so a route follows its service when the service had to move to
        another port; else the place recorded when the route was made."""
        table: dict[str, Upstream] = {}
        for route in routes:
            placed = Placement.read(self._dirs.path(route.department_id)) if route.replica else None
            table[route.department_id] = (
                Upstream(placed.host, placed.port)
                if placed is not None
                else Upstream(route.host, route.port, tls=route.tls)
            )
        return table

    async def adopt_route_files(self) -> int:
        """Move routes kept as `route.json` files (before the store held them) into the store."""
        adopted = 0
        for department_id in await asyncio.to_thread(self._dirs.ids):
            path = self._dirs.path(department_id) / ROUTE_FILE
            record = read_json(path)
            if record is None:
                continue
            if await self._routes.get_route(department_id) is None:
                await self._routes.put_route(
                    Route(
                        department_id,
                        str(record["host"]),
                        int(record["port"]),
                        bool(record.get("tls", False)),
                        self._served_by(),
                    )
                )
                adopted += 1
            remove(path)
        return adopted

    async def check(self, ctx: StepContext) -> Condition:
        if await self._routes.get_route(ctx.department_id) is None:
            return Condition(self.name, False, "NOT_ROUTED", "no route for the department")
        try:
            reply = await self.health_through(ctx.department_id)
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
                status = (await self.health_through(department_id)).status_code
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
            return (await get(f"{self._admin}/ready", "the gateway's admin port")).status_code == 200
        except TransientStepError:
            return False

    async def _require_envoy(self) -> None:
        if not await self._envoy_running():
            raise TransientStepError(
                "the Envoy gateway is not running (the server was started with --no-envoy, "
                "or Envoy is down); a route cannot be verified"
            )
