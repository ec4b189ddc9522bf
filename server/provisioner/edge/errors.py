"""The one place where exceptions become gRPC statuses, with `google.rpc` details.

Every `ProvisioningError` maps to a code chosen by its class, with an `ErrorInfo` (its
reason, our domain), a `BadRequest` listing each violated field, and a `RetryInfo` when
retrying later can work. Anything else is INTERNAL with a generic message; its traceback
goes to the log, never to the caller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from provisioner.core import errors as e

log = logging.getLogger(__name__)

DOMAIN = "provisioning.v1"

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
    (e.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
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
    details = [_packed(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN))]
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
    if exc.retryable or exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int((exc.retry_after or 1.0) * 1000))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=exc.message, details=details)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    if not isinstance(exc, e.ProvisioningError):
        log.error("unexpected error in %s", _method(context), exc_info=exc)
    await context.abort_with_status(rpc_status.to_status(status_for(exc)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _method(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    details = getattr(context, "_rpc_event", None)
    return str(getattr(getattr(details, "call_details", None), "method", b"?"))


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
            async for item in handler(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge is where everything is mapped
            await abort(context, exc)

    return wrapped
