"""Where the SDK finds its server and token: arguments first, then the environment.

The CLI and the SDK both read `PROVISIONER_SERVER` and `PROVISIONER_TOKEN` here and
nowhere else. The server may be several replicas: comma-separated `host:port`
addresses, or one name that resolves to several. Calls are spread over them round-robin
and a replica that is down is skipped, so a retried call (same idempotency key) or a
resumed watch lands on another one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from provisioner_client.errors import ConfigurationError

SERVER_ENV = "PROVISIONER_SERVER"
CA_FILE_ENV = "PROVISIONER_CA_FILE"
CLIENT_CERT_ENV = "PROVISIONER_CLIENT_CERT_FILE"
CLIENT_KEY_ENV = "PROVISIONER_CLIENT_KEY_FILE"
TOKEN_ENV = "PROVISIONER_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TARGET = "127.0.0.1:50051"
#: Seconds per unary call attempt.
DEFAULT_TIMEOUT = 10.0
#: The server sends a heartbeat every 15 s by default: a watch that hears nothing for four
#: of them is on a dead connection that TCP has not noticed yet.
DEFAULT_IDLE_TIMEOUT = 60.0

#: gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a CLI that waits for a
#: restarting server wants to see it back within a couple of seconds.
CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_DEFAULT_PORT = 443
#: `host`, `host:port`, `[v6]` or `[v6]:port`.
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")
#: Every address of every replica is connected; each call goes to the next ready one.
_ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")

_TLS_SCHEMES = ("https://", "grpcs://")
_PLAIN_SCHEMES = ("http://", "grpc://")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The replicas to call (`host:port` each) and whether to speak TLS to them: with the
    system's authorities, or `ca_file`'s; with a client certificate (mTLS) if given."""

    addresses: tuple[str, ...]
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def target(self) -> str:
        return ",".join(self.addresses)

    def __str__(self) -> str:
        return self.target


def resolve_endpoint(server: str | None = None, env: Mapping[str, str] | None = None) -> Endpoint:
    """`server`, else `PROVISIONER_SERVER`, else 127.0.0.1:50051.

    `https://` or `grpcs://` in front selects TLS; a bare `host:port` is plaintext unless
    `PROVISIONER_CA_FILE` or a client certificate (`PROVISIONER_CLIENT_CERT_FILE` and
    `PROVISIONER_CLIENT_KEY_FILE`) is set. Several replicas: `host:port,host:port,...`.
    """
    environ = os.environ if env is None else env
    text = (server or environ.get(SERVER_ENV, "") or DEFAULT_TARGET).strip()
    ca_file, cert_file, key_file = (
        environ.get(n, "").strip() for n in (CA_FILE_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV)
    )
    if bool(cert_file) != bool(key_file):
        raise ConfigurationError(f"set both {CLIENT_CERT_ENV} and {CLIENT_KEY_ENV}, or neither")
    tls = text.startswith(_TLS_SCHEMES) or bool(ca_file or cert_file)
    for scheme in _TLS_SCHEMES + _PLAIN_SCHEMES:
        text = text.removeprefix(scheme)
    addresses = tuple(part.strip().rstrip("/") for part in text.split(","))
    for address in addresses:
        if not _ADDRESS.fullmatch(address):
            raise ConfigurationError(f"the server address {address!r} is not a host:port")
    return Endpoint(addresses, tls, ca_file, cert_file, key_file)


def _split(address: str) -> tuple[str, int]:
    """Host and port (`[v6]:port` for IPv6); without a port, gRPC's default (443)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            host, port = address, ""
    return host, int(port) if port.isdigit() else _DEFAULT_PORT


def channel_target(endpoint: Endpoint) -> tuple[str, tuple[tuple[str, int | str], ...]]:
    """The gRPC target and channel options for `endpoint`.

    One IP address: itself. One name: every address it resolves to (gRPC's DNS
    resolver, re-resolved when connections fail). Several addresses: each resolved now
    (`getaddrinfo`), then listed to gRPC in one static target. Either way round-robin.
    """
    if len(endpoint.addresses) == 1:
        host, port = _split(endpoint.addresses[0])
        if _is_ip(host) or ":" not in endpoint.addresses[0]:
            return endpoint.addresses[0], CHANNEL_OPTIONS
        return f"dns:///{host}:{port}", (*CHANNEL_OPTIONS, _ROUND_ROBIN)
    found: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
    for address in endpoint.addresses:
        host, port = _split(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise ConfigurationError(f"the server address {address!r} does not resolve") from None
        for family, _, _, _, sockaddr in infos:
            if family in found:
                ip = str(sockaddr[0])
                item = f"{ip}:{port}" if family == socket.AF_INET else f"[{ip}]:{port}"
                if item not in found[family]:
                    found[family].append(item)
    # gRPC takes one family per static target: IPv4 when there is any.
    family, scheme = (socket.AF_INET, "ipv4") if found[socket.AF_INET] else (socket.AF_INET6, "ipv6")
    options: tuple[tuple[str, int | str], ...] = (*CHANNEL_OPTIONS, _ROUND_ROBIN)
    if endpoint.tls:
        # Certificates name hosts, not the addresses they resolved to.
        options = (*options, ("grpc.default_authority", _split(endpoint.addresses[0])[0]))
    return f"{scheme}:{','.join(found[family])}", options


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {variable}={path}: {exc.strerror}") from None


def channel_credentials(endpoint: Endpoint) -> grpc.ChannelCredentials:
    """TLS credentials for `endpoint`: its CA file (else the system's) and client certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(endpoint.ca_file, CA_FILE_ENV) if endpoint.ca_file else None,
        private_key=_read(endpoint.key_file, CLIENT_KEY_ENV) if endpoint.key_file else None,
        certificate_chain=_read(endpoint.cert_file, CLIENT_CERT_ENV) if endpoint.cert_file else None,
    )


def create_sync_channel(endpoint: Endpoint) -> grpc.Channel:
    """A gRPC channel to `endpoint`."""
    target, options = channel_target(endpoint)
    if endpoint.tls:
        return grpc.secure_channel(target, channel_credentials(endpoint), options)
    return grpc.insecure_channel(target, options)


def create_aio_channel(endpoint: Endpoint) -> grpc.aio.Channel:
    """A grpc.aio channel to `endpoint`; call from inside the event loop that will use it."""
    target, options = channel_target(endpoint)
    if endpoint.tls:
        return grpc.aio.secure_channel(target, channel_credentials(endpoint), options)
    return grpc.aio.insecure_channel(target, options)


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
