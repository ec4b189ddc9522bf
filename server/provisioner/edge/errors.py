"""The one place where exceptions become gRPC statuses, with `google.rpc` details.

Every `ProvisioningError` maps to a code chosen by its class, with an `ErrorInfo` (its
reason, our domain), a `BadRequest` listing each violated field, and a `RetryInfo` when
retrying later can work. Anything else is INTERNAL with a generic message; its traceback
goes to the log, never to the caller.

Besides `grpc-status-details-bin`, an error's trailers carry `retry-after` (whole seconds)
whenever the status has a `RetryInfo`, so that Envoy can give REST clients a
`Retry-After`, and the RPC's `x-request-id`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from provisioner.core import errors as e
from provisioner.edge import context as caller
from provisioner.edge.auth import PermissionDeniedError, UnauthenticatedError
from provisioner.edge.concurrency import ConcurrencyLimitedError, OverloadedError
from provisioner.edge.ratelimit import RateLimitedError
from provisioner.telemetry import metrics

log = logging.getLogger(__name__)

DOMAIN = "provisioning.v1"
REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after"


class UnknownMethodError(e.ProvisioningError):
    """No handler for the method: the interceptors answer for grpc, so it gets logged."""

    reason = "UNKNOWN_METHOD"


#: Most specific class first: the first match wins.
_CODES: tuple[tuple[type[e.ProvisioningError], grpc.StatusCode], ...] = (
    (e.InvalidSpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (e.ConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (e.ServiceDrainingError, grpc.StatusCode.UNAVAILABLE),
    (e.SubscriberTooSlowError, grpc.StatusCode.UNAVAILABLE),
    (e.StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (e.LeaseLostError, grpc.StatusCode.UNAVAILABLE),
    (e.ElsewhereError, grpc.StatusCode.UNAVAILABLE),
    (e.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ConcurrencyLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OverloadedError, grpc.StatusCode.UNAVAILABLE),
    (UnknownMethodError, grpc.StatusCode.UNIMPLEMENTED),
)

#: Refusals before any work, as `provisioner_requests_rejected_total` counts them.
_REJECTIONS: tuple[tuple[type[e.ProvisioningError], str], ...] = (
    (UnauthenticatedError, "auth"),
    (PermissionDeniedError, "auth"),
    (RateLimitedError, "rate_limit"),
    (ConcurrencyLimitedError, "concurrency"),
    (OverloadedError, "concurrency"),
    (e.InvalidSpecError, "invalid"),
)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(exc: BaseException) -> status_pb2.Status:
    """The `google.rpc.Status` a caller sees for `exc`."""
    if not isinstance(exc, e.ProvisioningError) or isinstance(exc, e.ConfigurationError):
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    details = [_packed(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=_info(exc)))]
    if isinstance(exc, e.InvalidSpecError):
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in exc.violations
                    ]
                )
            )
        )
    if isinstance(exc, e.QuotaExceededError):
        details.append(
            _packed(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject="departments", description=exc.message
                        )
                    ]
                )
            )
        )
    if exc.retryable or exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int((exc.retry_after or 1.0) * 1000))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=exc.message, details=details)


def _info(exc: e.ProvisioningError) -> dict[str, str]:
    """What a machine needs beyond the reason to act on the error."""
    if isinstance(exc, PermissionDeniedError):
        return {"required_role": exc.required_role.value}
    if isinstance(exc, e.QuotaExceededError):
        return {"limit": str(exc.limit)}
    if isinstance(exc, RateLimitedError):
        return {"bucket": exc.bucket, "limit": str(exc.rate.count), "period_seconds": f"{exc.rate.period:g}"}
    if isinstance(exc, ConcurrencyLimitedError):
        return {"kind": exc.kind.name.lower(), "limit": str(exc.limit)}
    return {}


def trailers_for(status: status_pb2.Status) -> tuple[tuple[str, str], ...]:
    """The plain trailers that go with `status`: `retry-after` and `x-request-id`."""
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            found.append((RETRY_AFTER_KEY, str(max(1, math.ceil(seconds)))))
    request_id = caller.request_id.get()
    if request_id:
        found.append((REQUEST_ID_KEY, request_id))
    return tuple(found)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the RPC with the status `exc` maps to."""
    if not isinstance(exc, e.ProvisioningError):
        log.error(
            "unexpected error in %s",
            _method(context),
            exc_info=exc,
            extra={"fields": {"request_id": caller.request_id.get()}},
        )
    rejected = next((reason for cls, reason in _REJECTIONS if isinstance(exc, cls)), None)
    if rejected is not None:
        metrics.REJECTED.labels(rejected).inc()
    status = status_for(exc)
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, (*rich.trailing_metadata, *trailers_for(status)))
    raise AssertionError("abort returned")  # pragma: no cover


def _method(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    return caller.method.get() or "?"


#: The largest request message decoded. The largest valid request is a few KiB; grpc's
#: own limit (`edge.server`) is above this one, so that a larger message is refused here,
#: as INVALID_ARGUMENT, rather than by grpc as RESOURCE_EXHAUSTED, which REST callers
#: would read as 429, "slow down".
MAX_REQUEST_BYTES = 64 * 1024


class UndecodableRequest:
    """What a handler receives instead of a request whose bytes were not decoded."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, but answering `UndecodableRequest` instead of raising.

    Left to grpc, a request that is not valid protobuf (or has bad UTF-8 in a string)
    ends UNKNOWN with the parser's internals in the message; the handler decorators below
    refuse it as INVALID_ARGUMENT like any other bad request. So is a request larger than
    `MAX_REQUEST_BYTES`, without being parsed.
    """
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        if len(data) > MAX_REQUEST_BYTES:
            return UndecodableRequest(f"is {len(data)} bytes; at most {MAX_REQUEST_BYTES} are accepted")
        try:
            return deserializer(data)
        except DecodeError:
            return UndecodableRequest("is not a valid protobuf message for this method")

    return decode


def _decoded(request: Any) -> None:
    if isinstance(request, UndecodableRequest):
        raise e.InvalidSpecError([e.FieldViolation("request", request.problem)])


Request = TypeVar("Request")
Response = TypeVar("Response")
Self = TypeVar("Self")
Context = grpc.aio.ServicerContext[Any, Any]


def unary(
    handler: Callable[[Self, Request, Context], Awaitable[Response]],
) -> Callable[[Self, Request, Context], Awaitable[Response]]:
    """Map whatever a unary handler raises to a status, once."""

    @functools.wraps(handler)
    async def wrapped(self: Self, request: Request, context: Context) -> Response:
        try:
            _decoded(request)
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge is where everything is mapped
            await abort(context, exc)

    return wrapped


def streaming(
    handler: Callable[[Self, Request, Context], AsyncIterator[Response]],
) -> Callable[[Self, Request, Context], AsyncIterator[Response]]:
    """Map whatever a server-streaming handler raises to a status, once."""

    @functools.wraps(handler)
    async def wrapped(self: Self, request: Request, context: Context) -> AsyncIterator[Response]:
        try:
            _decoded(request)
            async for item in handler(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge is where everything is mapped
            await abort(context, exc)

    return wrapped
