"""The validation step: the department is checked the way its users will reach it.

`DeploymentValidation` (workflows served by the department service): through Envoy's
route, `/healthz` answers SERVING; with an access token the department's client gets
from the token endpoint (through Envoy too), a workflow webhook runs as a dry run (so the
email workflow sends nothing), and its execution row is then read back from the
department's own database; the same call with a forged token is refused, and so is a
wrong secret at the token endpoint. The check leaves one execution
(the smoke test) in the department's history.

`PlatformValidation` (workflows on n8n, whose webhooks take no client credentials):
through Envoy's route, `/healthz` answers SERVING, which the service says only when it
reaches its database as its own role; the department's own `/executions` answers its
client's access token and refuses a forged one; the workflows step sees every workflow
active; and one workflow's webhook runs on n8n (which keeps the execution).

Both check a department live the same way, for GetDepartmentHealth: `/healthz` through
the gateway answers SERVING, and the department accepts its own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.oauth import SCOPES, audience_of
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, Step, StepContext
from provisioner.steps.departments import http_client
from provisioner.steps.gateway import EnvoyGateway
from provisioner.steps.vault import CredentialVault


class WorkflowPlatform(Step, Protocol):
    """The workflows step on a workflow platform, whose webhooks it can point at."""

    def webhook_url(self, department_id: str, kind: str) -> str: ...


class ExecutionLedger(Protocol):
    """The database step, asked directly (not through the service) what an execution left."""

    async def execution_status(self, department_id: str, execution_id: str) -> str | None: ...


async def _require_serving(gateway: EnvoyGateway, department_id: str) -> None:
    health = await gateway.health_through(department_id)
    if health.status_code != 200 or health.json().get("status") != "SERVING":
        raise TransientStepError(f"/healthz through the gateway answered {health.status_code}")


@dataclass(frozen=True, slots=True)
class TokenEndpoint:
    """Where a department's client gets access tokens (the built-in server through Envoy,
    or an external one), and the base of the departments' audiences."""

    url: Callable[[], Awaitable[str]]
    audience_base: str

    def request(self, department_id: str) -> dict[str, str]:
        """The token request's form: the grant, every scope, and the department as the
        resource (RFC 8707); an external server grants only the scopes asked for."""
        return {
            "grant_type": "client_credentials",
            "scope": " ".join(SCOPES),
            "resource": audience_of(self.audience_base, department_id),
        }


def builtin_tokens(gateway: EnvoyGateway, audience_base: str) -> TokenEndpoint:
    """The control plane's own token endpoint, through this replica's Envoy."""

    async def url() -> str:
        return gateway.token_url

    return TokenEndpoint(url, audience_base)


async def _live_condition(
    gateway: EnvoyGateway, vault: CredentialVault, tokens: TokenEndpoint, department_id: str
) -> Condition:
    """The department as its users reach it: SERVING through the gateway, to its own client."""
    name = StepName.VALIDATION
    try:
        reply = await gateway.health_through(department_id)
        serving = reply.status_code == 200 and reply.json().get("status") == "SERVING"
    except (TransientStepError, ValueError) as exc:
        return Condition(name, False, "UNREACHABLE", str(exc))
    if not serving:
        return Condition(name, False, "NOT_SERVING", f"/healthz through Envoy: {reply.status_code}")
    try:
        client_id, secret = await vault.reveal(department_id)
        async with http_client(trust=gateway.trust) as client:
            token = await access_token(client, tokens, department_id, client_id, secret)
            own = gateway.url(department_id, "executions?limit=1")
            answered = await client.get(own, headers=_bearer(token))
    except (StepError, httpx.HTTPError) as exc:
        return Condition(name, False, "UNREACHABLE", str(exc) or type(exc).__name__)
    if answered.status_code != 200:
        message = f"the department answered its own client {answered.status_code}"
        return Condition(name, False, "CLIENT_REFUSED", message)
    return Condition(name, True, "SERVING", "answers its own client through the gateway")


def _smoke_test(ctx: StepContext) -> dict[str, str]:
    """The request body of the workflow run that validation makes."""
    return {"name": "provisioning-check", "source": "provisioner", "job_id": ctx.job_id}


