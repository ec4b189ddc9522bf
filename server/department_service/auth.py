"""Who may call: a Bearer access token (RFC 6750) from the platform's authorization server.

A token is accepted when it is an RFC 9068 JWT (`typ: at+jwt`, ES256) signed by one of the
platform's published keys, issued by `OAUTH_ISSUER` for this department's audience (its
URL through the gateway), unexpired, and given to the department's *current* client: the
client id in `credentials.json` (or `CLIENT_ID`), which the control plane removes or marks
revoked the moment it revokes the client. So a revoked client's tokens stop working at
once, not at their expiry. Each route then needs its scope (`workflows:run`,
`executions:read`, `files:read`): a token without it gets 403 `insufficient_scope`.

The keys come from a file the control plane keeps up to date (`OAUTH_JWKS_FILE`, on the
same machine) or from its URL (`OAUTH_JWKS_URL`), fetched again when a token names a key
not yet known, at most every `REFETCH_INTERVAL` seconds; while they cannot be had, calls
get 503 (`keys_unavailable`), not 401: the caller did nothing wrong. `parse_credentials`,
`bearer_token` and `TokenVerifier.verify` do no I/O of their own; the key sources and
`load_credentials` do.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from department_service.errors import Forbidden, KeysUnavailable, Unauthorized

if TYPE_CHECKING:
    import jwt

ALGORITHMS = ["ES256"]
LEEWAY = 30  # seconds of clock difference tolerated on exp and iat
REFETCH_INTERVAL = 30.0
MAX_TOKEN = 4096
MAX_JWKS_BYTES = 64 * 1024
# The built-in server's ids are `<department>.<hex>`; an external one's are its own choice.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


@dataclass(frozen=True)
class Credentials:
    """The department's current client, as the control plane published it."""

    client_id: str
    revoked: bool = False


@dataclass(frozen=True)
class Caller:
    client_id: str
    scopes: frozenset[str]


def audience_of(issuer: str, department_id: str) -> str:
    """The department's audience: its URL through the gateway (the control plane's
    `provisioner.core.oauth.audience_of`; the service stands alone, so it is repeated)."""
    return f"{issuer.rstrip('/')}/departments/{department_id}/"


def parse_credentials(text: str) -> Credentials:
    """Parse credentials.json; ValueError says what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"credentials.json is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("credentials.json is not a JSON object")
    client_id, revoked = data.get("client_id"), data.get("revoked", False)
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise ValueError("credentials.json: client_id must be 1-128 letters, digits and . _ ~ -")
    if not isinstance(revoked, bool):
        raise ValueError("credentials.json: revoked must be true or false")
    return Credentials(client_id, revoked)


def credentials_from_environment(env: Mapping[str, str]) -> Credentials:
    """`CLIENT_ID`, as a container platform passes it; ValueError if unusable."""
    client_id = env.get("CLIENT_ID", "")
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError("CLIENT_ID must be set to the department's client id")
    return Credentials(client_id)


def load_credentials(path: Path) -> Credentials:
    """Read credentials.json afresh; Unauthorized (with a log-only reason) if it is not usable.

    Read on every call rather than cached by mtime: the file is a few bytes, and file
    timestamps are too coarse to notice two writes within a few milliseconds, so a cache
    could let a revoked client through.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise Unauthorized("credentials.json is missing: the client is revoked") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Unauthorized(f"credentials.json is unreadable: {exc}") from exc
    try:
        return parse_credentials(text)
    except ValueError as exc:
        raise Unauthorized(str(exc)) from exc


