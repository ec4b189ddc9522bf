"""Bearer tokens: the corpus of bad ones, the good ones of each algorithm, key rotation, roles."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from provisioner.core.errors import ConfigurationError
from provisioner.edge.auth import (
    ADMINS,
    ANY_CALLER,
    READERS,
    Authenticator,
    Identity,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    authorize,
    mint_token,
    roles_needed,
)

SECRET = "a-development-secret-of-at-least-32-chars"
SERVICE = "/provisioning.v1.ProvisioningService"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    found: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**found, "kid": kid, **extra}


def write_jwks(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


@pytest.fixture
def jwks(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    return write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "rsa-1"), jwk(ec_key, "ec-1"))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"sub": "alice", "roles": ["admin"], "iat": now, "exp": now + 60}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def hs256(secret: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token assembled by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return f"{signing_input}.{b64(signature)}"


def make(jwks: Path | None = None, **options: Any) -> Authenticator:
    options.setdefault("secret", SECRET)
    return Authenticator(jwks_file=jwks, **options)


def refusal(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(UnauthenticatedError) as caught:
        authenticator.authenticate([f"Bearer {token}"])
    message = caught.value.message
    assert token not in message
    return message


# -- the corpus ------------------------------------------------------------------------------------


def test_alg_none_is_never_accepted(jwks: Path) -> None:
    token = forged({"alg": "none", "typ": "JWT"}, claims(), None)
    assert refusal(make(jwks), token) == "token algorithm is not allowed"
    token = forged({"alg": "None", "typ": "JWT", "kid": "rsa-1"}, claims(), None)
    assert refusal(make(jwks), token) == "token algorithm is not allowed"


def test_hs256_signed_with_the_public_key_is_refused(jwks: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for header in ({"alg": "HS256", "kid": "rsa-1"}, {"alg": "HS256"}):
        token = forged(header, claims(), pem)
        # The HS256 slot only ever holds the shared secret.
        assert refusal(make(jwks), token) == "token signature is invalid"
        # And with no shared secret configured, HS256 has no key at all.
        assert refusal(make(jwks, secret=""), token) == "HS256 tokens are not accepted by this server"


def test_a_token_naming_a_key_of_another_type_is_refused(
    jwks: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert refusal(make(jwks), token) == "token algorithm does not match its key"
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert refusal(make(jwks), token) == "token algorithm does not match its key"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exp": None}, "token has no expiry"),
        ({"exp": "tomorrow"}, "token is malformed"),
        ({"exp": "4102444800"}, "token times are malformed"),
        ({"nbf": True}, "token times are malformed"),
        ({"iat": "now"}, "token times are malformed"),
        # Past every clock, or not finite: refused, never "valid forever" nor a crash.
        ({"exp": 10**400}, "token times are malformed"),
        ({"nbf": 10**400}, "token is not valid yet"),
        ({"exp": float("inf")}, "token is malformed"),
        ({"nbf": float("nan")}, "token is malformed"),
        ({"exp": 253_402_300_800}, "token times are malformed"),
        ({"sub": None}, "token has no subject"),
        ({"sub": ""}, "token has no subject"),
        ({"sub": 42}, "token has no subject"),
        ({"sub": "x" * 256}, "token subject is too long or not printable"),
        ({"sub": "alice\nadmin"}, "token subject is too long or not printable"),
        ({"roles": "admin"}, "token roles claim must be a list of strings"),
        ({"roles": ["admin", 1]}, "token roles claim must be a list of strings"),
    ],
)
def test_bad_claims_are_refused_with_one_sentence(overrides: dict[str, Any], message: str) -> None:
    assert refusal(make(), hs256(**overrides)) == message


def test_leeway_tolerates_small_clock_skew_only() -> None:
    now = int(time.time())
    assert make().verify(hs256(exp=now - 8, nbf=now + 8, iat=now + 8)).principal == "alice"
    assert refusal(make(), hs256(exp=now - 11)) == "token expired"
    assert refusal(make(), hs256(nbf=now + 12)) == "token is not valid yet"
    assert refusal(make(), hs256(iat=now + 12)) == "token is not valid yet"
    assert refusal(make(leeway=0), hs256(exp=now)) == "token expired"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    strict = make(issuer="https://issuer.example", audience="provisioner")
    good = hs256(iss="https://issuer.example", aud=["other", "provisioner"])
    assert strict.verify(good).principal == "alice"
    issuer, audience = "token issuer is not accepted", "token audience is not accepted"
    assert refusal(strict, hs256(iss="https://evil.example", aud="provisioner")) == issuer
    assert refusal(strict, hs256(aud="provisioner")) == issuer
    assert refusal(strict, hs256(iss="https://issuer.example", aud="other")) == audience
    assert refusal(strict, hs256(iss="https://issuer.example")) == audience
    # Not configured: whatever the token says is fine.
    assert make().verify(hs256(iss="anyone", aud="anything")).principal == "alice"


def test_bad_signatures_are_refused(jwks: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    other_secret = "another-secret-that-is-also-32-chars-long"
    assert refusal(make(), hs256(secret=other_secret)) == "token signature is invalid"
    header, _, signature = hs256().split(".")
    tampered_payload = b64(json.dumps(claims(sub="mallory")).encode())
    assert refusal(make(), f"{header}.{tampered_payload}.{signature}") == "token signature is invalid"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-1"})
    assert refusal(make(jwks), token) == "token signature is invalid"


def test_key_ids_must_name_a_known_key(jwks: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-9"})
    assert refusal(make(jwks), unknown) == "unknown key id"
    assert refusal(make(jwks), jwt.encode(claims(), rsa_key, algorithm="RS256")) == "token has no key id"
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert refusal(make(None), token) == "unknown key id"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "token is malformed"),
        ("a.b.c", "token is malformed"),
        ("....", "token is malformed"),
        ("e30.e30.", "token algorithm is not allowed"),  # a header without alg
        ("eyJhbGciOiJIUzI1NiJ9.W10.x", "token is malformed"),  # a signature that is not base64
    ],
)
def test_malformed_tokens_are_refused(token: str, message: str) -> None:
    assert refusal(make(), token) == message


def test_a_payload_that_is_not_an_object_is_malformed() -> None:
    token = forged({"alg": "HS256"}, [], SECRET.encode())  # type: ignore[arg-type]
    assert refusal(make(), token) == "token is malformed"


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ([], "missing bearer token"),
        (["Bearer"], "empty bearer token"),
        (["Bearer   "], "empty bearer token"),
        (["Basic YWxpY2U6aHVudGVyMg=="], "authorization must be 'Bearer <token>'"),
        (["Bearer a", "Bearer b"], "send one authorization header, not several"),
    ],
)
def test_the_authorization_header_must_hold_one_bearer_token(authorization: list[str], message: str) -> None:
    with pytest.raises(UnauthenticatedError) as caught:
        make().authenticate(authorization)
    assert caught.value.message == message
    assert caught.value.reason == "UNAUTHENTICATED"


# -- good tokens -----------------------------------------------------------------------------------


def test_good_tokens_of_every_algorithm(
    jwks: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    authenticator = make(jwks)
    tokens = {
        "HS256": hs256(),
        "RS256": jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
        "ES256": jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"}),
    }
    for token in tokens.values():
        assert authenticator.authenticate([f"Bearer {token}"]) == Identity("alice", frozenset({Role.ADMIN}))
    # The scheme is case-insensitive, as in HTTP.
    assert authenticator.authenticate([f"bearer {tokens['HS256']}"]).principal == "alice"


def test_roles_we_do_not_know_are_ignored() -> None:
    identity = make().verify(hs256(roles=["viewer", "root", "ADMIN"]))
    assert identity.roles == frozenset({Role.VIEWER})
    assert make().verify(hs256(roles=None)).roles == frozenset()


def test_mint_token_makes_what_the_authenticator_accepts() -> None:
    token = mint_token(SECRET, "bob", ["viewer"], ttl=60, issuer="iss", audience="aud")
    assert make(issuer="iss", audience="aud").verify(token) == Identity("bob", frozenset({Role.VIEWER}))
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    stale = mint_token(SECRET, "bob", ["viewer"], ttl=60, now=time.time() - 71)
    with pytest.raises(UnauthenticatedError, match="token expired"):
        make().verify(stale)


# -- the JWKS file ---------------------------------------------------------------------------------


def test_the_jwks_file_is_reread_when_it_changes(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "2026-01"))
    authenticator = make(path, secret="")
    old = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "2026-01"})
    new = jwt.encode(claims(sub="bob"), ec_key, algorithm="ES256", headers={"kid": "2026-02"})
    assert authenticator.verify(old).principal == "alice"
    assert refusal(authenticator, new) == "unknown key id"

    # Rotation: the new key published beside the old, then the old one retired.
    write_jwks(path, jwk(rsa_key, "2026-01"), jwk(ec_key, "2026-02"))
    assert authenticator.verify(new).principal == "bob"
    assert authenticator.verify(old).principal == "alice"
    write_jwks(path, jwk(ec_key, "2026-02"))
    assert refusal(authenticator, old) == "unknown key id"

    # A broken file keeps the last good keys and is reported once.
    with caplog.at_level(logging.WARNING, logger="provisioner.edge.auth"):
        path.write_text('{"keys": [')
        assert authenticator.verify(new).principal == "bob"
        assert authenticator.verify(new).principal == "bob"
        path.unlink()
        assert authenticator.verify(new).principal == "bob"
        assert authenticator.verify(new).principal == "bob"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["JWKS file unusable; keeping the last good keys"] * 2
    write_jwks(path, jwk(rsa_key, "2026-01"))
    assert authenticator.verify(old).principal == "alice"


def test_unusable_jwks_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = write_jwks(
        tmp_path / "jwks.json",
        jwk(p384, "p384"),
        jwk(rsa_key, "rs512", alg="RS512"),
        jwk(rsa_key, "enc", use="enc"),
        {"kty": "oct", "k": b64(SECRET.encode()), "kid": "hmac"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        {"kty": "RSA"},
        jwk(rsa_key, "good"),
        jwk(rsa_key, "good"),
    )
    with caplog.at_level(logging.WARNING):
        authenticator = make(path, secret="")
    assert len(caplog.records) == 7
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    token = jwt.encode(claims(), p384, algorithm="ES384", headers={"kid": "p384"})
    assert refusal(authenticator, token) == "token algorithm is not allowed"
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rs512"})
    assert refusal(authenticator, token) == "unknown key id"
    hmac_token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "hmac"})
    assert refusal(authenticator, hmac_token) == "HS256 tokens are not accepted by this server"
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "good"})
    assert authenticator.verify(token).principal == "alice"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: Authenticator(), "a JWT secret, a JWKS file or a JWKS URL"),
        (lambda p: Authenticator(secret="short"), "at least 32 characters"),
        (lambda p: Authenticator(secret=SECRET, leeway=-1), "leeway"),
        (lambda p: Authenticator(jwks_file=p / "missing.json"), "cannot use the JWKS file"),
        (lambda p: Authenticator(jwks_file=write_jwks(p / "x.json") and p / "x.json"), None),
    ],
)
def test_configuration_is_checked_when_built(
    tmp_path: Path, build: Callable[[Path], Authenticator], message: str | None
) -> None:
    if message is None:
        build(tmp_path)  # an empty but well-formed JWKS is a deliberate statement
        return
    with pytest.raises(ConfigurationError, match=message):
        build(tmp_path)


def test_a_jwks_file_that_is_not_a_jwks_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('["not", "a", "jwks"]')
    with pytest.raises(ConfigurationError, match='"keys" list'):
        Authenticator(jwks_file=path)
    os.chmod(path, 0o000)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigurationError):
            Authenticator(jwks_file=path)


# -- the role matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "needed"),
    [
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", None),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None),
        (f"{SERVICE}/Provision", ADMINS),
        (f"{SERVICE}/Deprovision", ADMINS),
        (f"{SERVICE}/GetStatus", READERS),
        (f"{SERVICE}/WatchProgress", READERS),
        (f"{SERVICE}/ListJobs", READERS),
        (f"{SERVICE}/ListAuditEvents", ADMINS),
        (f"{SERVICE}/CancelJob", ADMINS),
        (f"{SERVICE}/NoSuchMethod", READERS),
        ("/some.other.Service/Method", ANY_CALLER),
        ("/grpc.health.v1.Health/Check/extra", ANY_CALLER),
        ("/grpc.health.v1.Health/", ANY_CALLER),
        ("garbage", ANY_CALLER),
    ],
)
def test_roles_needed_by_method(method: str, needed: frozenset[Role] | None) -> None:
    assert roles_needed(method) == needed


def test_authorize_names_the_role_that_is_missing() -> None:
    viewer = Identity("victor", frozenset({Role.VIEWER}))
    nobody = Identity("nora", frozenset())
    authorize(viewer, f"{SERVICE}/GetStatus")
    authorize(nobody, "/some.other.Service/Method")
    with pytest.raises(PermissionDeniedError) as caught:
        authorize(viewer, f"{SERVICE}/Provision")
    assert caught.value.message == "Provision needs the admin role"
    assert caught.value.required_role is Role.ADMIN
    with pytest.raises(PermissionDeniedError) as caught:
        authorize(nobody, f"{SERVICE}/GetStatus")
    assert caught.value.message == "GetStatus needs the viewer role"
