"""`provisioning.v1.ProvisioningService` over the orchestrator: contract in, domain out.

Each handler validates its request against the contract's declared rules, calls the
engine, and converts the answer; every error becomes a status in one place
(`edge.errors`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from provisioner.core.errors import FieldViolation, InvalidSpecError
from provisioner.core.queries import AuditQuery, JobQuery
from provisioner.edge import context as caller
from provisioner.edge import convert, errors
from provisioner.edge.validation import violations
from provisioner.engine.orchestrator import Orchestrator
from provisioner.telemetry import metrics
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
Context = errors.Context


def _validated(request: Message) -> None:
    found = violations(request)
    if found:
        raise InvalidSpecError(found)


class ProvisioningServicer(pb_grpc.ProvisioningServiceServicer):
    def __init__(self, orchestrator: Orchestrator, *, heartbeat_seconds: float = 15.0) -> None:
        self._orchestrator = orchestrator
        self._heartbeat = heartbeat_seconds

    @errors.unary
    async def Provision(self, request: pb.ProvisionRequest, context: Context) -> pb.Job:
        spec, principal = convert.spec_from_request(request), caller.principal.get()
        # Every problem at once: the contract's rules, then the platform's (its regions).
        found = violations(request)
        named = {_base_field(v.field) for v in found}
        found += [v for v in self._orchestrator.spec_violations(spec) if _base_field(v.field) not in named]
        if found:
            raise InvalidSpecError(found)
        request_id = request.request_id or None
        if request.validate_only:
            job = await self._orchestrator.preview_provision(spec, principal=principal, request_id=request_id)
        else:
            job, _ = await self._orchestrator.provision(spec, principal=principal, request_id=request_id)
        return convert.job(job, internals=caller.internals.get())

    @errors.unary
    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.Job:
        _validated(request)
        return convert.job(await self._orchestrator.get_job(request.job_id), internals=caller.internals.get())

    @errors.streaming
    async def WatchProgress(
        self, request: pb.WatchProgressRequest, context: Context
    ) -> AsyncIterator[pb.WatchProgressResponse]:
        _validated(request)
        job = await self._orchestrator.get_job(request.job_id)
        if request.after_sequence > job.last_sequence:
            # Every sequence a watcher was sent is committed, so this one was never sent:
            # waiting for it would be waiting forever.
            raise InvalidSpecError(
                [FieldViolation("after_sequence", f"is past the job's last event, {job.last_sequence}")]
            )
        internals = caller.internals.get()
        yield pb.WatchProgressResponse(snapshot=convert.job(job, internals=internals))
        last = max(request.after_sequence, 0)
        stream = self._orchestrator.watch(request.job_id, last)
        pending: asyncio.Future[Any] | None = None
        metrics.WATCH_STREAMS.inc()
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({pending}, timeout=self._heartbeat)
                if not done:
                    # Nothing happened for a while: say so, and keep waiting on the same read.
                    yield pb.WatchProgressResponse(
                        heartbeat=pb.Heartbeat(time=convert.timestamp(datetime.now(UTC)), last_sequence=last)
                    )
                    continue
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                last = event.sequence
                message = pb.WatchProgressResponse(event=convert.event(event, internals=internals))
                metrics.EVENT_DELIVERY.observe(max(0.0, time.time() - event.at.timestamp()))
                yield message
        finally:
            metrics.WATCH_STREAMS.dec()
            if pending is not None:
                # Cancelled mid-read, or done but never looked at (the client left right
                # after the last event): either way, collect it so nothing is left dangling.
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await stream.aclose()

    @errors.unary
    async def Deprovision(self, request: pb.DeprovisionRequest, context: Context) -> pb.Job:
        _validated(request)
        principal, request_id = caller.principal.get(), request.request_id or None
        if request.validate_only:
            job = await self._orchestrator.preview_deprovision(
                request.department_id, principal=principal, request_id=request_id
            )
        else:
            job, _ = await self._orchestrator.deprovision(
                request.department_id, principal=principal, request_id=request_id
            )
        return convert.job(job, internals=caller.internals.get())

    @errors.unary
    async def ListDepartments(
        self, request: pb.ListDepartmentsRequest, context: Context
    ) -> pb.ListDepartmentsResponse:
        _validated(request)
        status = convert.department_status_from(request.status)
        region = request.region or None
        filters = _fingerprint(request.status, request.region)
        after = _decode_page_token(request.page_token, filters, "status and region")
        size = request.page_size or DEFAULT_PAGE_SIZE
        found = await self._orchestrator.list_departments(
            status=status, region=region, after_id=after, limit=size + 1
        )
        page, more = found[:size], len(found) > size
        return pb.ListDepartmentsResponse(
            departments=[convert.department(d) for d in page],
            next_page_token=_encode_page_token(page[-1].department_id, filters) if more else "",
        )

    @errors.unary
    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        _validated(request)
        job = await self._orchestrator.cancel(request.job_id, principal=caller.principal.get())
        return convert.job(job, internals=caller.internals.get())

    @errors.unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        _validated(request)
        query = JobQuery(
            request.department_id or None,
            convert.job_kind_from(request.kind),
            convert.job_state_from(request.state),
        )
        filters = _fingerprint(query)
        after = _decode_page_token(request.page_token, filters, "department, kind and state")
        size = request.page_size or DEFAULT_PAGE_SIZE
        found = await self._orchestrator.list_jobs(
            query, before=_job_position(after) if after else None, limit=size + 1
        )
        page, more = found[:size], len(found) > size
        last = page[-1] if page else None
        return pb.ListJobsResponse(
            jobs=[convert.job(j, internals=caller.internals.get()) for j in page],
            next_page_token=(
                _encode_page_token(f"{last.created_at.isoformat()}|{last.job_id}", filters)
                if more and last is not None
                else ""
            ),
        )

    @errors.unary
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        _validated(request)
        query = AuditQuery(
            request.department_id or None,
            request.principal or None,
            request.action or None,
            request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None,
            request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None,
        )
        filters = _fingerprint(query)
        after = _decode_page_token(request.page_token, filters, "department, principal, action and times")
        size = request.page_size or DEFAULT_PAGE_SIZE
        found = await self._orchestrator.list_audit(
            query, before_id=_audit_position(after) if after else None, limit=size + 1
        )
        page, more = found[:size], len(found) > size
        return pb.ListAuditEventsResponse(
            audit_events=[convert.audit_event(number, entry) for number, entry in page],
            next_page_token=_encode_page_token(str(page[-1][0]), filters) if more else "",
        )

    @errors.unary
    async def GetDepartment(self, request: pb.GetDepartmentRequest, context: Context) -> pb.Department:
        _validated(request)
        return convert.department(await self._orchestrator.get_department(request.department_id))

    @errors.unary
    async def GetDepartmentHealth(
        self, request: pb.GetDepartmentHealthRequest, context: Context
    ) -> pb.GetDepartmentHealthResponse:
        _validated(request)
        observed = await self._orchestrator.health(request.department_id)
        conditions = [
            pb.Condition(
                step=c.step.value,
                healthy=c.healthy,
                reason=c.reason,
                message=c.message,
                observed_time=convert.timestamp(at),
            )
            for c, at in observed
        ]
        return pb.GetDepartmentHealthResponse(
            department_id=request.department_id,
            healthy=all(c.healthy for c in conditions),
            conditions=conditions,
        )


def _base_field(path: str) -> str:
    """`workflows` for `workflows[3]`: the engine's rules repeat the contract's per item."""
    return path.split("[", 1)[0].split(".", 1)[0]


def _fingerprint(*filters: object) -> str:
    """Which filters a page token was issued for: a token is good with the same ones only."""
    return hashlib.sha256("|".join(map(str, filters)).encode()).hexdigest()[:12]


_FOREIGN_TOKEN = FieldViolation("page_token", "is not a token this server issued")


def _job_position(after: str) -> tuple[datetime, str]:
    created, _, job_id = after.partition("|")
    try:
        return datetime.fromisoformat(created), job_id
    except ValueError:
        raise InvalidSpecError([_FOREIGN_TOKEN]) from None


def _audit_position(after: str) -> int:
    if not after.isdigit():
        raise InvalidSpecError([_FOREIGN_TOKEN])
    return int(after)


def _encode_page_token(after: str, filters: str) -> str:
    raw = json.dumps({"after": after, "filters": filters}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, filters: str, named: str) -> str:
    """Where the previous page ended; the token is opaque to callers."""
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, made_for = str(data["after"]), str(data["filters"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidSpecError([_FOREIGN_TOKEN]) from None
    if made_for != filters:
        raise InvalidSpecError(
            [FieldViolation("page_token", f"was issued for other filters; repeat the same {named}")]
        )
    return after
