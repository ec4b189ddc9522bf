"""What the sync and asyncio clients share: settings, metadata and request building."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import config
from provisioner_client.errors import ApiError, ConfigurationError, UnavailableError
from provisioner_client.retry import DEFAULT_RECONNECT, DEFAULT_RETRY, RetryPolicy
from provisioner_client.spec import DepartmentSpec, SpecFields

#: An enum filter: a name without its prefix (`"active"`, `"rolling_back"`), the full
#: name (`"DEPARTMENT_STATUS_ACTIVE"`) or the enum value; None for no filter.
StatusFilter = str | int | None

DEFAULT_PAGE_SIZE = 100


def _names(enum: EnumTypeWrapper, prefix: str) -> tuple[str, ...]:
    return tuple(
        n.removeprefix(prefix).lower()
        for n in enum.keys()  # noqa: SIM118 - an enum wrapper, not a dict
        if not n.endswith("UNSPECIFIED")
    )


#: Department statuses, job kinds and job states by name, without the enum prefix.
STATUS_NAMES = _names(pb.DepartmentStatus, "DEPARTMENT_STATUS_")
KIND_NAMES = _names(pb.JobKind, "JOB_KIND_")
STATE_NAMES = _names(pb.JobState, "JOB_STATE_")


@dataclass(frozen=True, slots=True)
class Settings:
    """One client's fixed settings, resolved and checked once at construction."""

    endpoint: config.Endpoint
    metadata: tuple[tuple[str, str], ...]
    timeout: float
    retry: RetryPolicy
    reconnect: RetryPolicy
    idle_timeout: float

    @classmethod
    def build(
        cls,
        server: str | None,
        token: str | None,
        timeout: float,
        retry: RetryPolicy | None,
        reconnect: RetryPolicy | None,
        idle_timeout: float,
    ) -> Settings:
        if timeout <= 0:
            raise ConfigurationError("the call timeout must be more than 0 seconds")
        if idle_timeout <= 0:
            raise ConfigurationError("the watch idle timeout must be more than 0 seconds")
        bearer = config.resolve_token(token)
        return cls(
            endpoint=config.resolve_endpoint(server),
            metadata=(("authorization", f"Bearer {bearer}"),) if bearer else (),
            timeout=timeout,
            retry=retry or DEFAULT_RETRY,
            reconnect=reconnect or DEFAULT_RECONNECT,
            idle_timeout=idle_timeout,
        )

    def deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout


def new_request_id() -> str:
    """One idempotency key per logical call, reused by each of its retries."""
    return str(uuid.uuid4())


def provision_request(
    spec: DepartmentSpec | None, fields: SpecFields, request_id: str | None
) -> pb.ProvisionRequest:
    if spec is not None and fields:
        raise ConfigurationError("pass either a DepartmentSpec or its fields as keywords, not both")
    chosen = spec if spec is not None else DepartmentSpec.of(fields)
    return chosen.to_request(request_id or new_request_id())


def _enum_name(enum: EnumTypeWrapper, prefix: str, value: StatusFilter, what: str) -> str:
    """The enum name of a filter given by name (any case, prefix optional) or value."""
    if value is None or value == "":
        return f"{prefix}UNSPECIFIED"
    try:
        if isinstance(value, int):
            return str(enum.Name(value))
        name = value.strip().upper().replace("-", "_")
        name = name if name.startswith(prefix) else f"{prefix}{name}"
        enum.Value(name)
    except ValueError:
        choices = ", ".join(_names(enum, prefix))
        raise ConfigurationError(f"unknown {what} {value!r} (choose from {choices})") from None
    return name


def list_request(
    status: StatusFilter, region: str | None, page_size: int, page_token: str
) -> pb.ListDepartmentsRequest:
    return pb.ListDepartmentsRequest(
        page_size=page_size,
        page_token=page_token,
        status=_enum_name(pb.DepartmentStatus, "DEPARTMENT_STATUS_", status, "department status"),
        region=region or "",
    )


def jobs_request(
    department_id: str | None, kind: StatusFilter, state: StatusFilter, page_size: int, page_token: str
) -> pb.ListJobsRequest:
    return pb.ListJobsRequest(
        page_size=page_size,
        page_token=page_token,
        department_id=department_id or "",
        kind=_enum_name(pb.JobKind, "JOB_KIND_", kind, "job kind"),
        state=_enum_name(pb.JobState, "JOB_STATE_", state, "job state"),
    )


def audit_request(
    department_id: str | None,
    principal: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    page_size: int,
    page_token: str,
) -> pb.ListAuditEventsRequest:
    request = pb.ListAuditEventsRequest(
        page_size=page_size,
        page_token=page_token,
        department_id=department_id or "",
        principal=principal or "",
        action=action or "",
    )
    if since is not None:
        request.start_time.FromDatetime(since)
    if until is not None:
        request.end_time.FromDatetime(until)
    return request


def retry_delay(settings: Settings, error: ApiError, failed_attempts: int) -> float | None:
    """How long to wait before retrying a unary call that failed with `error`, or None to give up.

    Only UNAVAILABLE is retried: the call did not happen, or (provision, deprovision) it
    carries a request id that makes a repeat return the original job.
    """
    if not isinstance(error, UnavailableError):
        return None
    return settings.retry.delay(failed_attempts, error.retry_delay)


def gave_up(job_id: str, attempts: int, reason: str) -> UnavailableError:
    return UnavailableError(
        grpc.StatusCode.UNAVAILABLE,
        f"lost the watch of job {job_id} and could not resume it after {attempts} attempts ({reason})",
    )
