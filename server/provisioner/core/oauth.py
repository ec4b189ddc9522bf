"""The OAuth 2.0 token endpoint's rules, as pure functions: reading the request, the
client's authentication, the scope, and an access token's claims.

Client credentials grant only (RFC 6749 §4.4), with the client authenticated by HTTP Basic
or by form parameters (§2.3.1), never both (§2.3). Errors are `OAuthError`s carrying the
§5.2 code and HTTP status; the HTTP adapter writes them. Access tokens follow RFC 9068:
`iss`, `sub` and `client_id` (the client), `aud` (the department's own URL), `scope`,
`iat`, `exp` and `jti`, in a JWT whose header says `typ: at+jwt`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote_plus

from provisioner.core.spec import check_department_id

GRANT_TYPE = "client_credentials"
SCOPES = ("workflows:run", "executions:read", "files:read")
"""What a department's client may do at its department; a token without `scope` asked gets all."""
FORM = "application/x-www-form-urlencoded"
MAX_FIELD = 512  # characters of any one form value or credential


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` is the code, `description` is for a person."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        basic_challenge: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        #: Answer 401 with `WWW-Authenticate: Basic` (the client tried Basic, §5.2).
        self.basic_challenge = basic_challenge
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ClientAuthentication:
    client_id: str
    secret: str
    method: str  # client_secret_basic or client_secret_post


def parse_form(content_type: str | None, body: bytes) -> dict[str, str]:
    """The request's parameters; each may appear once (§3.2), and only in a form body."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != FORM:
        raise OAuthError("invalid_request", f"the token request must be sent as {FORM}")
    try:
        fields = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=20
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", f"the form cannot be read: {exc}") from exc
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:
        raise OAuthError("invalid_request", f"parameters given more than once: {', '.join(repeated)}")
    too_long = sorted(name for name, values in fields.items() if len(values[0]) > MAX_FIELD)
    if too_long:
        raise OAuthError("invalid_request", f"parameters over {MAX_FIELD} characters: {', '.join(too_long)}")
    return {name: values[0] for name, values in fields.items()}


def authenticate_request(authorization: str | None, form: Mapping[str, str]) -> ClientAuthentication:
    """Who the client says it is, by exactly one method (§2.3); invalid_client otherwise."""
    in_form = "client_secret" in form
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "authenticate with HTTP Basic or client_secret", status=401)
        if in_form:
            raise OAuthError(
                "invalid_request", "use one client authentication method, not Basic and the form"
            )
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(
                "invalid_client", "Authorization is not valid Basic", status=401, basic_challenge=True
            ) from None
        client_id, colon, secret = decoded.partition(":")
        if not colon or len(decoded) > 2 * MAX_FIELD:
            raise OAuthError(
                "invalid_client", "Authorization is not valid Basic", status=401, basic_challenge=True
            )
        # Both halves are form-urlencoded before base64 (§2.3.1).
        return ClientAuthentication(unquote_plus(client_id), unquote_plus(secret), "client_secret_basic")
    if in_form:
        if not form.get("client_id"):
            raise OAuthError("invalid_request", "client_secret was given without client_id")
        return ClientAuthentication(form["client_id"], form["client_secret"], "client_secret_post")
    raise OAuthError("invalid_client", "the client did not authenticate", status=401, basic_challenge=True)


def department_of(client_id: str) -> str | None:
    """The department a client id belongs to (ids are `<department>.<random>`), or None."""
    department_id, dot, rest = client_id.partition(".")
    if not dot or not rest or check_department_id(department_id):
        return None
    return department_id


def granted_scope(requested: str | None, allowed: Sequence[str] = SCOPES) -> tuple[str, ...]:
    """The scopes a token gets: those asked for (§3.3), all of `allowed` when none are."""
    if requested is None or not requested.strip():
        return tuple(allowed)
    asked = tuple(dict.fromkeys(requested.split()))
    unknown = [scope for scope in asked if scope not in allowed]
    if unknown:
        raise OAuthError("invalid_scope", f"unknown scopes: {' '.join(unknown)} (known: {' '.join(allowed)})")
    return asked


def audience_of(issuer: str, department_id: str) -> str:
    """A department's audience: its URL through the gateway (a resource indicator, RFC 8707)."""
    return f"{issuer.rstrip('/')}/departments/{department_id}/"


def access_token_claims(
    *, issuer: str, client_id: str, department_id: str, scope: Sequence[str], now: int, ttl: int, jti: str
) -> dict[str, object]:
    """The claims of an access token, as RFC 9068 §2.2 lists them."""
    return {
        "iss": issuer,
        "sub": client_id,
        "client_id": client_id,
        "aud": audience_of(issuer, department_id),
        "scope": " ".join(scope),
        "iat": now,
        "exp": now + ttl,
        "jti": jti,
    }


def metadata(issuer: str) -> dict[str, object]:
    """The authorization server's metadata (RFC 8414)."""
    base = issuer.rstrip("/")
    return {
        "issuer": base,
        "token_endpoint": f"{base}/oauth2/token",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "grant_types_supported": [GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": list(SCOPES),
        "response_types_supported": [],
    }
