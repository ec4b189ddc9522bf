"""`provisionctl`'s exit codes, and the one sentence it prints for each kind of error."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import grpc

from provisioner_client.config import Endpoint
from provisioner_client.errors import ApiError, ClientError, ConfigurationError

OK = 0
#: The job FAILED, or the department is unhealthy.
FAILED = 1
#: Bad command line, bad local input, or INVALID_ARGUMENT from the server.
USAGE = 2
#: UNAUTHENTICATED or PERMISSION_DENIED.
DENIED = 3
NOT_FOUND = 4
#: RESOURCE_EXHAUSTED (rate limited).
RATE_LIMITED = 5
#: The server could not be reached, was UNAVAILABLE or missed the deadline, after retries.
UNREACHABLE = 6
OTHER = 7
#: ALREADY_EXISTS, ABORTED or FAILED_PRECONDITION: the request conflicts with what exists.
CONFLICT = 8
INTERRUPTED = 130

EPILOG = """\
exit codes:
  0  success
  1  the job FAILED, or the department is unhealthy
  2  usage error, unreadable spec file, or INVALID_ARGUMENT (each field violation is printed)
  3  UNAUTHENTICATED or PERMISSION_DENIED
  4  NOT_FOUND
  5  RESOURCE_EXHAUSTED (rate limited; the retry delay is printed)
  6  server unreachable, UNAVAILABLE or DEADLINE_EXCEEDED after retries
  7  anything else
  8  a conflict: ALREADY_EXISTS (say, another spec for an existing department),
     FAILED_PRECONDITION or ABORTED

environment:
  PROVISIONER_SERVER        gRPC address of the server (default 127.0.0.1:50051;
                            https://host:port for TLS)
  PROVISIONER_TOKEN         bearer token sent with every call
  PROVISIONER_JWT_SECRET    HS256 secret for `provisionctl token` (the server's own)
  PROVISIONER_JWT_ISSUER    iss claim for `provisionctl token`, when the server checks it
  PROVISIONER_JWT_AUDIENCE  aud claim for `provisionctl token`, when the server checks it
  PROVISIONER_CONFIG        the contexts file (default ~/.config/provisionctl/config.yaml);
                            see `provisionctl config --help`
"""

_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
    grpc.StatusCode.OUT_OF_RANGE: USAGE,
    grpc.StatusCode.UNAUTHENTICATED: DENIED,
    grpc.StatusCode.PERMISSION_DENIED: DENIED,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RATE_LIMITED,
    grpc.StatusCode.UNAVAILABLE: UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNREACHABLE,
    grpc.StatusCode.ALREADY_EXISTS: CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: CONFLICT,
    grpc.StatusCode.ABORTED: CONFLICT,
}


def exit_code(error: ClientError) -> int:
    """The exit code for an error that ended a command."""
    if isinstance(error, ApiError):
        return _CODES.get(error.code, OTHER)
    if isinstance(error, ConfigurationError):
        return USAGE
    return OTHER


def describe(
    error: ClientError, endpoint: Endpoint | None, timeout: float, *, names: Mapping[str, str] | None = None
) -> list[str]:
    """One sentence for `error`, then (INVALID_ARGUMENT) one line per violated field, named
    as in `names` (a contract field's flag or spec-file key) where given."""
    if not isinstance(error, ApiError):
        return [_sentence(str(error))]
    message = error.message.rstrip(".")
    where = f"the server at {endpoint}" if endpoint is not None else "the server"
    code = error.code
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        for field, name in (names or {}).items():
            message = re.sub(rf"\b{re.escape(field)}\b", name, message)
        return [
            _sentence(f"the server rejected the request: {message}"),
            *(f"  {(names or {}).get(v.field, v.field)}: {v.description}" for v in error.violations),
        ]
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return [
            _sentence(
                f"not authenticated: {message}; set PROVISIONER_TOKEN or pass --token "
                "(`provisionctl token --role admin` mints a development token)"
            )
        ]
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return [_sentence(f"permission denied: {message}")]
    if code == grpc.StatusCode.NOT_FOUND:
        return [_sentence(f"not found: {message}")]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        said = "retry in" in message
        delay = error.retry_delay
        after = f"; retry in {max(1, math.ceil(delay))} s" if delay is not None and not said else ""
        return [_sentence(f"rate limited: {message}{after}")]
    if code in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED):
        return [_sentence(f"conflict: {message}")]
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return [_sentence(f"not possible now: {message}")]
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return [_sentence(f"{where} did not answer within {timeout:g} s ({message})")]
    if code == grpc.StatusCode.UNAVAILABLE:
        if "connect" in message.lower():
            return [_sentence(f"cannot reach {where}: is it running? ({message})")]
        return [_sentence(f"{where} is unavailable: {message}")]
    reason = f", {error.reason}" if error.reason and error.reason != error.code_name else ""
    return [_sentence(f"{message} ({error.code_name}{reason})")]


def _sentence(text: str) -> str:
    text = " ".join(text.split())  # a server message may span lines; ours is one
    return f"provisionctl: error: {text}"
