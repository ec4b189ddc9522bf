"""`RailwayContainer`: the production `container` step, a Railway service per department.

`apply` adopts the project's service named `dept-<department id>` or creates it from the
configured Docker image, sets its health check path to `/healthz`, gives it a
Railway-provided public domain unless it has one, sets its variables in the environment,
starts a deployment and waits until that deployment (not an older one) succeeds. With
the health check path set, SUCCESS means `/healthz` answered HTTP 200 (docs
`deployments/healthchecks`). Every apply deploys, so a re-run after a crash, or after a
variable changed (a rotated database password), ends with a deployment that carries the
current variables; Railway replaces the running deployment only once the new one is up.

`compensate` deletes every service of that name (with its deployments and variables);
`check` reports the service's latest deployment in the environment and its domain.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.core.spec import check_department_id
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.container_railway import operations as ops
from provisioner.steps.container_railway.api import DEFAULT_ENDPOINT, AuthKind, RailwayApi
from provisioner.steps.envoy_config import Upstream

log = logging.getLogger(__name__)

SUCCESS = "SUCCESS"
#: Deployment statuses that will never become SUCCESS (docs: manage-deployments).
FAILED_STATUSES = frozenset({"FAILED", "CRASHED", "REMOVED", "SKIPPED"})
#: The path Railway probes before a deployment goes live; department services serve it.
HEALTHCHECK_PATH = "/healthz"


def service_name(department_id: str) -> str:
    """The name of the department's Railway service; the id is checked first."""
    if check_department_id(department_id):
        raise StepError(f"not a department id: {department_id!r}")
    return f"dept-{department_id}"


