"""Who is calling and what they may do: JWT bearer tokens and the role matrix.

Plain Python over PyJWT, no grpc: the authentication interceptor hands this module the
`authorization` metadata and the method name, and maps what it raises to a status.

Keys and algorithms. A token is verified with exactly one key, and the key decides the
algorithm: the shared secret only ever verifies HS256, an RSA key from the JWKS file only
RS256, a P-256 EC key only ES256. The header's `alg` merely says which kind of key to look
for; it is never trusted to pick the algorithm for a key, so an HS256 token "signed" with a
public key (the classic confusion attack) finds no key to be verified with, and `none` is
never accepted. RS256/ES256 tokens name their key by `kid`; HS256 tokens need none.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from provisioner.core.errors import ConfigurationError, ProvisioningError

if TYPE_CHECKING:
    from provisioner.edge.jwks_url import JwksUrl

log = logging.getLogger(__name__)

SERVICE = "provisioning.v1.ProvisioningService"
PROVISION = f"/{SERVICE}/Provision"
DEPROVISION = f"/{SERVICE}/Deprovision"
#: The audit log says who did what: admins only.
LIST_AUDIT_EVENTS = f"/{SERVICE}/ListAuditEvents"
CANCEL_JOB = f"/{SERVICE}/CancelJob"
#: Services anyone may call: health checks and reflection (what `grpcurl` needs).
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
MIN_SECRET_LENGTH = 32
#: The audit log's principal column is this wide; a longer `sub` could not be recorded.
MAX_SUBJECT_LENGTH = 255


class Role(enum.StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"


ADMINS = frozenset({Role.ADMIN})
READERS = frozenset({Role.VIEWER, Role.ADMIN})
ANY_CALLER: frozenset[Role] = frozenset()


class UnauthenticatedError(ProvisioningError):
    """No token, or a token we cannot trust; the message never repeats the token."""

    reason = "UNAUTHENTICATED"


class UnknownKeyError(UnauthenticatedError):
    """The token names a key id this server does not hold (yet: a provider may have rotated)."""

    def __init__(self, kid: str) -> None:
        super().__init__("unknown key id")
        self.kid = kid


class PermissionDeniedError(ProvisioningError):
    """A trusted caller without the role the method needs."""

    reason = "PERMISSION_DENIED"

    def __init__(self, message: str, *, required_role: Role) -> None:
        super().__init__(message)
        self.required_role = required_role


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: the token's `sub` and the roles we know among its `roles`."""

    principal: str
    roles: frozenset[Role]


def roles_needed(method: str) -> frozenset[Role] | None:
    """The roles that may call `method` (`/package.Service/Method`), any one sufficing.

    None: public, no token needed. `ANY_CALLER` (empty): any valid token, which is what an
    unknown method gets, so that nobody learns what exists without a token.
    """
    service, _, name = method.removeprefix("/").partition("/")
    if service in PUBLIC_SERVICES and name and "/" not in name:
        return None
    if method in (PROVISION, DEPROVISION, CANCEL_JOB, LIST_AUDIT_EVENTS):
        return ADMINS
    return READERS if service == SERVICE else ANY_CALLER


def authorize(identity: Identity, method: str) -> None:
    """Raise `PermissionDeniedError` unless `identity` holds a role `method` accepts."""
    needed = roles_needed(method)
    if not needed or identity.roles & needed:
        return
    # Name the least the caller needs: viewer where a viewer would do.
    role = Role.VIEWER if Role.VIEWER in needed else Role.ADMIN
    raise PermissionDeniedError(f"{method.rpartition('/')[2]} needs the {role} role", required_role=role)


# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key and the one algorithm it verifies."""

    algorithm: str
    key: Any


def _public(key: Any) -> Any:
    # A JWKS should hold public keys only; if someone published a private one, verify with
    # its public half all the same.
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key.public_key()
    return key


def _verification_key(jwk: Mapping[str, Any]) -> VerificationKey | str:
    """The key a JWK describes, or why it cannot be used (without any key material)."""
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    parse: Callable[[dict[str, Any]], Any]
    if kty == "RSA":
        algorithm, parse = "RS256", RSAAlgorithm.from_jwk
    elif kty == "EC" and crv == "P-256":
        algorithm, parse = "ES256", ECAlgorithm.from_jwk
    else:
        return "only RSA and P-256 EC keys are supported"
    if alg not in (None, algorithm):
        return f"a {kty} key is used with {algorithm} only"
    if jwk.get("use") not in (None, "sig"):
        return "not a signature key"
    try:
        return VerificationKey(algorithm, _public(parse(dict(jwk))))
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return "malformed key"


