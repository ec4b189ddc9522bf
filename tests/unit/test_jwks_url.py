"""Keys from a JWKS URL: loaded at start, refreshed for an unknown key id at most every
`min_interval`, kept when the provider fails, and refused when not HTTPS."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.core.errors import ConfigurationError
from provisioner.edge.auth import Authenticator, UnauthenticatedError
from provisioner.edge.jwks_url import JwksUrl, check_jwks_url
from tests.unit.test_auth import jwk

URL = "https://idp.example/.well-known/jwks.json"


class Provider:
    """The identity provider's answers, and how often it was asked."""

    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {"k1": ec.generate_private_key(ec.SECP256R1())}
        self.status = 200
        self.requests = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        document = {"keys": [jwk(key, kid) for kid, key in self.keys.items()]}
        return httpx.Response(self.status, json=document if self.status == 200 else {"error": "down"})

    def token(self, kid: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": "svc", "roles": ["viewer"], "iat": now, "exp": now + 60}
        return jwt.encode(claims, key or self.keys[kid], algorithm="ES256", headers={"kid": kid})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def loaded(provider: Provider, clock: Clock, **options: Any) -> tuple[JwksUrl, Authenticator]:
    source = JwksUrl(URL, transport=httpx.MockTransport(provider.handle), monotonic=clock, **options)
    await source.load()
    return source, Authenticator(jwks_url=source)


async def test_a_rotated_key_is_fetched_at_once_and_made_up_kids_cost_one_request_per_interval() -> None:
    provider, clock = Provider(), Clock()
    _, authenticator = await loaded(provider, clock, min_interval=30.0)
    assert (await authenticator.authenticate_async([f"Bearer {provider.token('k1')}"])).principal == "svc"
    clock.now += 31  # the last fetch was a while ago
    provider.keys["k2"] = ec.generate_private_key(ec.SECP256R1())  # the provider rotates
    assert (await authenticator.authenticate_async([f"Bearer {provider.token('k2')}"])).principal == "svc"
    assert provider.requests == 2
    stranger = ec.generate_private_key(ec.SECP256R1())
    for n in range(100):
        with pytest.raises(UnauthenticatedError, match="unknown key id"):
            await authenticator.authenticate_async([f"Bearer {provider.token(f'made-up-{n}', stranger)}"])
    assert provider.requests == 2  # within the interval of the last fetch: none more
    clock.now += 31
    with pytest.raises(UnauthenticatedError, match="unknown key id"):
        await authenticator.authenticate_async([f"Bearer {provider.token('made-up', stranger)}"])
    assert provider.requests == 3


async def test_concurrent_unknown_kids_share_one_request() -> None:
    provider, clock = Provider(), Clock()
    _, authenticator = await loaded(provider, clock)
    clock.now += 31
    provider.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
    bearer = [f"Bearer {provider.token('k2')}"]
    found = await asyncio.gather(*(authenticator.authenticate_async(bearer) for _ in range(20)))
    assert {i.principal for i in found} == {"svc"}
    assert provider.requests == 2


async def test_old_keys_are_refreshed_in_the_background_and_kept_when_the_provider_fails() -> None:
    provider, clock = Provider(), Clock()
    source, authenticator = await loaded(provider, clock, max_age=300.0)
    provider.status = 503
    clock.now += 301
    token = [f"Bearer {provider.token('k1')}"]
    assert authenticator.authenticate(token).principal == "svc"  # answered with the keys at hand
    await asyncio.sleep(0.05)  # the background refresh ran, and failed
    assert provider.requests == 2
    assert authenticator.authenticate(token).principal == "svc"  # the last good keys stay
    assert source.get("k1") is not None


async def test_a_provider_that_cannot_be_reached_at_start_is_a_clear_refusal() -> None:
    provider, clock = Provider(), Clock()
    provider.status = 500
    with pytest.raises(ConfigurationError, match=r"PROVISIONER_JWKS_URL=https://idp\.example"):
        await loaded(provider, clock)

    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"keys": [], "pad": "x" * 2_000_000}))

    source = JwksUrl(URL, transport=httpx.MockTransport(huge))
    with pytest.raises(ConfigurationError, match="larger than"):
        await source.load()


@pytest.mark.parametrize(
    "url", ["http://idp.example/jwks", "ftp://idp.example/jwks", "https://", "idp.example"]
)
def test_only_https_or_loopback_http(url: str) -> None:
    with pytest.raises(ValueError, match="https://"):
        check_jwks_url(url)
    assert check_jwks_url("http://127.0.0.1:8080/jwks") == "http://127.0.0.1:8080/jwks"
