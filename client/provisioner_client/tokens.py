"""Development tokens: HS256 JWTs with the claims the server checks.

The principal is `sub`; roles are the string array `roles`; `iss` and `aud` are added
when the server is configured to check them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

from provisioner_client.config import JWT_SECRET_ENV, TokenSettings
from provisioner_client.errors import ConfigurationError

ROLES = ("admin", "viewer")
#: HS256 needs 256 bits; the server refuses a shorter secret, so we do too.
MIN_SECRET_LENGTH = 32
DEFAULT_TTL = 3600.0


def mint_token(
    settings: TokenSettings,
    *,
    roles: Sequence[str],
    subject: str,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """A signed token for `subject` with `roles`, valid from `now` for `ttl` seconds."""
    if not settings.secret:
        raise ConfigurationError(
            f"{JWT_SECRET_ENV} is not set: set it to the server's secret (a server started without "
            "one keeps its own in $PROVISIONER_STATE_DIR/jwt-secret, by default ./var/jwt-secret)"
        )
    if len(settings.secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(
            f"{JWT_SECRET_ENV} is too short: use at least {MIN_SECRET_LENGTH} characters "
            "(HS256 needs 256 bits)"
        )
    unknown = sorted(set(roles) - set(ROLES))
    if not roles or unknown:
        raise ConfigurationError(
            f"roles must be among {', '.join(ROLES)}; got {', '.join(unknown) or 'none'}"
        )
    if not subject.strip():
        raise ConfigurationError("the token's subject must not be empty")
    if ttl <= 0:
        raise ConfigurationError("the token's lifetime must be more than 0 seconds")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": subject,
        "roles": list(dict.fromkeys(roles)),
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl),
    }
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    return jwt.encode(claims, settings.secret, algorithm="HS256")


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `12h` or `7d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:], 0)
    number = value[:-1] if scale else value
    scale = scale or 1
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 3600, 15m, 12h or 7d") from None
    if seconds <= 0:
        raise ValueError(f"{text!r} must be more than 0 seconds")
    return seconds
