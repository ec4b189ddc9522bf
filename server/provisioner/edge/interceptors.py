"""The server's interceptors, one job each, in a fixed order: logging, authentication,
concurrency, rate limit.

Build them with `server_interceptors` and hand the list to `grpc.aio.server(interceptors=...)`:
the first in the list runs first. Logging sees every call, including the refused ones;
authentication runs before the limits, so that unauthenticated calls cost nobody's quota
and the limits are kept per principal; a call refused for concurrency costs no rate window.

Authentication refuses without reading the request: it answers with a handler of its own.
The limits decide when the call starts and hold their slot until it ends. Every refusal
aborts through `edge.errors`, so the caller gets the same `google.rpc` details as from
the servicer. grpc.aio runs an RPC's interceptors and its handler in one task, so what
authentication puts in `edge.context` is what the limits and the handler read.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from opentelemetry.trace import Span

from provisioner.core.errors import ProvisioningError
from provisioner.edge import context as caller
from provisioner.edge import errors
from provisioner.edge.auth import (
    Authenticator,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    authorize,
    roles_needed,
)
from provisioner.edge.concurrency import ConcurrencyLimiter, kind_for
from provisioner.edge.ratelimit import READ_BUCKET, RateLimiter, bucket_for
from provisioner.telemetry import metrics, tracing

log = logging.getLogger(__name__)

REQUEST_ID_KEY = errors.REQUEST_ID_KEY
#: What we accept as a caller's request id: Envoy's UUIDs and the like, nothing that could
#: forge a log line.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}", re.ASCII)
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
_CODES = {code.value[0]: code for code in grpc.StatusCode}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = errors.Context
Behavior = Callable[[Any, Context], Any]
if TYPE_CHECKING:  # grpc's classes are generic in the stubs only
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Continuation: TypeAlias = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
    ]


def server_interceptors(
    authenticator: Authenticator,
    limiter: RateLimiter,
    concurrency: ConcurrencyLimiter | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors in the order they must run: logging, authentication, concurrency,
    rate limit."""
    return [
        RequestLoggingInterceptor(),
        AuthenticationInterceptor(authenticator),
        ConcurrencyInterceptor(concurrency or ConcurrencyLimiter()),
        RateLimitInterceptor(limiter, clock=clock),
    ]


def _metadata(details: grpc.HandlerCallDetails, key: str) -> list[str]:
    return [str(value) for k, value in (details.invocation_metadata or ()) if k == key]


def _refusal(exc: BaseException) -> Handler:
    """A handler that answers with `exc`'s status without reading the request, whatever the
    method's streaming shape (a stream-stream handler suits them all)."""

    async def refuse(requests: Any, context: Context) -> None:
        await errors.abort(context, exc)

    return grpc.stream_stream_rpc_method_handler(refuse)


# -- logging -------------------------------------------------------------------------------------


class RequestLoggingInterceptor(grpc.aio.ServerInterceptor):
    """One JSON log line per RPC when it ends: request id, principal, method, status code,
    latency and peer. Never the metadata, so never a token.

    The request id is the caller's `x-request-id` when it looks like one, otherwise a fresh
    one; handlers read it from `edge.context.request_id`. A successful call gets it back as
    initial metadata, sent just before the first response message, so an error still goes
    out as a trailers-only response (with the id among its trailers, see `edge.errors`).

    Handlers must be grpc.aio's kind: coroutines, or async generators for streamed replies.
    """

    async def intercept_service(
        self, continuation: Continuation[Req, Resp], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        started = time.perf_counter()
        given = _metadata(handler_call_details, REQUEST_ID_KEY)
        request_id = given[0] if given and _SANE_REQUEST_ID.fullmatch(given[0]) else str(uuid.uuid4())
        handler: Handler | None = await continuation(handler_call_details)
        method = handler_call_details.method
        # A caller picks the method name: only known ones become a metric's label.
        label = method
        if handler is None:
            handler = _refusal(errors.UnknownMethodError("method not found"))
            label = "unknown"
        # Read after the other interceptors ran: authentication has set it by now.
        call = _Call(
            request_id,
            method,
            label,
            caller.principal.get(),
            started,
            handler_call_details.invocation_metadata,
        )
        return _observed(handler, call)


def _code(context: Context) -> grpc.StatusCode:
    code: Any = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


async def _echo_request_id(context: Context, request_id: str) -> None:
    # A handler that sent its own initial metadata has had its chance; not worth failing.
    with contextlib.suppress(grpc.aio.UsageError):
        await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))