def parse_jwks(text: str) -> dict[str, VerificationKey]:
    """Keys by `kid` from a JWKS document. Unusable keys are skipped with a warning; a
    document that is not a JWKS at all raises `ValueError`."""
    document = json.loads(text)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object with a "keys" list')
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(document["keys"]):
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if not isinstance(kid, str) or not kid:
            log.warning("JWKS key #%d skipped: it has no kid", index)
            continue
        found = _verification_key(jwk)
        if isinstance(found, str):
            log.warning("JWKS key %r skipped: %s", kid, found)
        elif kid in keys:
            log.warning("JWKS key %r skipped: its kid is used twice", kid)
        else:
            keys[kid] = found
    return keys


class JwksFile:
    """The keys of a JWKS file, re-read whenever the file changes (rotation without restart).

    A version of the file that cannot be read or parsed is reported once and ignored: the
    last good keys stay in use until the next change.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._stamp: tuple[int, int, int] | None = self._stat()
            self._keys = parse_jwks(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot use the JWKS file {path}: {_why(exc)}") from exc

    def _stat(self) -> tuple[int, int, int]:
        # The inode too: an atomic rename may keep the size and, within the clock's
        # resolution, the mtime.
        stat = os.stat(self._path)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def get(self, kid: str) -> VerificationKey | None:
        self._refresh()
        return self._keys.get(kid)

    def _refresh(self) -> None:
        try:
            stamp: tuple[int, int, int] | None = self._stat()
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        # Remembered even when this version is broken: it is reported once, not per call.
        self._stamp = stamp
        fields: dict[str, Any] = {"path": str(self._path)}
        try:
            self._keys = parse_jwks(self._path.read_text())
        except (OSError, ValueError) as exc:
            fields["problem"] = _why(exc)
            log.warning("JWKS file unusable; keeping the last good keys", extra={"fields": fields})
            return
        fields["keys"] = len(self._keys)
        log.info("JWKS file reloaded", extra={"fields": fields})


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# -- tokens --------------------------------------------------------------------------------------

#: The latest NumericDate taken (9999-12-31T23:59:59Z): a later time is malformed, not
#: "valid forever".
_LAST_DATE = 253_402_300_799
_TIMES = ("exp", "nbf", "iat")
_MESSAGES: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidIssuedAtError, "token times are malformed"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.exceptions.InvalidSubjectError, "token has no subject"),
)
_MISSING = {
    "exp": "token has no expiry",
    "sub": "token has no subject",
    "iss": "token issuer is not accepted",
    "aud": "token audience is not accepted",
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sane_time(value: Any) -> bool:
    """A NumericDate: a JSON number within years 0001-9999. PyJWT's checks take `true`
    for 1, a numeric string for its number and 10^400 for a time."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) <= _LAST_DATE  # False for inf and nan too