async def access_token(
    client: httpx.AsyncClient, tokens: TokenEndpoint, department_id: str, client_id: str, secret: str
) -> str:
    """An access token for the department's client, from its token endpoint."""
    answer = await client.post(
        await tokens.url(), data=tokens.request(department_id), auth=(client_id, secret)
    )
    if answer.status_code >= 500:
        raise TransientStepError(f"the token endpoint answered {answer.status_code}")
    if answer.status_code != 200:
        raise StepError(
            f"the token endpoint refused the department's client: {answer.status_code} {answer.text[:200]}"
        )
    token = answer.json().get("access_token")
    if not isinstance(token, str):
        raise StepError("the token endpoint answered without an access_token")
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _forged(token: str) -> str:
    """The token with its signature changed: the department must refuse it."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{'A' if signature[:1] != 'A' else 'B'}{signature[1:]}"


async def _admits_only_its_client(
    client: httpx.AsyncClient,
    tokens: TokenEndpoint,
    department_id: str,
    method: str,
    url: str,
    what: str,
    client_id: str,
    secret: str,
    **request: Any,
) -> httpx.Response:
    """Call `url` with an access token of the department's client, then with a forged one:
    the first must be answered 200 and the second refused with 401, and the token endpoint
    must refuse a wrong secret (StepError otherwise). Returns the first answer."""
    # Independent calls go together: a provisioning waits for this step.
    token, guessed = await asyncio.gather(
        access_token(client, tokens, department_id, client_id, secret),
        client.post(
            await tokens.url(), data=tokens.request(department_id), auth=(client_id, "not-the-secret")
        ),
    )
    ran, forged = await asyncio.gather(
        client.request(method, url, headers=_bearer(token), **request),
        client.request(method, url, headers=_bearer(_forged(token)), **request),
    )
    if ran.status_code >= 500:  # the service's trouble (its keys, its database): try again
        raise TransientStepError(f"{what} answered {ran.status_code}: {ran.text[:200]}")
    if ran.status_code != 200:
        raise StepError(f"{what} answered {ran.status_code} to the department's own client")
    if forged.status_code != 401:
        raise StepError(f"{what} answered {forged.status_code} to a forged token, not 401")
    if guessed.status_code == 429 or guessed.status_code >= 500:  # held up: it proves nothing yet
        raise TransientStepError(f"the token endpoint answered {guessed.status_code} to a wrong secret")
    if guessed.status_code != 401:
        raise StepError(f"the token endpoint answered {guessed.status_code} to a wrong secret, not 401")
    return ran


class DeploymentValidation:
    name = StepName.VALIDATION

    def __init__(
        self, ledger: ExecutionLedger, gateway: EnvoyGateway, vault: CredentialVault, tokens: TokenEndpoint
    ) -> None:
        self._ledger = ledger
        self._gateway = gateway
        self._vault = vault
        self._tokens = tokens

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        department = ctx.department_id
        await _require_serving(self._gateway, department)
        client_id, secret = await self._vault.reveal(department)
        workflow = sorted(ctx.spec.workflows)[0]
        # A dry run: authenticated, routed and recorded like any call, but it sends no mail.
        url = self._gateway.url(department, f"workflows/{workflow}?dryRun=true")
        async with http_client(trust=self._gateway.trust) as client:
            try:
                ran = await _admits_only_its_client(
                    client,
                    self._tokens,
                    department,
                    "POST",
                    url,
                    f"the {workflow} webhook",
                    client_id,
                    secret,
                    json=_smoke_test(ctx),
                )
            except httpx.HTTPError as exc:
                raise TransientStepError(f"cannot call the {workflow} webhook: {type(exc).__name__}") from exc
        execution_id = str(ran.json()["execution_id"])
        status = await self._ledger.execution_status(department, execution_id)
        if status != "succeeded":
            raise StepError(f"execution {execution_id} is not in the department's database as succeeded")
        return {"workflow": workflow, "execution_id": execution_id}

    async def compensate(self, ctx: StepContext) -> None:
        # Nothing to undo: the smoke test's execution row goes with the database.
        return

    async def check(self, ctx: StepContext) -> Condition:
        return await _live_condition(self._gateway, self._vault, self._tokens, ctx.department_id)


class PlatformValidation:
    name = StepName.VALIDATION

    def __init__(
        self,
        gateway: EnvoyGateway,
        vault: CredentialVault,
        workflows: WorkflowPlatform,
        tokens: TokenEndpoint,
    ) -> None:
        self._gateway = gateway
        self._vault = vault
        self._tokens = tokens
        self._workflows = workflows

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        department = ctx.department_id
        await _require_serving(self._gateway, department)
        client_id, secret = await self._vault.reveal(department)
        own = self._gateway.url(department, "executions?limit=1")
        workflow = sorted(ctx.spec.workflows)[0]
        async with http_client(trust=self._gateway.trust) as client:
            try:
                await _admits_only_its_client(
                    client, self._tokens, department, "GET", own, "/executions", client_id, secret
                )
                workflows = await self._workflows.check(ctx)
                if not workflows.healthy:
                    raise TransientStepError(f"the workflows are not ready: {workflows.message}")
                webhook = self._workflows.webhook_url(department, workflow)
                ran = await client.post(webhook, json=_smoke_test(ctx))
            except httpx.HTTPError as exc:
                raise TransientStepError(
                    f"cannot call the department or its workflows: {type(exc).__name__}"
                ) from exc
        if ran.status_code != 200:
            raise TransientStepError(
                f"the {workflow} webhook on the workflow platform answered {ran.status_code}"
            )
        return {
            "client": "its token accepted; a forged token and a wrong secret refused",
            "workflows": workflows.message,
            "workflow": workflow,
        }

    async def compensate(self, ctx: StepContext) -> None:
        return  # it made nothing

    async def check(self, ctx: StepContext) -> Condition:
        return await _live_condition(self._gateway, self._vault, self._tokens, ctx.department_id)
