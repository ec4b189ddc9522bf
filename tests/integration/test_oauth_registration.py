"""The RFC 7591/7592 adapter against a real OpenID Provider (oidc-provider): clients are
registered and deleted there, their tokens (asked for the department as the resource)
pass the department service's own checks, and revoking or discarding a client ends its
tokens at the provider."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from department_service.auth import Credentials, JwksUrl, TokenVerifier
from department_service.errors import Unauthorized
from provisioner.core.errors import StepError
from provisioner.core.oauth import SCOPES, audience_of
from provisioner.steps.oauth_registration import ClientRegistrar, RegisteringIssuer
from provisioner.steps.vault import CredentialVault, KeySource
from provisioner.store.memory import InMemorySecretStore
from tests.oidc import OidcProvider

GATEWAY = "https://platform.example"


def registrar(provider: OidcProvider) -> ClientRegistrar:
    return ClientRegistrar(provider.issuer, provider.registration_token)


async def token(
    registrar: ClientRegistrar, client_id: str, secret: str, department_id: str
) -> httpx.Response:
    """A token from the provider, as a department's client asks for one: for its department."""
    endpoint = (await registrar.metadata()).token_endpoint
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.post(
            endpoint,
            data={
                "grant_type": "client_credentials",
                "scope": " ".join(SCOPES),
                "resource": audience_of(GATEWAY, department_id),
            },
            auth=(client_id, secret),
        )


async def test_discovery_names_the_providers_endpoints(oidc_provider: OidcProvider) -> None:
    metadata = await registrar(oidc_provider).metadata()
    assert metadata.issuer == oidc_provider.issuer
    assert metadata.token_endpoint.endswith("/token") and metadata.registration_endpoint.endswith("/reg")


async def test_a_registered_clients_token_passes_the_departments_checks_until_it_is_deleted(
    oidc_provider: OidcProvider,
) -> None:
    adapter = registrar(oidc_provider)
    registration = await adapter.register("hr")

    answer = await token(adapter, registration.client_id, registration.client_secret, "hr")
    assert answer.status_code == 200, answer.text
    issued = answer.json()["access_token"]
    metadata = await adapter.metadata()
    verifier = TokenVerifier(
        oidc_provider.issuer, "hr", JwksUrl(metadata.jwks_uri), audience=audience_of(GATEWAY, "hr")
    )
    caller = verifier.verify(f"Bearer {issued}", Credentials(registration.client_id), "workflows:run")
    assert caller.client_id == registration.client_id
    assert caller.scopes == {"workflows:run", "executions:read", "files:read"}
    # Another department's service refuses it: the audience is not its own.
    other = TokenVerifier(
        oidc_provider.issuer, "ops", JwksUrl(metadata.jwks_uri), audience=audience_of(GATEWAY, "ops")
    )
    with pytest.raises(Unauthorized):
        other.verify(f"Bearer {issued}", Credentials(registration.client_id), "workflows:run")

    await adapter.deregister(registration)

    refused = await token(adapter, registration.client_id, registration.client_secret, "hr")
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    await adapter.deregister(registration)  # already gone: fine


async def test_the_issuer_keeps_the_registration_sealed_and_revocation_deletes_the_client(
    oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    store = InMemorySecretStore()
    vault = CredentialVault(store, KeySource(path=tmp_path / "keys.json"))
    adapter = registrar(oidc_provider)
    issuer = RegisteringIssuer(vault, adapter)

    client = await issuer.issue("hr", "job-1")
    lost = await issuer.issue("hr", "job-2")  # a request that lost the race for the department
    await vault.activate("hr", "job-1")
    assert (await token(adapter, client.client_id, client.client_secret, "hr")).status_code == 200
    stored = " ".join(record.sealed for record in await store.all_secrets())
    assert client.client_secret not in stored and "registration" not in stored  # sealed, all of it

    await issuer.revoke("hr")
    await vault.revoke("hr")

    for gone in (client, lost):
        refused = await token(adapter, gone.client_id, gone.client_secret, "hr")
        assert refused.json()["error"] == "invalid_client"
    assert await store.all_secrets() == []


async def test_a_failed_jobs_client_is_deleted_at_the_provider(
    oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    vault = CredentialVault(InMemorySecretStore(), KeySource(path=tmp_path / "keys.json"))
    adapter = registrar(oidc_provider)
    issuer = RegisteringIssuer(vault, adapter)
    client = await issuer.issue("hr", "job-1")

    await issuer.discard("hr", "job-1")

    assert (await token(adapter, client.client_id, client.client_secret, "hr")).json()[
        "error"
    ] == "invalid_client"


async def test_a_wrong_initial_access_token_is_a_clear_refusal(oidc_provider: OidcProvider) -> None:
    with pytest.raises(StepError, match="refused the client registration \\(401 invalid_token"):
        await ClientRegistrar(oidc_provider.issuer, "not-the-token").register("hr")


async def test_a_provider_naming_another_issuer_is_refused(oidc_provider: OidcProvider) -> None:
    lookalike = oidc_provider.issuer.replace("127.0.0.1", "localhost")
    with pytest.raises(StepError, match="names another issuer"):
        await ClientRegistrar(lookalike, oidc_provider.registration_token).metadata()