class _Call:
    """One RPC as its log line will tell it, written when grpc says the RPC is done."""

    def __init__(
        self,
        request_id: str,
        method: str,
        label: str,
        principal: str,
        started: float,
        metadata: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.label = label
        self.principal = principal
        self.started = started
        self.peer = ""
        self.failure: BaseException | None = None
        self.completed = False
        self.metadata = metadata
        self.span: Span | None = None

    def begin(self, context: Context) -> None:
        caller.request_id.set(self.request_id)
        caller.method.set(self.method)
        # The call's span, child of the caller's traceparent (Envoy passes a REST caller's on).
        self.span = tracing.start_call(self.method, self.metadata)
        # Now, while the call is alive: grpc may release it before the done callbacks run.
        self.peer = context.peer()
        context.add_done_callback(self.finish)  # type: ignore[arg-type]  # the stub wants its own class

    def unary(self, behavior: Behavior) -> Behavior:
        async def observed(request: Any, context: Context) -> Any:
            self.begin(context)
            try:
                response = await behavior(request, context)
                if _code(context) is grpc.StatusCode.OK:
                    await _echo_request_id(context, self.request_id)
            except BaseException as exc:
                self.failure = exc
                raise
            self.completed = True
            return response

        return observed

    def stream(self, behavior: Behavior) -> Behavior:
        if not inspect.isasyncgenfunction(behavior):
            # The reader/writer API (`context.write`, as health's Watch does): the handler
            # sends its own messages, so there is no first message to put the id before.
            async def observed_writer(request: Any, context: Context) -> None:
                self.begin(context)
                try:
                    await behavior(request, context)
                except BaseException as exc:
                    self.failure = exc
                    raise
                self.completed = True

            return observed_writer

        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            self.begin(context)
            echoed = False
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        if not echoed:
                            await _echo_request_id(context, self.request_id)
                            echoed = True
                        yield response
                if not echoed and _code(context) is grpc.StatusCode.OK:
                    await _echo_request_id(context, self.request_id)
            except BaseException as exc:
                self.failure = exc
                raise
            self.completed = True

        return observed

    def code(self, context: Context) -> grpc.StatusCode:
        failure = self.failure
        if failure is None:
            # Never finished nor failed: grpc stopped it between two messages (the client
            # went away while a response was being sent).
            return _code(context) if self.completed else grpc.StatusCode.CANCELLED
        if isinstance(failure, asyncio.CancelledError | GeneratorExit):
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        code = _code(context)
        if isinstance(failure, grpc.aio.AbortError):
            return code
        # What grpc answers for an exception that escaped the handler.
        return grpc.StatusCode.UNKNOWN if code is grpc.StatusCode.OK else code

    def finish(self, context: Context) -> None:
        code = self.code(context)
        seconds = time.perf_counter() - self.started
        metrics.REQUESTS.labels(self.label, code.name).inc()
        metrics.REQUEST_DURATION.labels(self.label).observe(seconds)
        tracing.end_call(self.span, code.name, server_fault=code in _SERVER_FAULTS)
        fields = {
            "request_id": self.request_id,
            "principal": self.principal,
            "method": self.method,
            "code": code.name,
            "latency_ms": round(seconds * 1000, 3),
            "peer": self.peer,
        }
        if self.span is not None:
            fields["trace_id"] = tracing.trace_id(self.span)
        log.log(
            logging.WARNING if code in _SERVER_FAULTS else logging.INFO,
            "%s %s",
            self.method,
            code.name,
            extra={"fields": fields},
        )


def _observed(handler: Handler, call: _Call) -> Handler:
    # The outermost handler's deserializer is the one grpc uses: bytes that are not the
    # request message reach the handler as `UndecodableRequest`, refused as INVALID_ARGUMENT.
    tolerant = errors.tolerant(handler.request_deserializer)
    if handler.response_streaming:
        behavior = call.stream(handler.unary_stream or handler.stream_stream)  # type: ignore[arg-type]
    else:
        behavior = call.unary(handler.unary_unary or handler.stream_unary)  # type: ignore[arg-type]
    return _rebuilt(handler, behavior, tolerant)


def _rebuilt(handler: Handler, behavior: Behavior, deserializer: Any = None) -> Handler:
    """`handler` with another behavior, same shape and (de)serializers."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# -- authentication ------------------------------------------------------------------------------


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens and the role matrix (`edge.auth`); public services pass untouched.

    Sets `edge.context.principal` for the rest of the call. Refuses with UNAUTHENTICATED
    (no or bad token) or PERMISSION_DENIED (a role missing), before the method is even looked
    up, so an unknown method tells a caller without a token nothing.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self, continuation: Continuation[Req, Resp], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        method = handler_call_details.method
        if roles_needed(method) is None:
            return await continuation(handler_call_details)
        try:
            identity = await self._authenticator.authenticate_async(
                _metadata(handler_call_details, "authorization")
            )
            caller.principal.set(identity.principal)
            authorize(identity, method)
            caller.internals.set(Role.ADMIN in identity.roles)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            return _refusal(exc)
        return await continuation(handler_call_details)


# -- admission: concurrency, then rate -------------------------------------------------------

#: Admission for one call: None to go ahead, or what to call when the call ends; raises
#: a `ProvisioningError` to refuse it.
#: Given the call's request, admit it (returning what releases its slot, if anything) or
#: raise the refusal.
Admit: TypeAlias = Callable[[Any], Awaitable[Callable[[], None] | None]]


def _admitted(handler: Handler, admit: Admit) -> Handler:
    """`handler`, run only once `admit` lets it, when the call starts (not when grpc
    looks the method up, so that whatever admission holds is released however the call
    ends). Only for our own handlers: coroutines and async generators."""

    async def admitted(request: Any, context: Context) -> Callable[[], None] | None:
        try:
            return await admit(request)
        except ProvisioningError as exc:
            await errors.abort(context, exc)

    if handler.response_streaming:
        streamed: Behavior = handler.unary_stream or handler.stream_stream  # type: ignore[assignment]

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            release = await admitted(request, context)
            try:
                async for item in streamed(request, context):
                    yield item
            finally:
                if release is not None:
                    release()

        return _rebuilt(handler, stream)

    called: Behavior = handler.unary_unary or handler.stream_unary  # type: ignore[assignment]

    async def unary(request: Any, context: Context) -> Any:
        release = await admitted(request, context)
        try:
            return await called(request, context)
        finally:
            if release is not None:
                release()

    return _rebuilt(handler, unary)


class ConcurrencyInterceptor(grpc.aio.ServerInterceptor):
    """Per-principal limits on open calls, and load shedding (`edge.concurrency`): a call
    over them is refused before it costs anything else, its rate-limit window included.
    Public services (health, reflection) are never limited."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter = limiter

    async def intercept_service(
        self, continuation: Continuation[Req, Resp], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        kind = kind_for(handler_call_details.method)
        if handler is None or kind is None:
            return handler
        principal = caller.principal.get()

        async def admit(request: Any) -> Callable[[], None]:
            return self._limiter.admit(principal, kind)

        return _admitted(handler, admit)


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Per-principal limits by bucket (`edge.ratelimit`); refuses with RESOURCE_EXHAUSTED and
    a `RetryInfo` saying when a call fits again. Unknown methods cost nothing."""

    def __init__(self, limiter: RateLimiter, *, clock: Callable[[], float] = time.time) -> None:
        self._limiter = limiter
        self._clock = clock

    async def intercept_service(
        self, continuation: Continuation[Req, Resp], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        bucket = bucket_for(handler_call_details.method)
        if handler is None or bucket is None:
            return handler
        principal = caller.principal.get()

        async def admit(request: Any) -> None:
            # Rate limited, or the shared windows unreachable: refused either way.
            now = self._clock()
            if getattr(request, "validate_only", False) is True:
                # A dry run (AIP-163) costs a read, and says whether the real call would fit.
                await self._limiter.acquire(principal, READ_BUCKET, now)
                await self._limiter.check(principal, bucket, now)
                return
            await self._limiter.acquire(principal, bucket, now)

        return _admitted(handler, admit)
