"""The production adapter of the department's OAuth client: registered at an external
authorization server with Dynamic Client Registration (RFC 7591), deleted with its
management protocol (RFC 7592).

Chosen by `PROVISIONER_OAUTH_PROVIDER` (the server's issuer URL) with
`PROVISIONER_OAUTH_REGISTRATION_TOKEN` (its initial access token). The server's endpoints
come from its discovery document (RFC 8414, or OpenID Connect Discovery). A client is
registered for the client credentials grant with the departments' scopes when a
provisioning is accepted (as the built-in server's client is issued then), so the
Provision answer can return its id and secret; the registration's access token and URI
are sealed in the vault beside the secret, and used to delete the client when the job
fails or the department is revoked. The department's service then checks tokens from that
server: its issuer, its keys, and the department's own audience (the resource a client
names with RFC 8707 `resource`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.job import IssuedClient
from provisioner.core.oauth import SCOPES
from provisioner.steps.vault import CredentialVault

log = logging.getLogger("provisioner.steps")

REGISTRATION = "oauth-registration"
_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    token_endpoint: str
    jwks_uri: str
    registration_endpoint: str


@dataclass(frozen=True, slots=True)
class Registration:
    client_id: str
    client_secret: str
    registration_access_token: str
    registration_client_uri: str


class ClientRegistrar:
    """RFC 7591 registration and RFC 7592 deletion at one authorization server."""

    def __init__(self, issuer: str, initial_access_token: str, *, timeout: float = _TIMEOUT) -> None:
        self.issuer = issuer.rstrip("/")
        self._token = initial_access_token
        self._timeout = timeout
        self._metadata: ProviderMetadata | None = None

    async def metadata(self) -> ProviderMetadata:
        """The server's endpoints, from its discovery document (read once)."""
        if self._metadata is None:
            document: dict[str, Any] = {}
            async with self._client() as client:
                for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                    answer = await self._call(client, "GET", self.issuer + path, "discovery")
                    if answer.status_code == 200:
                        document = answer.json()
                        break
            self._metadata = _metadata(document, self.issuer)
        return self._metadata

    async def token_endpoint(self) -> str:
        return (await self.metadata()).token_endpoint

    async def register(self, department_id: str) -> Registration:
        """A new confidential client for the department (RFC 7591 §3.1)."""
        endpoint = (await self.metadata()).registration_endpoint
        request = {
            "client_name": f"department {department_id}",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": " ".join(SCOPES),
        }
        async with self._client() as client:
            answer = await self._call(
                client, "POST", endpoint, "registration", json=request, headers=self._bearer(self._token)
            )
        if answer.status_code != 201:
            raise _refused("registration", answer)
        body = answer.json()
        try:
            registration = Registration(
                str(body["client_id"]),
                str(body["client_secret"]),
                str(body["registration_access_token"]),
                str(body["registration_client_uri"]),
            )
        except KeyError as exc:
            raise StepError(f"the authorization server's registration answer has no {exc.args[0]}") from None
        log.info("oauth: registered client %s for department %s", registration.client_id, department_id)
        return registration

    async def deregister(self, registration: Registration) -> None:
        """Delete the client (RFC 7592 §2.3); one that is already gone is fine."""
        async with self._client() as client:
            answer = await self._call(
                client,
                "DELETE",
                registration.registration_client_uri,
                "deletion",
                headers=self._bearer(registration.registration_access_token),
            )
        # 401: the registration access token no longer names a client (RFC 7592 §2.3).
        if answer.status_code not in (204, 401, 404):
            raise _refused("deletion", answer)
        log.info("oauth: deleted client %s", registration.client_id)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self._timeout, trust_env=False, follow_redirects=False)

    @staticmethod
    def _bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @staticmethod
    async def _call(
        client: httpx.AsyncClient, method: str, url: str, what: str, **kwargs: Any
    ) -> httpx.Response:
        try:
            answer = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransientStepError(
                f"the authorization server's {what} cannot be reached: {type(exc).__name__}"
            ) from exc
        if answer.status_code >= 500 or answer.status_code == 429:
            raise TransientStepError(f"the authorization server's {what} answered {answer.status_code}")
        return answer


def _metadata(document: dict[str, Any], issuer: str) -> ProviderMetadata:
    if document.get("issuer", "").rstrip("/") != issuer:
        raise StepError(
            f"the authorization server at {issuer} names another issuer: {document.get('issuer')!r}"
        )
    try:
        return ProviderMetadata(
            issuer, document["token_endpoint"], document["jwks_uri"], document["registration_endpoint"]
        )
    except KeyError as exc:
        raise StepError(f"the authorization server at {issuer} publishes no {exc.args[0]}") from None


def _refused(what: str, answer: httpx.Response) -> StepError:
    try:
        body = answer.json()
        detail = f"{body.get('error')}: {body.get('error_description')}"
    except ValueError:
        detail = answer.text[:200]
    return StepError(f"the authorization server refused the client {what} ({answer.status_code} {detail})")


class RegisteringIssuer:
    """Issues a department's client by registering it at the authorization server."""

    def __init__(self, vault: CredentialVault, registrar: ClientRegistrar) -> None:
        self._vault = vault
        self._registrar = registrar

    async def issue(self, department_id: str, job_id: str) -> IssuedClient:
        registration = await self._registrar.register(department_id)
        await self._vault.keep(department_id, _name(job_id), REGISTRATION, _dump(registration))
        client_id, secret = await self._vault.issue(
            department_id, job_id, client=(registration.client_id, registration.client_secret)
        )
        return IssuedClient(client_id, secret)

    async def discard(self, department_id: str, job_id: str) -> None:
        await self.deregister(department_id, job_id)
        await self._vault.discard(department_id, job_id)

    async def deregister(self, department_id: str, job_id: str) -> None:
        """Delete the client registered for `job_id`, if any, and forget its registration."""
        kept = await self._vault.kept(department_id, _name(job_id), REGISTRATION)
        if kept is not None:
            await self._registrar.deregister(_load(kept))
            await self._vault.forget(department_id, _name(job_id), purpose=REGISTRATION)

    async def revoke(self, department_id: str) -> None:
        """Delete every client registered for the department: the active one, and any a
        request that lost the race to create the department's job left unused."""
        for name in await self._vault.kept_names(department_id, REGISTRATION):
            await self.deregister(department_id, name.removeprefix("registration:"))


def _name(job_id: str) -> str:
    return f"registration:{job_id}"


def _dump(registration: Registration) -> str:
    return json.dumps(
        {
            "client_id": registration.client_id,
            "registration_access_token": registration.registration_access_token,
            "registration_client_uri": registration.registration_client_uri,
        }
    )


def _load(text: str) -> Registration:
    data = json.loads(text)
    return Registration(
        data["client_id"], "", data["registration_access_token"], data["registration_client_uri"]
    )
