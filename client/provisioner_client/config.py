"""Where the SDK finds its server and token: arguments first, then the environment.

The CLI and the SDK both read `PROVISIONER_SERVER` and `PROVISIONER_TOKEN` here and
nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from provisioner_client.errors import ConfigurationError

SERVER_ENV = "PROVISIONER_SERVER"
TOKEN_ENV = "PROVISIONER_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TARGET = "127.0.0.1:50051"
#: Seconds per unary call attempt.
DEFAULT_TIMEOUT = 10.0
#: The server sends a heartbeat every 15 s by default: a watch that hears nothing for four
#: of them is on a dead connection that TCP has not noticed yet.
DEFAULT_IDLE_TIMEOUT = 60.0

#: gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a CLI that waits for a
#: restarting server wants to see it back within a couple of seconds.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

_TLS_SCHEMES = ("https://", "grpcs://")
_PLAIN_SCHEMES = ("http://", "grpc://")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A gRPC target and whether to speak TLS to it."""

    target: str
    tls: bool = False

    def __str__(self) -> str:
        return self.target


def resolve_endpoint(server: str | None = None, env: Mapping[str, str] | None = None) -> Endpoint:
    """`server`, else `PROVISIONER_SERVER`, else 127.0.0.1:50051.

    `https://` or `grpcs://` in front selects TLS; a bare `host:port` is plaintext.
    """
    environ = os.environ if env is None else env
    text = (server or environ.get(SERVER_ENV, "") or DEFAULT_TARGET).strip()
    tls = text.startswith(_TLS_SCHEMES)
    for scheme in _TLS_SCHEMES + _PLAIN_SCHEMES:
        text = text.removeprefix(scheme)
    text = text.rstrip("/")
    if not text or any(c.isspace() for c in text):
        raise ConfigurationError(f"the server address {text!r} is not a host:port")
    return Endpoint(text, tls)


def resolve_token(token: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """`token`, else `PROVISIONER_TOKEN`, else none; checked so it can travel as metadata.

    The error never repeats the token: it is a credential.
    """
    environ = os.environ if env is None else env
    value = (token if token is not None else environ.get(TOKEN_ENV, "")).strip()
    value = value.removeprefix("Bearer ").strip()
    if not value:
        return None
    if not value.isascii() or not value.isprintable() or " " in value:
        source = "the --token value" if token is not None else TOKEN_ENV
        raise ConfigurationError(f"{source} is not a bearer token: it has spaces or non-ASCII characters")
    return value


def create_sync_channel(endpoint: Endpoint) -> grpc.Channel:
    """A plain gRPC channel to `endpoint`."""
    if endpoint.tls:
        return grpc.secure_channel(endpoint.target, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)
    return grpc.insecure_channel(endpoint.target, CHANNEL_OPTIONS)


def create_aio_channel(endpoint: Endpoint) -> grpc.aio.Channel:
    """A grpc.aio channel to `endpoint`; call from inside the event loop that will use it."""
    if endpoint.tls:
        return grpc.aio.secure_channel(endpoint.target, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(endpoint.target, CHANNEL_OPTIONS)


JWT_SECRET_ENV = "PROVISIONER_JWT_SECRET"  # noqa: S105 - the variable's name, not a secret
JWT_ISSUER_ENV = "PROVISIONER_JWT_ISSUER"
JWT_AUDIENCE_ENV = "PROVISIONER_JWT_AUDIENCE"


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """What `provisionctl token` signs with: the server's own JWT settings."""

    secret: str = field(repr=False)
    issuer: str = ""
    audience: str = ""


def token_settings(env: Mapping[str, str] | None = None) -> TokenSettings:
    """`PROVISIONER_JWT_SECRET`, `_ISSUER` and `_AUDIENCE`, as the server reads them."""
    environ = os.environ if env is None else env
    return TokenSettings(
        secret=environ.get(JWT_SECRET_ENV, ""),
        issuer=environ.get(JWT_ISSUER_ENV, "").strip(),
        audience=environ.get(JWT_AUDIENCE_ENV, "").strip(),
    )
