"""`AsyncProvisioningClient`: the provisioning API over grpc.aio, typed, retried and resumable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

import grpc

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import _base, _methods
from provisioner_client._methods import Method, Req, Resp
from provisioner_client.config import DEFAULT_IDLE_TIMEOUT, DEFAULT_TIMEOUT, Endpoint, create_aio_channel
from provisioner_client.errors import from_rpc_error
from provisioner_client.retry import RetryPolicy
from provisioner_client.spec import DepartmentSpec, SpecFields
from provisioner_client.watch import END_GRACE, Reconnect, WatchCursor, WatchItem, is_resumable


class AsyncProvisioningClient:
    """The provisioning API for asyncio code.

    `server` defaults to `PROVISIONER_SERVER` (else 127.0.0.1:50051) and `token` to
    `PROVISIONER_TOKEN`; the token travels as `authorization: Bearer ...`. Each unary call
    attempt has `timeout` seconds; UNAVAILABLE is retried per `retry`. Use it as an async
    context manager, or call `close()`. The channel is opened on first use, inside the
    running event loop.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        reconnect: RetryPolicy | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._settings = _base.Settings.build(server, token, timeout, retry, reconnect, idle_timeout)
        self._channel: grpc.aio.Channel | None = None

    @property
    def endpoint(self) -> Endpoint:
        """Where the client sends its calls."""
        return self._settings.endpoint

    async def __aenter__(self) -> AsyncProvisioningClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, cancelling calls in flight."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = create_aio_channel(self._settings.endpoint)
        return self._channel

    # `timeout` rather than asyncio.timeout: it becomes the call's gRPC deadline, which the
    # server sees and honours too.
    async def _unary(
        self,
        method: Method[Req, Resp],
        request: Req,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Resp:
        call = self._open().unary_unary(method.path, method.serialize, method.deserialize)
        failed = 0
        while True:
            try:
                return await call(
                    request, timeout=self._settings.deadline(timeout), metadata=self._settings.metadata
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                failed += 1
                delay = _base.retry_delay(self._settings, error, failed)
                if delay is None:
                    raise error from exc
            await asyncio.sleep(delay)

    async def provision(
        self,
        spec: DepartmentSpec | None = None,
        /,
        *,
        request_id: str | None = None,
        validate_only: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Unpack[SpecFields],
    ) -> pb.Job:
        """Start provisioning a department (or get the job already doing it).

        Give a `DepartmentSpec` or its fields as keywords. `request_id` (a UUID) makes the
        call idempotent; one is generated when omitted, and every retry reuses it. With
        `validate_only`, nothing is done: every check is made and the job the call would
        return comes back (without an id if it would be new).
        """
        request = _base.provision_request(spec, fields, request_id)
        request.validate_only = validate_only
        return await self._unary(_methods.PROVISION, request, timeout)

    async def get_status(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> pb.Job:
        """A job as it stands: state, progress and each step."""
        return await self._unary(_methods.GET_STATUS, pb.GetStatusRequest(job_id=job_id), timeout)

    async def deprovision(
        self,
        department_id: str,
        *,
        request_id: str | None = None,
        validate_only: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> pb.Job:
        """Tear a department down; returns the teardown job. Idempotent like `provision`."""
        request = pb.DeprovisionRequest(
            department_id=department_id,
            request_id=request_id or _base.new_request_id(),
            validate_only=validate_only,
        )
        return await self._unary(_methods.DEPROVISION, request, timeout)

    async def list_departments(
        self,
        *,
        status: _base.StatusFilter = None,
        region: str | None = None,
        page_size: int = _base.DEFAULT_PAGE_SIZE,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[pb.Department]:
        """Every department matching the filters, in id order, fetching pages as needed."""
        token = ""
        while True:
            request = _base.list_request(status, region, page_size, token)
            page = await self._unary(_methods.LIST_DEPARTMENTS, request, timeout)
            for department in page.departments:
                yield department
            token = page.next_page_token
            if not token:
                return

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:  # noqa: ASYNC109
        """Stop a running provisioning and roll it back (admins); returns the job as it stands."""
        return await self._unary(_methods.CANCEL_JOB, pb.CancelJobRequest(job_id=job_id), timeout)

    async def list_jobs(
        self,
        *,
        department_id: str | None = None,
        kind: _base.StatusFilter = None,
        state: _base.StatusFilter = None,
        page_size: int = _base.DEFAULT_PAGE_SIZE,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[pb.Job]:
        """Every job matching the filters, newest first, fetching pages as needed."""
        token = ""
        while True:
            request = _base.jobs_request(department_id, kind, state, page_size, token)
            page = await self._unary(_methods.LIST_JOBS, request, timeout)
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    async def list_audit_events(
        self,
        *,
        department_id: str | None = None,
        principal: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = _base.DEFAULT_PAGE_SIZE,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[pb.AuditEvent]:
        """Every audit entry matching the filters, newest first (admins only)."""
        token = ""
        while True:
            request = _base.audit_request(department_id, principal, action, since, until, page_size, token)
            page = await self._unary(_methods.LIST_AUDIT_EVENTS, request, timeout)
            for event in page.audit_events:
                yield event
            token = page.next_page_token
            if not token:
                return

    async def get_department(
        self,
        department_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> pb.Department:
        """One department: its spec, status and latest job."""
        request = pb.GetDepartmentRequest(department_id=department_id)
        return await self._unary(_methods.GET_DEPARTMENT, request, timeout)

    async def get_department_health(
        self,
        department_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> pb.GetDepartmentHealthResponse:
        """Live checks of everything the department's steps made."""
        request = pb.GetDepartmentHealthRequest(department_id=department_id)
        return await self._unary(_methods.GET_DEPARTMENT_HEALTH, request, timeout)

    async def watch(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        on_reconnect: Callable[[Reconnect], Any] | None = None,
    ) -> AsyncIterator[WatchItem]:
        """Yield the job's snapshot, then each event after `after_sequence`, ending after the last.

        A dropped stream (server restart, UNAVAILABLE, a connection silent for longer than
        `idle_timeout`) is resumed from the last sequence seen, so no event is missed or
        repeated; `on_reconnect` hears of each attempt. Gives up with `UnavailableError`
        once the `reconnect` policy is spent without hearing from the server.
        """
        cursor = WatchCursor(job_id, after_sequence)
        stream = self._open().unary_stream(
            _methods.WATCH_PROGRESS.path,
            _methods.WATCH_PROGRESS.serialize,
            _methods.WATCH_PROGRESS.deserialize,
        )
        failed = 0
        while True:
            call = stream(cursor.request(), metadata=self._settings.metadata)
            hint: float | None = None
            try:
                messages = call.__aiter__()
                while True:
                    try:
                        async with asyncio.timeout(self._settings.idle_timeout):
                            message = await anext(messages)
                    except StopAsyncIteration:
                        reason = "the stream ended before the job did"
                        break
                    if message.WhichOneof("kind") != "snapshot":
                        # The connection has proved itself: later failures start a fresh count.
                        failed = 0
                    item = cursor.accept(message)
                    if item is not None:
                        yield item
                    if cursor.done:
                        await _let_end(call)
                        return
            except TimeoutError:
                reason = f"nothing heard for {self._settings.idle_timeout:g} s"
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                if not is_resumable(exc.code(), exc.details()):
                    raise error from exc
                reason, hint = f"{error.code_name}: {error.message}", error.retry_delay
            finally:
                call.cancel()
            failed += 1
            delay = self._settings.reconnect.delay(failed, hint)
            if delay is None:
                raise _base.gave_up(job_id, failed, reason)
            if on_reconnect is not None:
                on_reconnect(Reconnect(job_id, failed, cursor.last_sequence, delay, reason))
            await asyncio.sleep(delay)

    async def wait(self, job_id: str, *, on_reconnect: Callable[[Reconnect], Any] | None = None) -> pb.Job:
        """Follow a job to its end (resuming as `watch` does) and return it as it finished."""
        async for _ in self.watch(job_id, on_reconnect=on_reconnect):
            pass
        return await self.get_status(job_id)


async def _let_end(call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
    """Give a finished job's stream a moment to close by itself.

    The server ends the stream right after the terminal event; cancelling first would
    make it log a cancelled call for a watch that went perfectly well.
    """
    with contextlib.suppress(TimeoutError, asyncio.CancelledError, grpc.aio.AioRpcError):
        async with asyncio.timeout(END_GRACE):
            await call.code()
