"""The control plane with departments' clients registered at an external authorization
server (RFC 7591, `PROVISIONER_OAUTH_PROVIDER`), a real oidc-provider: the Provision call
returns the provider's client, an off-the-shelf OAuth client gets a token there for the
department, the department accepts it, and deprovisioning deletes the client (RFC 7592)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from tests.e2e.conftest import bearer, started_plane
from tests.e2e.test_departments import deprovision, provision, through_envoy
from tests.oidc import OidcProvider

SCOPES = "workflows:run executions:read files:read"


def provider_token(provider: OidcProvider, client_id: str, secret: str, resource: str) -> str:
    """A token from the provider for the department (Authlib's client credentials grant)."""
    token_endpoint = httpx.get(f"{provider.issuer}/.well-known/openid-configuration").json()["token_endpoint"]
    with OAuth2Session(client_id, secret, scope=SCOPES) as oauth:
        oauth.trust_env = False
        answer = oauth.fetch_token(
            token_endpoint, grant_type="client_credentials", resource=resource, timeout=10
        )
    return str(answer["access_token"])


def test_departments_clients_live_at_the_external_provider(
    oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    with started_plane(
        tmp_path,
        PROVISIONER_OAUTH_PROVIDER=oidc_provider.issuer,
        PROVISIONER_OAUTH_REGISTRATION_TOKEN=oidc_provider.registration_token,
    ) as plane:
        dept = f"ext-{uuid.uuid4().hex[:6]}"
        created, job = provision(plane, dept)
        assert job.state == pb.JOB_STATE_COMPLETED, job.error
        client_id, secret = created.issued_client.client_id, created.issued_client.client_secret
        assert not client_id.startswith(f"{dept}.")  # the provider's id, not ours
        resource = f"{plane.rest_url}/departments/{dept}/"

        token = provider_token(oidc_provider, client_id, secret, resource)
        ran = through_envoy(
            plane, dept, "workflows/database", method="POST", json={"n": 1}, headers=bearer(token)
        )
        assert ran.status_code == 200, ran.text
        # The control plane's own token endpoint is not in play: it issues nothing here.
        with httpx.Client(trust_env=False, timeout=10) as http:
            builtin = http.post(
                f"{plane.rest_url}/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(client_id, secret),
            )
        assert builtin.status_code == 503

        teardown = deprovision(plane, dept)
        assert teardown.state == pb.JOB_STATE_COMPLETED, teardown.error
        with pytest.raises(OAuthError, match="invalid_client"):
            provider_token(oidc_provider, client_id, secret, resource)
