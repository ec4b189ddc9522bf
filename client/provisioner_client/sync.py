"""`ProvisioningClient`: the provisioning API over a blocking gRPC channel.

Same methods, retries and watch resumption as `AsyncProvisioningClient`, for code that
does not run an event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

import grpc

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import _base, _methods
from provisioner_client._methods import Method, Req, Resp
from provisioner_client.config import DEFAULT_IDLE_TIMEOUT, DEFAULT_TIMEOUT, Endpoint, create_sync_channel
from provisioner_client.errors import from_rpc_error
from provisioner_client.retry import RetryPolicy
from provisioner_client.spec import DepartmentSpec, SpecFields
from provisioner_client.watch import END_GRACE, Reconnect, WatchCursor, WatchItem, is_resumable


class ProvisioningClient:
    """The provisioning API for blocking code; see `AsyncProvisioningClient` for the settings.

    Use it as a context manager, or call `close()`.
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
        self._channel = create_sync_channel(self._settings.endpoint)

    @property
    def endpoint(self) -> Endpoint:
        """Where the client sends its calls."""
        return self._settings.endpoint

    def __enter__(self) -> ProvisioningClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, cancelling calls in flight."""
        self._channel.close()

    def _unary(self, method: Method[Req, Resp], request: Req, timeout: float | None) -> Resp:
        call = self._channel.unary_unary(method.path, method.serialize, method.deserialize)
        failed = 0
        while True:
            try:
                return call(
                    request, timeout=self._settings.deadline(timeout), metadata=self._settings.metadata
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                failed += 1
                delay = _base.retry_delay(self._settings, error, failed)
                if delay is None:
                    raise error from exc
            time.sleep(delay)

    def provision(
        self,
        spec: DepartmentSpec | None = None,
        /,
        *,
        request_id: str | None = None,
        validate_only: bool = False,
        timeout: float | None = None,
        **fields: Unpack[SpecFields],
    ) -> pb.Job:
        """Start provisioning a department; see `AsyncProvisioningClient.provision`."""
        request = _base.provision_request(spec, fields, request_id)
        request.validate_only = validate_only
        return self._unary(_methods.PROVISION, request, timeout)

    def get_status(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """A job as it stands: state, progress and each step."""
        return self._unary(_methods.GET_STATUS, pb.GetStatusRequest(job_id=job_id), timeout)

    def deprovision(
        self,
        department_id: str,
        *,
        request_id: str | None = None,
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> pb.Job:
        """Tear a department down; returns the teardown job. Idempotent like `provision`."""
        request = pb.DeprovisionRequest(
            department_id=department_id,
            request_id=request_id or _base.new_request_id(),
            validate_only=validate_only,
        )
        return self._unary(_methods.DEPROVISION, request, timeout)

    def list_departments(
        self,
        *,
        status: _base.StatusFilter = None,
        region: str | None = None,
        page_size: int = _base.DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> Iterator[pb.Department]:
        """Every department matching the filters, in id order, fetching pages as needed."""
        token = ""
        while True:
            request = _base.list_request(status, region, page_size, token)
            page = self._unary(_methods.LIST_DEPARTMENTS, request, timeout)
            yield from page.departments
            token = page.next_page_token
            if not token:
                return

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Stop a running provisioning and roll it back; see `AsyncProvisioningClient.cancel_job`."""
        return self._unary(_methods.CANCEL_JOB, pb.CancelJobRequest(job_id=job_id), timeout)

    def list_jobs(
        self,
        *,
        department_id: str | None = None,
        kind: _base.StatusFilter = None,
        state: _base.StatusFilter = None,
        page_size: int = _base.DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> Iterator[pb.Job]:
        """Every job matching the filters, newest first, fetching pages as needed."""
        token = ""
        while True:
            request = _base.jobs_request(department_id, kind, state, page_size, token)
            page = self._unary(_methods.LIST_JOBS, request, timeout)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def list_audit_events(
        self,
        *,
        department_id: str | None = None,
        principal: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = _base.DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> Iterator[pb.AuditEvent]:
        """Every audit entry matching the filters, newest first (admins only)."""
        token = ""
        while True:
            request = _base.audit_request(department_id, principal, action, since, until, page_size, token)
            page = self._unary(_methods.LIST_AUDIT_EVENTS, request, timeout)
            yield from page.audit_events
            token = page.next_page_token
            if not token:
                return

    def get_department(self, department_id: str, *, timeout: float | None = None) -> pb.Department:
        """One department: its spec, status and latest job."""
        request = pb.GetDepartmentRequest(department_id=department_id)
        return self._unary(_methods.GET_DEPARTMENT, request, timeout)

    def get_department_health(
        self, department_id: str, *, timeout: float | None = None
    ) -> pb.GetDepartmentHealthResponse:
        """Live checks of everything the department's steps made."""
        request = pb.GetDepartmentHealthRequest(department_id=department_id)
        return self._unary(_methods.GET_DEPARTMENT_HEALTH, request, timeout)

    def watch(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        on_reconnect: Callable[[Reconnect], Any] | None = None,
    ) -> Iterator[WatchItem]:
        """Yield the job's snapshot, then each event, resuming across reconnects; see
        `AsyncProvisioningClient.watch`."""
        cursor = WatchCursor(job_id, after_sequence)
        stream = self._channel.unary_stream(
            _methods.WATCH_PROGRESS.path,
            _methods.WATCH_PROGRESS.serialize,
            _methods.WATCH_PROGRESS.deserialize,
        )
        failed = 0
        while True:
            call = stream(cursor.request(), metadata=self._settings.metadata)
            # A blocking read cannot time out by itself: a watchdog cancels the call when
            # the server has been silent too long, and the cancellation reads as idle.
            watchdog = _Watchdog(self._settings.idle_timeout, call.cancel)
            hint: float | None = None
            try:
                for message in call:
                    watchdog.reset()
                    if message.WhichOneof("kind") != "snapshot":
                        failed = 0
                    item = cursor.accept(message)
                    if item is not None:
                        yield item
                    if cursor.done:
                        _let_end(call)
                        return
                reason = "the stream ended before the job did"
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if watchdog.fired:
                    reason = f"nothing heard for {self._settings.idle_timeout:g} s"
                elif is_resumable(error.code, error.message):
                    reason, hint = f"{error.code_name}: {error.message}", error.retry_delay
                else:
                    raise error from exc
            finally:
                watchdog.stop()
                call.cancel()
            failed += 1
            delay = self._settings.reconnect.delay(failed, hint)
            if delay is None:
                raise _base.gave_up(job_id, failed, reason)
            if on_reconnect is not None:
                on_reconnect(Reconnect(job_id, failed, cursor.last_sequence, delay, reason))
            time.sleep(delay)

    def wait(self, job_id: str, *, on_reconnect: Callable[[Reconnect], Any] | None = None) -> pb.Job:
        """Follow a job to its end (resuming as `watch` does) and return it as it finished."""
        for _ in self.watch(job_id, on_reconnect=on_reconnect):
            pass
        return self.get_status(job_id)


class _Watchdog:
    """Calls `action` once if `reset` is not called within `seconds`; one thread per watch."""

    def __init__(self, seconds: float, action: Callable[[], object]) -> None:
        self._seconds = seconds
        self._action = action
        self._deadline = time.monotonic() + seconds
        self._stopped = threading.Event()
        self.fired = False
        threading.Thread(target=self._run, name="provisioner-watchdog", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped.wait(max(self._deadline - time.monotonic(), 0)):
            if time.monotonic() >= self._deadline:
                self.fired = True
                self._action()
                return

    def reset(self) -> None:
        # A plain float store: the watchdog thread rereads it on its next wake-up.
        self._deadline = time.monotonic() + self._seconds

    def stop(self) -> None:
        self._stopped.set()


def _let_end(call: grpc.RpcContext) -> None:
    """Give a finished job's stream a moment to close by itself (see `aio._let_end`)."""
    ended = threading.Event()
    if call.add_callback(ended.set):
        ended.wait(END_GRACE)
