"""The authorization server over real HTTP (its aiohttp application on a loopback port),
with clients from a real vault on the in-memory store, SQLite and PostgreSQL: tokens
that verify against the published keys, RFC 6749 §5.2 refusals, revocation at once,
the per-client and per-address limits, and signing keys shared by replicas and rotated."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import jwt
import pytest
from aiohttp import web

from provisioner.edge.ratelimit import Rate
from provisioner.oauth.http import application
from provisioner.oauth.keys import SigningKeys, jwks_path, write_jwks
from provisioner.oauth.server import ADDRESS_FAILURE_RATE, FAILURE_RATE, AuthorizationServer, TokenPolicy
from provisioner.steps.vault import CredentialVault, KeySource, SecretStore
from tests.integration.test_vault import backend, stores

__all__ = ["backend", "stores"]

ISSUER = "https://platform.example"
DAY = 86400.0
GRANT = {"grant_type": "client_credentials"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Platform:
    """One replica's authorization server, served over HTTP, and the vault it reads."""

    def __init__(self, store: SecretStore, keys: KeySource, clock: Clock, rate: Rate) -> None:
        self.vault = CredentialVault(store, keys)
        self.keys = SigningKeys(store, keys, rotation=DAY)
        self.server = AuthorizationServer(self.vault, self.keys, TokenPolicy(ISSUER, 300, rate), clock=clock)
        self.http: httpx.AsyncClient

    async def client(self, department_id: str) -> tuple[str, str]:
        client_id, secret = await self.vault.issue(department_id, f"job-{department_id}")
        await self.vault.activate(department_id, f"job-{department_id}")
        return client_id, secret

    async def token(self, client_id: str, secret: str, **form: str) -> httpx.Response:
        return await self.http.post("/oauth2/token", data={**GRANT, **form}, auth=(client_id, secret))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def platforms(
    stores: Callable[[], SecretStore], tmp_path: Path, clock: Clock
) -> AsyncIterator[Callable[..., object]]:
    """Starts replicas: each its own store connection and HTTP server, one shared database."""
    keys = KeySource(path=tmp_path / "keys.json")
    runners: list[web.AppRunner] = []
    clients: list[httpx.AsyncClient] = []

    async def start(rate: Rate = Rate(60, 60.0)) -> Platform:
        platform = Platform(stores(), keys, clock, rate)
        runner = web.AppRunner(application(platform.server))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        platform.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)
        clients.append(platform.http)
        return platform

    yield start
    for client in clients:
        await client.aclose()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def platform(platforms: Callable[..., object]) -> Platform:
    started = await platforms()  # type: ignore[misc]
    assert isinstance(started, Platform)
    return started


async def verified(platform: Platform, token: str, department_id: str = "hr") -> dict[str, object]:
    """The token's claims, checked as a department checks them: against the published keys
    (times aside: the clock here is the test's, and the department's time checks have their
    own tests)."""
    jwks = (await platform.http.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, object] = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=f"{ISSUER}/departments/{department_id}/",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


async def test_a_client_gets_a_token_that_verifies_against_the_published_keys(platform: Platform) -> None:
    client_id, secret = await platform.client("hr")

    answer = await platform.token(client_id, secret)

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store" and answer.headers["pragma"] == "no-cache"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"] == "workflows:run executions:read files:read"
    claims = await verified(platform, body["access_token"])
    assert claims["client_id"] == claims["sub"] == client_id
    assert claims["exp"] == claims["iat"] + 300  # type: ignore[operator]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    again = (await platform.token(client_id, secret)).json()["access_token"]
    assert (await verified(platform, again))["jti"] != claims["jti"]


async def test_form_authentication_and_a_narrower_scope(platform: Platform) -> None:
    client_id, secret = await platform.client("hr")
    answer = await platform.http.post(
        "/oauth2/token",
        data={**GRANT, "client_id": client_id, "client_secret": secret, "scope": "files:read"},
    )
    assert answer.status_code == 200, answer.text
    assert (await verified(platform, answer.json()["access_token"]))["scope"] == "files:read"


async def test_refusals_follow_rfc_6749(platform: Platform) -> None:
    client_id, secret = await platform.client("hr")
    cases = [
        (await platform.token(client_id, "wrong"), 401, "invalid_client"),
        (await platform.token("finance.0000", secret), 401, "invalid_client"),
        (await platform.token(client_id, secret, grant_type="password"), 400, "unsupported_grant_type"),
        (await platform.token(client_id, secret, scope="admin"), 400, "invalid_scope"),
        (
            await platform.token(client_id, secret, resource=f"{ISSUER}/departments/ops/"),
            400,
            "invalid_target",
        ),
        (await platform.http.post("/oauth2/token", auth=(client_id, secret)), 400, "invalid_request"),
        (
            await platform.http.post("/oauth2/token", json=GRANT, auth=(client_id, secret)),
            400,
            "invalid_request",
        ),
        (await platform.http.post("/oauth2/token", data=GRANT), 401, "invalid_client"),
        (await platform.http.get("/oauth2/token"), 405, "invalid_request"),
        (await platform.http.post("/oauth2/token", content=b"x" * 20_000), 413, "invalid_request"),
    ]
    for answer, status, error in cases:
        assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert "Traceback" not in answer.text and secret not in answer.text
    wrong = cases[0][0]
    assert wrong.headers["www-authenticate"] == 'Basic realm="oauth", charset="UTF-8"'


