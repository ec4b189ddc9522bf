"""Tokens verified with an identity provider's keys from its JWKS URL, served over HTTPS by
a real server made here: a key the provider rotates in is accepted at once, made-up key
ids cost the provider at most one request per interval, and a server that cannot reach
the provider at start says so and does not start."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.e2e.conftest import control_plane, started_plane
from tests.pki import issue

pytestmark = pytest.mark.slow


class Provider:
    """An HTTPS JWKS endpoint whose keys the test changes, counting its requests."""

    def __init__(self, directory: Path) -> None:
        authority = issue("test IdP CA")
        self.ca_file = directory / "idp-ca.pem"
        self.ca_file.write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))
        cert, key = issue("localhost", authority, server=True).write(directory, "idp")
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {"k1": ec.generate_private_key(ec.SECP256R1())}
        self.requests = 0
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                body = json.dumps({"keys": [provider.jwk(kid) for kid in provider.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/.well-known/jwks.json"

    def jwk(self, kid: str) -> dict[str, Any]:
        found: dict[str, Any] = ECAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
        return {**found, "kid": kid, "alg": "ES256", "use": "sig"}

    def token(self, kid: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
        now = int(time.time())
        claims = {"sub": "billing", "roles": ["viewer"], "iat": now, "exp": now + 300}
        return jwt.encode(claims, key or self.keys[kid], algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    running = Provider(tmp_path)
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def list_with(rest_url: str, bearer: str) -> int:
    answer = httpx.get(
        f"{rest_url}/api/departments", headers={"authorization": f"Bearer {bearer}"}, trust_env=False
    )
    return answer.status_code


def test_keys_come_from_the_url_rotate_at_once_and_unknown_kids_are_rate_limited(
    provider: Provider, tmp_path: Path
) -> None:
    settings = {"PROVISIONER_JWT_SECRET": "", "PROVISIONER_JWKS_URL": provider.url,
                "PROVISIONER_JWKS_MIN_REFRESH": "1", "SSL_CERT_FILE": str(provider.ca_file)}  # fmt: skip
    with started_plane(tmp_path, **settings) as plane:
        assert provider.requests == 1  # fetched at start
        assert list_with(plane.rest_url, provider.token("k1")) == 200
        provider.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
        time.sleep(1.1)  # PROVISIONER_JWKS_MIN_REFRESH after the last fetch
        assert list_with(plane.rest_url, provider.token("k2")) == 200  # fetched at once
        asked = provider.requests
        stranger = ec.generate_private_key(ec.SECP256R1())
        began = time.monotonic()
        refused = [list_with(plane.rest_url, provider.token(f"made-up-{n}", stranger)) for n in range(50)]
        elapsed = time.monotonic() - began
        assert set(refused) == {401}
        # At most one fetch per PROVISIONER_JWKS_MIN_REFRESH (1 s) however many tokens.
        assert provider.requests - asked <= 1 + int(elapsed), (provider.requests - asked, elapsed)


def test_a_provider_unreachable_at_start_is_one_clear_error(provider: Provider, tmp_path: Path) -> None:
    # Not trusted: the provider's certificate is from an authority the server does not know.
    plane = control_plane(tmp_path, PROVISIONER_JWT_SECRET="", PROVISIONER_JWKS_URL=provider.url)
    plane.start(expect_ready=False)
    assert plane.process is not None and plane.process.wait(timeout=60) == 1
    log = plane.log.read_text()
    assert "PROVISIONER_JWKS_URL" in log and "Traceback" not in log, log[-2000:]
