"""The validation step: the department is checked the way its users will reach it.

Through Envoy's route: `/healthz` answers SERVING; a workflow webhook called with the
department's client credentials runs, and its execution row is then read back from the
department's own database; the same call with a wrong secret is refused. The check
leaves one execution (the smoke test) in the department's history.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httpx

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext
from provisioner.steps.departments import get, http_client
from provisioner.steps.gateway import EnvoyGateway
from provisioner.steps.vault import CredentialVault


class ExecutionLedger(Protocol):
    """The database step, asked directly (not through the service) what an execution left."""

    async def execution_status(self, department_id: str, execution_id: str) -> str | None: ...


class DeploymentValidation:
    name = StepName.VALIDATION

    def __init__(self, ledger: ExecutionLedger, gateway: EnvoyGateway, vault: CredentialVault) -> None:
        self._ledger = ledger
        self._gateway = gateway
        self._vault = vault

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        department = ctx.department_id
        health = await get(self._gateway.url(department, "healthz"))
        if health.status_code != 200 or health.json().get("status") != "SERVING":
            raise TransientStepError(f"/healthz through the gateway answered {health.status_code}")
        client_id, secret = await asyncio.to_thread(self._vault.reveal, department)
        workflow = sorted(ctx.spec.workflows)[0]
        url = self._gateway.url(department, f"workflows/{workflow}")
        payload = {"name": "provisioning-check", "source": "provisioner", "job_id": ctx.job_id}
        async with http_client() as client:
            try:
                ran = await client.post(url, json=payload, auth=(client_id, secret))
                refused = await client.post(url, json=payload, auth=(client_id, "not-the-secret"))
            except httpx.HTTPError as exc:
                raise TransientStepError(f"cannot call the {workflow} webhook: {type(exc).__name__}") from exc
        if ran.status_code != 200:
            raise StepError(
                f"the {workflow} webhook answered {ran.status_code} to the department's own client"
            )
        if refused.status_code != 401:
            raise StepError(
                f"the {workflow} webhook answered {refused.status_code} to a wrong secret, not 401"
            )
        execution_id = str(ran.json()["execution_id"])
        status = await self._ledger.execution_status(department, execution_id)
        if status != "succeeded":
            raise StepError(f"execution {execution_id} is not in the department's database as succeeded")
        return {"workflow": workflow, "execution_id": execution_id}

    async def compensate(self, ctx: StepContext) -> None:
        # Nothing to undo: the smoke test's execution row goes with the database.
        return

    async def check(self, ctx: StepContext) -> Condition:
        try:
            reply = await get(self._gateway.url(ctx.department_id, "healthz"))
            serving = reply.status_code == 200 and reply.json().get("status") == "SERVING"
        except (TransientStepError, ValueError) as exc:
            return Condition(self.name, False, "UNREACHABLE", str(exc))
        if not serving:
            return Condition(self.name, False, "NOT_SERVING", f"/healthz through Envoy: {reply.status_code}")
        return Condition(self.name, True, "SERVING", "answers through the gateway")
