"""The platform's OAuth 2.0 authorization server: client credentials for departments.

A department's client is the one its provisioning issued (`CredentialVault`): the token
endpoint reads the department's active client from the job store on every request, so a
revoked client (a deprovisioned or rolled-back department) gets `invalid_client` at once,
on every replica. Tokens are RFC 9068 JWTs signed with the period's key (`SigningKeys`).

Limits, per replica and in memory: a client gets at most `client_rate` tokens. Failed
client authentications are counted per address and client id (`FAILURE_RATE`) and per
address (`ADDRESS_FAILURE_RATE`): past either, that address is refused before its
secrets are checked, for that client or for all. A caller guessing one client's secret
stops only itself, and only for that client: the client calling from elsewhere, and
other clients calling from the same address (the control plane's own checks, a NAT),
are not held up until that address fails far more often.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from provisioner.core.oauth import (
    GRANT_TYPE,
    ClientAuthentication,
    OAuthError,
    access_token_claims,
    audience_of,
    authenticate_request,
    department_of,
    granted_scope,
    metadata,
    parse_form,
)
from provisioner.edge.ratelimit import Rate, SlidingWindow
from provisioner.oauth.keys import ALGORITHM, SigningKeys
from provisioner.steps.vault import CredentialVault
from provisioner.telemetry import metrics

log = logging.getLogger("provisioner.oauth")

#: Failed client authentications allowed per address and client id, and per address (per replica).
FAILURE_RATE = Rate(20, 60.0)
ADDRESS_FAILURE_RATE = Rate(300, 60.0)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    issuer: str
    ttl: int = 300
    client_rate: Rate = Rate(60, 60.0)


class AuthorizationServer:
    def __init__(
        self,
        vault: CredentialVault,
        keys: SigningKeys,
        policy: TokenPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if policy.ttl >= keys.rotation:
            raise ValueError("an access token must live less than a signing key's period")
        self._vault = vault
        self._keys = keys
        self.policy = policy
        self._clock = clock
        self._issued = SlidingWindow(policy.client_rate)
        self._failures = SlidingWindow(FAILURE_RATE)
        self._address_failures = SlidingWindow(ADDRESS_FAILURE_RATE)

    def metadata(self) -> dict[str, object]:
        return metadata(self.policy.issuer)

    async def jwks(self) -> dict[str, object]:
        return await self._keys.jwks(self._clock())

    async def token(
        self, *, authorization: str | None, content_type: str | None, body: bytes, peer: str
    ) -> dict[str, object]:
        """Answer a token request (RFC 6749 §4.4.2) or raise OAuthError (§5.2)."""
        now = self._clock()
        try:
            response = await self._token(authorization, content_type, body, peer, now)
        except OAuthError as exc:
            metrics.OAUTH_TOKENS.labels(outcome=exc.error).inc()
            raise
        metrics.OAUTH_TOKENS.labels(outcome="issued").inc()
        return response

    async def _token(
        self, authorization: str | None, content_type: str | None, body: bytes, peer: str, now: float
    ) -> dict[str, object]:
        form = parse_form(content_type, body)
        client = authenticate_request(authorization, form)
        guess = f"{peer} {client.client_id[:128]}"
        wait = self._address_failures.wait(peer, now) or self._failures.wait(guess, now)
        if wait is not None:
            raise OAuthError(
                "temporarily_unavailable",
                f"too many failed client authentications from this address; retry in {wait:.0f} s",
                status=429,
                retry_after=wait,
            )
        department_id = await self._authenticated(client)
        if department_id is None:
            self._failures.admit(guess, now)
            self._address_failures.admit(peer, now)
            log.info(
                "oauth: client authentication failed", extra={"fields": {"client_id": client.client_id[:128]}}
            )
            raise OAuthError(
                "invalid_client",
                "unknown client, wrong secret, or a revoked client",
                status=401,
                basic_challenge=client.method == "client_secret_basic",
            )
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", f"only {GRANT_TYPE} is supported")
        scope = granted_scope(form.get("scope"))
        resource = form.get("resource")
        if resource is not None and resource != audience_of(self.policy.issuer, department_id):
            # RFC 8707 §2: a client's token is for its own department only.
            raise OAuthError("invalid_target", "the resource is not this client's department")
        wait = self._issued.admit(client.client_id, now)
        if wait is not None:
            raise OAuthError(
                "temporarily_unavailable",
                f"this client may have {self.policy.client_rate} tokens; retry in {wait:.0f} s",
                status=429,
                retry_after=wait,
            )
        key = await self._keys.current(now)
        claims = access_token_claims(
            issuer=self.policy.issuer,
            client_id=client.client_id,
            department_id=department_id,
            scope=scope,
            now=int(now),
            ttl=self.policy.ttl,
            jti=secrets.token_urlsafe(16),
        )
        token = jwt.encode(
            claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.policy.ttl,
            "scope": " ".join(scope),
        }

    async def _authenticated(self, client: ClientAuthentication) -> str | None:
        """The client's department if its id and secret are the department's active client."""
        department_id = department_of(client.client_id)
        if department_id is None:
            return None
        active = await self._vault.active(department_id)
        if active is None:
            return None
        digest = hashlib.sha256(client.secret.encode()).hexdigest()
        # Both compared, in constant time, whatever the first says.
        same_id = hmac.compare_digest(client.client_id.encode(), active.client_id.encode())
        same_secret = hmac.compare_digest(digest.encode(), active.secret_sha256.encode())
        return department_id if same_id & same_secret else None