def _refusal_message(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _MISSING.get(exc.claim, "token is malformed")
    return next((message for kind, message in _MESSAGES if isinstance(exc, kind)), "token is malformed")


class Authenticator:
    """Verifies bearer tokens; the composition root builds one per server.

    Args:
        secret: HS256 shared secret, at least 32 characters; empty to refuse HS256 tokens.
        jwks_file: a JWKS file of RS256 (RSA) and ES256 (P-256 EC) public keys, selected by
            the token's `kid` and re-read when the file changes; None for none.
        jwks_url: the same keys from an identity provider's URL (`edge.jwks_url`), loaded.
        issuer: when set, the `iss` every token must carry.
        audience: when set, the audience every token's `aud` must include.
        leeway: seconds of clock skew tolerated on `exp`, `nbf` and `iat`.

    PyJWT checks the signature and the registered claims against the system clock: `exp`
    and `sub` required, `nbf` and `iat` when present, `iss` and `aud` when configured.

    Raises `ConfigurationError` when neither a secret nor JWKS keys are given, the secret
    is too short, the leeway is negative or the JWKS file cannot be read at start.
    """

    def __init__(
        self,
        *,
        secret: str = "",
        jwks_file: Path | None = None,
        jwks_url: JwksUrl | None = None,
        issuer: str = "",
        audience: str = "",
        leeway: float = 10.0,
    ) -> None:
        if not secret and jwks_file is None and jwks_url is None:
            raise ConfigurationError("authentication needs a JWT secret, a JWKS file or a JWKS URL")
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(f"the JWT secret must have at least {MIN_SECRET_LENGTH} characters")
        if not (_number(leeway) and leeway >= 0):
            raise ConfigurationError(
                f"the JWT leeway must be a non-negative number of seconds, not {leeway!r}"
            )
        self._secret = secret
        self._jwks = JwksFile(jwks_file) if jwks_file is not None else None
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._leeway = float(leeway)
        self._options: Any = {"require": ["exp", "sub"], "verify_aud": bool(audience)}

    def authenticate(self, authorization: Sequence[str]) -> Identity:
        """The caller named by the values of the `authorization` metadata (normally one)."""
        if not authorization:
            raise UnauthenticatedError("missing bearer token")
        if len(authorization) > 1:
            raise UnauthenticatedError("send one authorization header, not several")
        scheme, _, token = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            raise UnauthenticatedError("authorization must be 'Bearer <token>'")
        token = token.strip()
        if not token:
            raise UnauthenticatedError("empty bearer token")
        return self.verify(token)

    async def authenticate_async(self, authorization: Sequence[str]) -> Identity:
        """`authenticate`, fetching the JWKS URL's keys again for a key id it does not know
        (rate-limited by `JwksUrl.refresh_for`)."""
        try:
            return self.authenticate(authorization)
        except UnknownKeyError as exc:
            if self._jwks_url is None or not await self._jwks_url.refresh_for(exc.kid):
                raise
        return self.authenticate(authorization)

    def verify(self, token: str) -> Identity:
        """The caller a bare JWT names, or `UnauthenticatedError` saying what is wrong."""
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                options=self._options,
                issuer=self._issuer or None,
                audience=self._audience or None,
                leeway=self._leeway,
            )
        except jwt.InvalidTokenError as exc:
            raise UnauthenticatedError(_refusal_message(exc)) from None
        return _identity(claims)

    def _key_for(self, token: str) -> VerificationKey:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise UnauthenticatedError("token is malformed") from None
        alg = header.get("alg")
        if alg == "HS256":
            if not self._secret:
                raise UnauthenticatedError("HS256 tokens are not accepted by this server")
            return VerificationKey("HS256", self._secret)
        if alg not in ("RS256", "ES256"):
            raise UnauthenticatedError("token algorithm is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnauthenticatedError("token has no key id")
        found = self._jwks.get(kid) if self._jwks is not None else None
        if found is None and self._jwks_url is not None:
            found = self._jwks_url.get(kid)
        if found is None:
            raise UnknownKeyError(kid)
        if found.algorithm != alg:
            raise UnauthenticatedError("token algorithm does not match its key")
        return found


def _identity(claims: dict[str, Any]) -> Identity:
    """The caller named by claims PyJWT has checked, or why they are unusable."""
    if not all(_sane_time(claims[name]) for name in _TIMES if name in claims):
        raise UnauthenticatedError("token times are malformed")
    subject = claims["sub"]
    if not subject.strip():
        raise UnauthenticatedError("token has no subject")
    if len(subject) > MAX_SUBJECT_LENGTH or not subject.isprintable():
        raise UnauthenticatedError("token subject is too long or not printable")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise UnauthenticatedError("token roles claim must be a list of strings")
    known = {r.value for r in Role}
    return Identity(subject, frozenset(Role(r) for r in roles if r in known))


def mint_token(
    secret: str,
    subject: str,
    roles: Sequence[str],
    *,
    ttl: float = 3600.0,
    issuer: str = "",
    audience: str = "",
    now: float | None = None,
) -> str:
    """An HS256 token for `subject` with `roles`, valid for `ttl` seconds: for tests and
    development, never for production callers."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": subject, "roles": list(roles), "iat": int(issued)}
    claims["exp"] = int(issued + ttl)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
