import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from provisioner_api.provisioning.v1 import rules_pb2 as _rules_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_PROVISION: _ClassVar[JobKind]
    JOB_KIND_DEPROVISION: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_VALIDATING: _ClassVar[JobState]
    JOB_STATE_CREATING_DATABASE: _ClassVar[JobState]
    JOB_STATE_CREATING_OAUTH: _ClassVar[JobState]
    JOB_STATE_DEPLOYING_CONTAINER: _ClassVar[JobState]
    JOB_STATE_DEPLOYING_WORKFLOWS: _ClassVar[JobState]
    JOB_STATE_CONFIGURING_GATEWAY: _ClassVar[JobState]
    JOB_STATE_VALIDATING_DEPLOYMENT: _ClassVar[JobState]
    JOB_STATE_COMPLETED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_ROLLING_BACK: _ClassVar[JobState]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_STATUS_PENDING: _ClassVar[StepStatus]
    STEP_STATUS_RUNNING: _ClassVar[StepStatus]
    STEP_STATUS_SUCCEEDED: _ClassVar[StepStatus]
    STEP_STATUS_FAILED: _ClassVar[StepStatus]
    STEP_STATUS_COMPENSATING: _ClassVar[StepStatus]
    STEP_STATUS_COMPENSATED: _ClassVar[StepStatus]

class JobEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_EVENT_TYPE_UNSPECIFIED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_JOB_CREATED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STATE_CHANGED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_STARTED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_RETRYING: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_SUCCEEDED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_FAILED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_COMPENSATING: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_COMPENSATED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STEP_COMPENSATION_FAILED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_JOB_FINISHED: _ClassVar[JobEventType]

class DepartmentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPARTMENT_STATUS_UNSPECIFIED: _ClassVar[DepartmentStatus]
    DEPARTMENT_STATUS_PROVISIONING: _ClassVar[DepartmentStatus]
    DEPARTMENT_STATUS_ACTIVE: _ClassVar[DepartmentStatus]
    DEPARTMENT_STATUS_FAILED: _ClassVar[DepartmentStatus]
    DEPARTMENT_STATUS_NEEDS_ATTENTION: _ClassVar[DepartmentStatus]
    DEPARTMENT_STATUS_DEPROVISIONING: _ClassVar[DepartmentStatus]
    DEPARTMENT_STATUS_DEPROVISIONED: _ClassVar[DepartmentStatus]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_PROVISION: JobKind
JOB_KIND_DEPROVISION: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_VALIDATING: JobState
JOB_STATE_CREATING_DATABASE: JobState
JOB_STATE_CREATING_OAUTH: JobState
JOB_STATE_DEPLOYING_CONTAINER: JobState
JOB_STATE_DEPLOYING_WORKFLOWS: JobState
JOB_STATE_CONFIGURING_GATEWAY: JobState
JOB_STATE_VALIDATING_DEPLOYMENT: JobState
JOB_STATE_COMPLETED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_ROLLING_BACK: JobState
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_STATUS_PENDING: StepStatus
STEP_STATUS_RUNNING: StepStatus
STEP_STATUS_SUCCEEDED: StepStatus
STEP_STATUS_FAILED: StepStatus
STEP_STATUS_COMPENSATING: StepStatus
STEP_STATUS_COMPENSATED: StepStatus
JOB_EVENT_TYPE_UNSPECIFIED: JobEventType
JOB_EVENT_TYPE_JOB_CREATED: JobEventType
JOB_EVENT_TYPE_STATE_CHANGED: JobEventType
JOB_EVENT_TYPE_STEP_STARTED: JobEventType
JOB_EVENT_TYPE_STEP_RETRYING: JobEventType
JOB_EVENT_TYPE_STEP_SUCCEEDED: JobEventType
JOB_EVENT_TYPE_STEP_FAILED: JobEventType
JOB_EVENT_TYPE_STEP_COMPENSATING: JobEventType
JOB_EVENT_TYPE_STEP_COMPENSATED: JobEventType
JOB_EVENT_TYPE_STEP_COMPENSATION_FAILED: JobEventType
JOB_EVENT_TYPE_JOB_FINISHED: JobEventType
DEPARTMENT_STATUS_UNSPECIFIED: DepartmentStatus
DEPARTMENT_STATUS_PROVISIONING: DepartmentStatus
DEPARTMENT_STATUS_ACTIVE: DepartmentStatus
DEPARTMENT_STATUS_FAILED: DepartmentStatus
DEPARTMENT_STATUS_NEEDS_ATTENTION: DepartmentStatus
DEPARTMENT_STATUS_DEPROVISIONING: DepartmentStatus
DEPARTMENT_STATUS_DEPROVISIONED: DepartmentStatus

