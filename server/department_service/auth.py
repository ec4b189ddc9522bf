"""Client authentication: HTTP Basic with the department's OAuth client (RFC 6749 §2.3.1).

`credentials.json` holds the client id and the SHA-256 of the secret, never the secret.
`parse_credentials` and `authenticate` are pure; `load_credentials` is the only file access.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

from department_service.errors import Unauthorized

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Credentials:
    """The department's client: its id and the lowercase hex SHA-256 of its secret."""

    client_id: str
    secret_sha256: str
    revoked: bool


def parse_credentials(text: str) -> Credentials:
    """Parse credentials.json; ValueError says what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"credentials.json is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("credentials.json is not a JSON object")
    client_id, digest, revoked = data.get("client_id"), data.get("secret_sha256"), data.get("revoked", False)
    if not isinstance(client_id, str) or not client_id:
        raise ValueError("credentials.json: client_id must be a non-empty string")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
        raise ValueError("credentials.json: secret_sha256 must be 64 hex digits")
    if not isinstance(revoked, bool):
        raise ValueError("credentials.json: revoked must be true or false")
    return Credentials(client_id, digest.lower(), revoked)


def credentials_from_environment(env: Mapping[str, str]) -> Credentials:
    """`CLIENT_ID` and `CLIENT_SECRET_SHA256`, as a container platform passes them; ValueError if unusable."""
    client_id, digest = env.get("CLIENT_ID", ""), env.get("CLIENT_SECRET_SHA256", "").lower()
    if not client_id:
        raise ValueError("CLIENT_ID must be set to the department's client id")
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError("CLIENT_SECRET_SHA256 must be the 64 hex digits of the secret's SHA-256")
    return Credentials(client_id, digest, revoked=False)


def load_credentials(path: Path) -> Credentials:
    """Read credentials.json afresh; Unauthorized (with a log-only reason) if it is not usable.

    Read on every call rather than cached by mtime: the file is a few bytes, and file
    timestamps are too coarse to notice two writes within a few milliseconds, so a cache
    could let a revoked client through.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise Unauthorized("credentials.json is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Unauthorized(f"credentials.json is unreadable: {exc}") from exc
    try:
        return parse_credentials(text)
    except ValueError as exc:
        raise Unauthorized(str(exc)) from exc


def parse_basic(header: str | None) -> tuple[str, str]:
    """The (client_id, client_secret) of an `Authorization: Basic` header.

    Both halves are form-urlencoded before base64, as RFC 6749 §2.3.1 requires; decoding
    is the identity for the usual URL-safe ids and secrets.
    """
    if not header:
        raise Unauthorized("no Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        raise Unauthorized("Authorization is not Basic")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("Authorization is not valid base64 UTF-8") from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise Unauthorized("Authorization has no client_id:client_secret pair")
    return unquote_plus(client_id), unquote_plus(secret)


def authenticate(header: str | None, credentials: Credentials) -> str:
    """Return the client id if `header` presents this department's client, else raise Unauthorized.

    Both the id and the secret's digest are compared in constant time, and both are always
    compared, so the response time does not tell which one was wrong.
    """
    if credentials.revoked:
        raise Unauthorized("client credentials are revoked")
    client_id, secret = parse_basic(header)
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    id_ok = hmac.compare_digest(client_id.encode("utf-8"), credentials.client_id.encode("utf-8"))
    secret_ok = hmac.compare_digest(digest.encode("ascii"), credentials.secret_sha256.encode("ascii"))
    if not (id_ok & secret_ok):
        raise Unauthorized("wrong client id or secret")
    return client_id


def credentials_state(path: Path) -> str:
    """The state /healthz shows: ok, revoked, missing or invalid (and nothing more)."""
    try:
        credentials = load_credentials(path)
    except Unauthorized:
        return "missing" if not path.exists() else "invalid"
    return "revoked" if credentials.revoked else "ok"
