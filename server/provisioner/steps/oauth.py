"""The OAuth step: the department's client id and secret become its active credentials.

The secret was made when the Provision call was accepted (`VaultIssuer`), returned once
to that caller, and sealed in the vault (the job store). This step activates it: from
then on the platform's token endpoint (`provisioner.oauth`) gives the client access
tokens for the department. The department service learns which client is its own from
`credentials.json` beside a local service (the client id only; the service never sees
the secret). A service on a container platform gets it as a variable from the container
step instead; then `publish` is off and whether the service accepts its client is
checked live, by the validation step. Compensation revokes: the service's copy goes
first (its callers' tokens stop working at once), then the vault's records (no new
tokens).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from provisioner.core.job import IssuedClient
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.departments import DepartmentDirs, read_json, remove, write_json
from provisioner.steps.vault import CredentialVault, secret_digest

CREDENTIALS_FILE = "credentials.json"


class VaultIssuer:
    """Issues a department's client when a provisioning job is accepted (see the engine)."""

    def __init__(self, vault: CredentialVault) -> None:
        self._vault = vault

    async def issue(self, department_id: str, job_id: str) -> IssuedClient:
        client_id, secret = await self._vault.issue(department_id, job_id)
        return IssuedClient(client_id, secret)

    async def discard(self, department_id: str, job_id: str) -> None:
        await self._vault.discard(department_id, job_id)


class OAuthCredentials:
    name = StepName.OAUTH

    def __init__(
        self,
        dirs: DepartmentDirs,
        vault: CredentialVault,
        *,
        publish: bool = True,
        deregister: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """`deregister` deletes the department's client at an external authorization
        server (`oauth_registration`) before the vault forgets it."""
        self._dirs = dirs
        self._vault = vault
        self._publish = publish
        self._deregister = deregister

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        return await settle(self._activate(ctx))

    async def _activate(self, ctx: StepContext) -> dict[str, str]:
        credential = await self._vault.activate(ctx.department_id, ctx.job_id)
        if self._publish:
            published = {"client_id": credential.client_id, "revoked": False}
            path = self._dirs.ensure(ctx.department_id) / CREDENTIALS_FILE
            await asyncio.to_thread(write_json, path, published)
        return {"client_id": credential.client_id}

    async def compensate(self, ctx: StepContext) -> None:
        await settle(self._revoke(ctx))

    async def _revoke(self, ctx: StepContext) -> None:
        # The service's copy first: from this moment no caller gets in.
        remove(self._dirs.path(ctx.department_id) / CREDENTIALS_FILE)
        if self._deregister is not None:
            await self._deregister(ctx.department_id)
        await self._vault.revoke(ctx.department_id)
        self._dirs.tidy(ctx.department_id)

    async def check(self, ctx: StepContext) -> Condition:
        credential = await self._vault.active(ctx.department_id)
        if credential is None:
            return Condition(self.name, False, "REVOKED", "the department has no active client")
        try:
            client_id, secret = await self._vault.reveal(ctx.department_id)
        except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
            return Condition(self.name, False, "UNREADABLE", str(exc))
        published = read_json(self._dirs.path(ctx.department_id) / CREDENTIALS_FILE) or {}
        if secret_digest(secret) != credential.secret_sha256 or client_id != credential.client_id:
            return Condition(self.name, False, "CORRUPT", "the sealed secret does not match its hash")
        stale = published.get("client_id") != credential.client_id or published.get("revoked")
        if self._publish and stale:
            return Condition(
                self.name, False, "NOT_PUBLISHED", "the department service has other credentials"
            )
        return Condition(self.name, True, "ACTIVE", f"client {client_id}")