def credentials_state(path: Path) -> str:
    """The state /healthz shows: ok, revoked, missing or invalid (and nothing more)."""
    try:
        credentials = load_credentials(path)
    except Unauthorized:
        return "missing" if not path.exists() else "invalid"
    return "revoked" if credentials.revoked else "ok"


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer` header (RFC 6750 §2.1)."""
    if not header:
        raise Unauthorized("no Authorization header", token_error=False)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("Authorization is not Bearer (get a token at the platform's /oauth2/token)")
    token = token.strip()
    if not token or len(token) > MAX_TOKEN:
        raise Unauthorized("the Bearer token is empty or too long")
    return token


def warm_up() -> None:
    """Import what checking a token needs (PyJWT, cryptography): deferred so that the
    service starts listening sooner, and done on a thread right after (see `cli`)."""
    import urllib.request  # noqa: F401

    from jwt.algorithms import ECAlgorithm  # noqa: F401


class KeySource(Protocol):
    def key(self, kid: str) -> jwt.PyJWK | None:
        """The published key `kid`, or None if there is none by that id."""


class _Keys:
    """A parsed key set, kept while the text it came from is the same."""

    def __init__(self) -> None:
        self._text: bytes | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._lock = threading.Lock()

    def parsed(self, text: bytes) -> dict[str, jwt.PyJWK]:
        import jwt

        with self._lock:
            if text != self._text:
                try:
                    published = json.loads(text.decode("utf-8"))
                    # An empty set is a set with no keys yet, not an error.
                    keys = jwt.PyJWKSet.from_dict(published).keys if published.get("keys") else []
                except (
                    jwt.PyJWKSetError,
                    jwt.InvalidKeyError,
                    UnicodeDecodeError,
                    ValueError,
                    AttributeError,
                ) as exc:
                    raise Unauthorized(f"the published key set is unusable: {exc}") from exc
                self._keys = {key.key_id: key for key in keys if key.key_id}
                self._text = text
            return self._keys


class JwksFile:
    """Keys from the file the control plane writes beside its department services."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys = _Keys()

    def key(self, kid: str) -> jwt.PyJWK | None:
        try:
            with self.path.open("rb") as handle:
                text = handle.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise KeysUnavailable(f"the published key set cannot be read: {exc.strerror or exc}") from exc
        if len(text) > MAX_JWKS_BYTES:
            raise KeysUnavailable("the published key set is too large")
        return self._keys.parsed(text).get(kid)


class JwksUrl:
    """Keys from the authorization server's jwks_uri, fetched again for an unknown key id
    at most every REFETCH_INTERVAL seconds (so unknown ids cannot make it fetch per request)."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("OAUTH_JWKS_URL must be an http:// or https:// URL")
        import ssl

        self.url = url
        self._context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
        self._timeout = timeout
        self._clock = clock
        self._keys = _Keys()
        self._text: bytes | None = None
        self._fetched = -float("inf")
        self._lock = threading.Lock()

    def key(self, kid: str) -> jwt.PyJWK | None:
        if self._text is not None:
            found = self._keys.parsed(self._text).get(kid)
            if found is not None:
                return found
        with self._lock:
            if self._clock() - self._fetched >= REFETCH_INTERVAL or self._text is None:
                self._fetched = self._clock()
                self._text = self._fetch()
        return self._keys.parsed(self._text).get(kid)

    def _fetch(self) -> bytes:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
        # Twice at most: the issuer is a load-balanced URL, and a connection that a
        # stopping replica drops is worth one more try (a GET, safe to repeat).
        for attempt in (1, 2):
            try:
                with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as answer:  # noqa: S310
                    text: bytes = answer.read(MAX_JWKS_BYTES + 1)
                break
            except urllib.error.HTTPError as exc:
                raise KeysUnavailable(f"the published key set cannot be fetched: {exc}") from exc
            except OSError as exc:
                if attempt == 2:
                    raise KeysUnavailable(f"the published key set cannot be fetched: {exc}") from exc
        if len(text) > MAX_JWKS_BYTES:
            raise KeysUnavailable("the published key set is too large")
        return text


class TokenVerifier:
    """Checks access tokens for one department."""

    def __init__(
        self, issuer: str, department_id: str, keys: KeySource, *, audience: str | None = None
    ) -> None:
        """`audience`: the department's own, by default its URL under the issuer's."""
        self.issuer = issuer.rstrip("/")
        self.audience = audience or audience_of(issuer, department_id)
        self._keys = keys

    def verify(self, header: str | None, credentials: Credentials, scope: str) -> Caller:
        """The caller, if the header carries a valid token of the current client with `scope`."""
        import jwt

        token = bearer_token(header)
        try:
            unverified = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is not a JWT: {exc}") from exc
        if unverified.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
            raise Unauthorized("the token is not an access token (typ is not at+jwt)")
        kid = unverified.get("kid")
        key = self._keys.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthorized(f"the token's key {kid!r} is not one of the platform's")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["iss", "aud", "exp", "iat", "sub", "client_id", "jti"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is not valid here: {exc}") from exc
        client_id, scopes = claims.get("client_id"), claims.get("scope", "")
        if not isinstance(client_id, str) or not isinstance(scopes, str):
            raise Unauthorized("the token's client_id or scope is not a string")
        if credentials.revoked or client_id != credentials.client_id:
            raise Unauthorized("the token's client is not the department's current client (revoked)")
        granted = frozenset(scopes.split())
        if scope not in granted:
            raise Forbidden(scope)
        return Caller(client_id, granted)
