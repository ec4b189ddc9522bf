"""The SDK's one exception hierarchy, decoded from gRPC statuses and their `google.rpc` details.

Every failed call surfaces as an `ApiError` subclass chosen by status code, carrying what
the server packed into the status: the `ErrorInfo` reason, each `BadRequest` field
violation and the `RetryInfo` delay. Local problems (a bad target, token or spec file)
are `ConfigurationError`s: nothing was sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ClientError(Exception):
    """The root of everything the SDK raises on purpose."""


class ConfigurationError(ClientError):
    """A local setting or input is unusable (target, token, spec file); nothing was sent."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule of a request, from the status's `google.rpc.BadRequest`."""

    field: str
    description: str


class ApiError(ClientError):
    """The server (or the channel to it) answered a call with a non-OK status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[FieldViolation] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: `google.rpc.ErrorInfo.reason`: UPPER_SNAKE, stable, for programs to branch on.
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        #: Seconds the server asked us to wait before trying again (`google.rpc.RetryInfo`).
        self.retry_delay = retry_delay

    @property
    def code_name(self) -> str:
        """The status code's name, like `NOT_FOUND`."""
        return str(self.code.name)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code_name}, {self.message!r}, reason={self.reason!r})"


class InvalidArgumentError(ApiError):
    """INVALID_ARGUMENT: the request broke the contract's rules; see `violations`."""


class NotFoundError(ApiError):
    """NOT_FOUND: no such job or department."""


class AlreadyExistsError(ApiError):
    """ALREADY_EXISTS: a conflicting request id or department spec."""


class FailedPreconditionError(ApiError):
    """FAILED_PRECONDITION: the department is not in a state that allows the call."""


class UnauthenticatedError(ApiError):
    """UNAUTHENTICATED: no token, or one the server does not accept."""


class PermissionDeniedError(ApiError):
    """PERMISSION_DENIED: the token's roles do not allow the call."""


class ResourceExhaustedError(ApiError):
    """RESOURCE_EXHAUSTED: rate limited; `retry_delay` says when to come back."""


class UnavailableError(ApiError):
    """UNAVAILABLE: the server is unreachable, restarting or draining (after the SDK's retries)."""


class DeadlineExceededError(ApiError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline."""


class InternalError(ApiError):
    """INTERNAL, UNKNOWN or any other code: a server-side problem."""


_BY_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


class _FailedCall(Protocol):
    """What both `grpc.Call` (sync) and `grpc.aio.AioRpcError` offer about a failed call."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


def api_error(code: grpc.StatusCode, message: str, **fields: Any) -> ApiError:
    """The `ApiError` subclass for `code`."""
    return _BY_CODE.get(code, InternalError)(code, message, **fields)


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    """Decode a failed call, with the `google.rpc` details the server attached."""
    if not callable(getattr(error, "code", None)):
        return InternalError(grpc.StatusCode.UNKNOWN, str(error) or "the call failed")
    # Duck-typed: the sync `grpc.Call` and `grpc.aio.AioRpcError` share these methods only.
    call = cast(_FailedCall, error)
    code = call.code()
    message = call.details() or code.name.lower().replace("_", " ")
    fields: dict[str, Any] = {}
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # The details contradict the call's own code or message: trust the call.
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            fields.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields["violations"] = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            fields["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
    return api_error(code, message, **fields)