class RailwayContainer:
    """The `container` step on Railway (`PROVISIONER_RAILWAY_*`).

    `token` is an account or workspace token (sent as `Authorization: Bearer`), or a
    project token with `auth="project"` (sent as `Project-Access-Token`). Services
    are made in `project_id` from `image` and deployed in `environment_id`.
    `variables(department_id)` gives each service's environment variables (its
    department id, its database URL...); they may be secrets, so they are never logged,
    returned in resources or repeated in error messages.

    A deployment still building after `deploy_timeout` seconds is a retryable failure;
    its status is read every `poll_interval` seconds. `timeout` bounds each API request.
    """

    name = StepName.CONTAINER

    def __init__(
        self,
        token: str,
        project_id: str,
        environment_id: str,
        image: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        variables: Callable[[str], Awaitable[Mapping[str, str]]] | None = None,
        timeout: float = 10.0,
        deploy_timeout: float = 300.0,
        poll_interval: float = 2.0,
        auth: AuthKind = "bearer",
    ) -> None:
        for setting, value in (
            ("PROVISIONER_RAILWAY_PROJECT_ID", project_id),
            ("PROVISIONER_RAILWAY_ENVIRONMENT_ID", environment_id),
            ("PROVISIONER_RAILWAY_IMAGE", image),
        ):
            if not value.strip():
                raise ConfigurationError(f"{setting} is empty")
        if deploy_timeout <= 0 or poll_interval <= 0:
            raise ConfigurationError(
                f"the Railway deploy timeout ({deploy_timeout!r}) and poll interval ({poll_interval!r}) "
                "must be positive"
            )
        self._api = RailwayApi(token, endpoint=endpoint, auth=auth, timeout=timeout)
        self._project_id = project_id
        self._environment_id = environment_id
        self._image = image
        self._variables = variables
        self._deploy_timeout = deploy_timeout
        self._poll_interval = poll_interval
        # Applies and compensations of one department never interleave in this process.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        name = service_name(ctx.department_id)
        async with self._locks[ctx.department_id]:
            found = await ops.services_named(self._api, self._project_id, name)
            if found:
                service_id = found[0]
            else:
                # A mutation in flight lands at Railway even if we stop waiting: settle it, so
                # a rollback that follows a cancellation finds the service and deletes it.
                service_id = await settle(ops.create_service(self._api, self._project_id, name, self._image))
                log.info(
                    "railway service created",
                    extra={"fields": {"department": ctx.department_id, "service": name}},
                )
            await settle(
                ops.set_healthcheck_path(self._api, service_id, self._environment_id, HEALTHCHECK_PATH)
            )
            domain = await self._ensure_domain(service_id, ctx.department_id)
            variables = dict(await self._variables(ctx.department_id)) if self._variables is not None else {}
            if variables:
                await settle(
                    ops.upsert_variables(
                        self._api, self._project_id, self._environment_id, service_id, variables
                    )
                )
            deployment_id = await settle(ops.deploy(self._api, service_id, self._environment_id))
            await self._wait_for(deployment_id, name)
        log.info(
            "railway service deployed",
            extra={"fields": {"department": ctx.department_id, "service": name, "deployment": deployment_id}},
        )
        return {
            "service_id": service_id,
            "service_name": name,
            "deployment_id": deployment_id,
            "domain": domain,
        }

    async def _ensure_domain(self, service_id: str, department_id: str) -> str:
        """The service's Railway-provided domain in the environment, generated if it has none."""
        found = await ops.service_domains(self._api, self._project_id, self._environment_id, service_id)
        if found:
            return found[0]
        domain = await settle(ops.create_service_domain(self._api, service_id, self._environment_id))
        log.info(
            "railway service domain created",
            extra={"fields": {"department": department_id, "domain": domain}},
        )
        return domain

    async def _wait_for(self, deployment_id: str, name: str) -> None:
        """Poll the deployment until it succeeds (return), fails or outlasts the deploy timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deploy_timeout
        last = "unknown"
        while True:
            wait = self._poll_interval
            try:
                status = (await ops.deployment(self._api, deployment_id)).status
            except TransientStepError as exc:
                # A blip while we watch does not undo the deployment: keep watching until the deadline.
                last = f"unknown ({exc.message})"
                wait = max(wait, exc.retry_after or 0.0)
            else:
                if status == SUCCESS:
                    return
                if status in FAILED_STATUSES:
                    raise StepError(f"the Railway deployment {deployment_id} of {name} ended {status}")
                last = status
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TransientStepError(
                    f"the Railway deployment {deployment_id} of {name} was still {last} "
                    f"after {self._deploy_timeout:g} s"
                )
            await asyncio.sleep(min(wait, remaining))

    async def compensate(self, ctx: StepContext) -> None:
        name = service_name(ctx.department_id)
        async with self._locks[ctx.department_id]:
            for service_id in await ops.services_named(self._api, self._project_id, name):
                try:
                    await settle(ops.delete_service(self._api, service_id))
                except TransientStepError:
                    raise
                except StepError:
                    # Deleted meanwhile by someone else is as good as deleted by us.
                    if service_id in await ops.services_named(self._api, self._project_id, name):
                        raise
                log.info(
                    "railway service deleted",
                    extra={"fields": {"department": ctx.department_id, "service": name}},
                )

    async def upstream(self, department_id: str) -> Upstream | None:
        """The service's public domain, over TLS, for the gateway's route (None without one)."""
        found = await ops.services_named(self._api, self._project_id, service_name(department_id))
        if not found:
            return None
        domains = await ops.service_domains(self._api, self._project_id, self._environment_id, found[0])
        return Upstream.https(domains[0]) if domains else None

    async def check(self, ctx: StepContext) -> Condition:
        try:
            name = service_name(ctx.department_id)
            found = await ops.services_named(self._api, self._project_id, name)
            if not found:
                return Condition(self.name, False, "NOT_DEPLOYED", f"Railway has no service {name}")
            latest = await ops.latest_deployment(self._api, self._project_id, self._environment_id, found[0])
            domains = (
                await ops.service_domains(self._api, self._project_id, self._environment_id, found[0])
                if latest is not None and latest.status == SUCCESS
                else []
            )
        except StepError as exc:
            return Condition(self.name, False, "UNREACHABLE", exc.message)
        if latest is None:
            return Condition(self.name, False, "NOT_DEPLOYED", f"{name} has no deployment in the environment")
        if latest.status == SUCCESS:
            where = f"at {domains[0]}" if domains else "with no public domain"
            return Condition(self.name, True, "RUNNING", f"{name}: deployment {latest.id} succeeded, {where}")
        return Condition(
            self.name, False, latest.status, f"{name}: deployment {latest.id} is {latest.status}"
        )

    async def close(self) -> None:
        """Close the API client's connections."""
        await self._api.close()