async def test_a_revoked_client_is_refused_at_once(platform: Platform) -> None:
    client_id, secret = await platform.client("hr")
    assert (await platform.token(client_id, secret)).status_code == 200

    await platform.vault.revoke("hr")

    refused = await platform.token(client_id, secret)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


async def test_guessing_from_one_address_holds_up_only_that_address_for_that_client(
    platform: Platform, clock: Clock
) -> None:
    client_id, secret = await platform.client("hr")
    other = await platform.client("finance")
    guesser = {"X-Forwarded-For": "203.0.113.9"}

    async def from_address(client: tuple[str, str], address: dict[str, str]) -> httpx.Response:
        return await platform.http.post("/oauth2/token", data=GRANT, auth=client, headers=address)

    for _ in range(FAILURE_RATE.count):
        assert (await from_address((client_id, "guess"), guesser)).status_code == 401

    blocked = await from_address((client_id, secret), guesser)
    assert (blocked.status_code, blocked.json()["error"]) == (429, "temporarily_unavailable")
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    # The client from elsewhere, and another client from the same address, are not held up.
    assert (await from_address((client_id, secret), {"X-Forwarded-For": "198.51.100.7"})).status_code == 200
    assert (await from_address(other, guesser)).status_code == 200
    clock.now += 61
    assert (await from_address((client_id, secret), guesser)).status_code == 200


async def test_an_address_failing_for_many_clients_is_held_up_for_all(platform: Platform) -> None:
    client = await platform.client("hr")
    sprayer = {"X-Forwarded-For": "203.0.113.10"}
    for index in range(ADDRESS_FAILURE_RATE.count):
        answer = await platform.http.post(
            "/oauth2/token", data=GRANT, auth=(f"hr.{index:04d}", "guess"), headers=sprayer
        )
        assert answer.status_code == 401
    held = await platform.http.post("/oauth2/token", data=GRANT, auth=client, headers=sprayer)
    assert held.status_code == 429


async def test_each_client_has_its_own_token_rate(platforms: Callable[..., object]) -> None:
    platform = await platforms(Rate(3, 60.0))  # type: ignore[misc]
    assert isinstance(platform, Platform)
    hr, finance = await platform.client("hr"), await platform.client("finance")
    assert [(await platform.token(*hr)).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert (await platform.token(*finance)).status_code == 200


async def test_replicas_sign_with_one_key_and_rotation_keeps_tokens_valid(
    platforms: Callable[..., object], clock: Clock, tmp_path: Path
) -> None:
    one, two = await platforms(), await platforms()  # type: ignore[misc]
    assert isinstance(one, Platform) and isinstance(two, Platform)
    client = await one.client("hr")
    first = (await one.token(*client)).json()["access_token"]
    assert (await verified(two, first))["client_id"] == client[0]
    assert (await one.http.get("/.well-known/jwks.json")).json() == (
        await two.http.get("/.well-known/jwks.json")
    ).json()
    assert len((await one.http.get("/.well-known/jwks.json")).json()["keys"]) == 3  # previous, current, next

    clock.now += DAY
    second = (await two.token(*client)).json()["access_token"]
    assert jwt.get_unverified_header(second)["kid"] != jwt.get_unverified_header(first)["kid"]
    # The next period's key was published a period early; the last one's is still there.
    await verified(one, first)
    await verified(one, second)

    clock.now += 2 * DAY
    assert await one.keys.prune(clock.now) >= 2
    kids = {key["kid"] for key in (await one.http.get("/.well-known/jwks.json")).json()["keys"]}
    assert jwt.get_unverified_header(first)["kid"] not in kids
    path = jwks_path(tmp_path)
    assert write_jwks(path, await one.keys.jwks(clock.now)) is True
    assert write_jwks(path, await one.keys.jwks(clock.now)) is False  # unchanged: not rewritten


async def test_the_metadata_describes_the_server(platform: Platform) -> None:
    answer = await platform.http.get("/.well-known/oauth-authorization-server")
    assert answer.status_code == 200
    assert answer.json()["token_endpoint"] == f"{ISSUER}/oauth2/token"
    assert answer.json()["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"


async def test_an_unexpected_error_is_a_bare_server_error(platform: Platform) -> None:
    client_id, secret = await platform.client("hr")

    async def broken(department_id: str) -> None:
        raise RuntimeError("the store is on fire: postgresql://admin:hunter2@db")

    platform.vault.active = broken  # type: ignore[method-assign]
    answer = await platform.token(client_id, secret)
    assert (answer.status_code, answer.json()) == (
        500,
        {"error": "server_error", "error_description": "internal error"},
    )
    assert "hunter2" not in answer.text
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    assert basic not in answer.text