class ProvisionRequest(_message.Message):
    __slots__ = ("department_id", "department_name", "workflows", "data_retention", "region", "admin_email", "request_id", "validate_only")
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    DATA_RETENTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADMIN_EMAIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    department_id: str
    department_name: str
    workflows: _containers.RepeatedScalarFieldContainer[str]
    data_retention: str
    region: str
    admin_email: str
    request_id: str
    validate_only: bool
    def __init__(self, department_id: _Optional[str] = ..., department_name: _Optional[str] = ..., workflows: _Optional[_Iterable[str]] = ..., data_retention: _Optional[str] = ..., region: _Optional[str] = ..., admin_email: _Optional[str] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchProgressRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchProgressResponse(_message.Message):
    __slots__ = ("snapshot", "event", "heartbeat")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Job
    event: JobEvent
    heartbeat: Heartbeat
    def __init__(self, snapshot: _Optional[_Union[Job, _Mapping]] = ..., event: _Optional[_Union[JobEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time", "last_sequence")
    TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    last_sequence: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class DeprovisionRequest(_message.Message):
    __slots__ = ("department_id", "request_id", "validate_only")
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    department_id: str
    request_id: str
    validate_only: bool
    def __init__(self, department_id: _Optional[str] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ListDepartmentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "region")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: DepartmentStatus
    region: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[DepartmentStatus, str]] = ..., region: _Optional[str] = ...) -> None: ...

class ListDepartmentsResponse(_message.Message):
    __slots__ = ("departments", "next_page_token")
    DEPARTMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    departments: _containers.RepeatedCompositeFieldContainer[Department]
    next_page_token: str
    def __init__(self, departments: _Optional[_Iterable[_Union[Department, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "department_id", "kind", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    department_id: str
    kind: JobKind
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., department_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "department_id", "principal", "action", "start_time", "end_time")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    department_id: str
    principal: str
    action: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., department_id: _Optional[str] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("audit_events", "next_page_token")
    AUDIT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audit_events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, audit_events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "time", "principal", "action", "department_id", "outcome", "job_id", "request_id", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    principal: str
    action: str
    department_id: str
    outcome: str
    job_id: str
    request_id: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., department_id: _Optional[str] = ..., outcome: _Optional[str] = ..., job_id: _Optional[str] = ..., request_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class GetDepartmentRequest(_message.Message):
    __slots__ = ("department_id",)
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    department_id: str
    def __init__(self, department_id: _Optional[str] = ...) -> None: ...

class GetDepartmentHealthRequest(_message.Message):
    __slots__ = ("department_id",)
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    department_id: str
    def __init__(self, department_id: _Optional[str] = ...) -> None: ...

class GetDepartmentHealthResponse(_message.Message):
    __slots__ = ("department_id", "healthy", "conditions")
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    department_id: str
    healthy: bool
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, department_id: _Optional[str] = ..., healthy: _Optional[bool] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("step", "healthy", "reason", "message", "observed_time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_TIME_FIELD_NUMBER: _ClassVar[int]
    step: str
    healthy: bool
    reason: str
    message: str
    observed_time: _timestamp_pb2.Timestamp
    def __init__(self, step: _Optional[str] = ..., healthy: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., observed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "department_id", "kind", "state", "progress", "steps", "principal", "request_id", "create_time", "update_time", "deadline_time", "finish_time", "error", "cleanup", "last_sequence", "issued_client")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_CLIENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    department_id: str
    kind: JobKind
    state: JobState
    progress: int
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    principal: str
    request_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    deadline_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    error: JobError
    cleanup: CleanupReport
    last_sequence: int
    issued_client: OAuthClient
    def __init__(self, job_id: _Optional[str] = ..., department_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., principal: _Optional[str] = ..., request_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., cleanup: _Optional[_Union[CleanupReport, _Mapping]] = ..., last_sequence: _Optional[int] = ..., issued_client: _Optional[_Union[OAuthClient, _Mapping]] = ...) -> None: ...

class OAuthClient(_message.Message):
    __slots__ = ("client_id", "client_secret")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    client_secret: str
    def __init__(self, client_id: _Optional[str] = ..., client_secret: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "status", "attempts", "start_time", "finish_time", "last_error", "resources")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: StepStatus
    attempts: int
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    last_error: str
    resources: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[StepStatus, str]] = ..., attempts: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., resources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("reason", "message", "step")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    step: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class CleanupReport(_message.Message):
    __slots__ = ("compensated", "remaining")
    COMPENSATED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    compensated: _containers.RepeatedScalarFieldContainer[str]
    remaining: _containers.RepeatedCompositeFieldContainer[RemainingResources]
    def __init__(self, compensated: _Optional[_Iterable[str]] = ..., remaining: _Optional[_Iterable[_Union[RemainingResources, _Mapping]]] = ...) -> None: ...

class RemainingResources(_message.Message):
    __slots__ = ("step", "resources")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    step: str
    resources: _containers.ScalarMap[str, str]
    def __init__(self, step: _Optional[str] = ..., resources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "type", "state", "progress", "step", "attempt", "message", "time", "error", "cleanup", "retry_delay_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    type: JobEventType
    state: JobState
    progress: int
    step: str
    attempt: int
    message: str
    time: _timestamp_pb2.Timestamp
    error: JobError
    cleanup: CleanupReport
    retry_delay_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., type: _Optional[_Union[JobEventType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[int] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., cleanup: _Optional[_Union[CleanupReport, _Mapping]] = ..., retry_delay_seconds: _Optional[float] = ...) -> None: ...

class Department(_message.Message):
    __slots__ = ("department_id", "department_name", "workflows", "data_retention", "region", "admin_email", "status", "current_job_id", "create_time", "update_time")
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    DATA_RETENTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADMIN_EMAIL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    department_id: str
    department_name: str
    workflows: _containers.RepeatedScalarFieldContainer[str]
    data_retention: str
    region: str
    admin_email: str
    status: DepartmentStatus
    current_job_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, department_id: _Optional[str] = ..., department_name: _Optional[str] = ..., workflows: _Optional[_Iterable[str]] = ..., data_retention: _Optional[str] = ..., region: _Optional[str] = ..., admin_email: _Optional[str] = ..., status: _Optional[_Union[DepartmentStatus, str]] = ..., current_job_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
