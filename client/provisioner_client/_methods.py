"""The service's methods as typed handles, shared by the sync and the asyncio clients.

The generated stub is untyped; binding each method with its request and response types
here keeps every call typed end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

SERVICE = "provisioning.v1.ProvisioningService"


@dataclass(frozen=True, slots=True)
class Method(Generic[Req, Resp]):
    """One RPC: its name and message types."""

    name: str
    request: type[Req]
    response: type[Resp]

    @property
    def path(self) -> str:
        return f"/{SERVICE}/{self.name}"

    def serialize(self, message: Req) -> bytes:
        return message.SerializeToString()

    def deserialize(self, data: bytes) -> Resp:
        return self.response.FromString(data)


PROVISION = Method("Provision", pb.ProvisionRequest, pb.Job)
GET_STATUS = Method("GetStatus", pb.GetStatusRequest, pb.Job)
WATCH_PROGRESS = Method("WatchProgress", pb.WatchProgressRequest, pb.WatchProgressResponse)
DEPROVISION = Method("Deprovision", pb.DeprovisionRequest, pb.Job)
LIST_DEPARTMENTS = Method("ListDepartments", pb.ListDepartmentsRequest, pb.ListDepartmentsResponse)
GET_DEPARTMENT = Method("GetDepartment", pb.GetDepartmentRequest, pb.Department)
CANCEL_JOB = Method("CancelJob", pb.CancelJobRequest, pb.Job)
LIST_JOBS = Method("ListJobs", pb.ListJobsRequest, pb.ListJobsResponse)
LIST_AUDIT_EVENTS = Method("ListAuditEvents", pb.ListAuditEventsRequest, pb.ListAuditEventsResponse)
GET_DEPARTMENT_HEALTH = Method(
    "GetDepartmentHealth", pb.GetDepartmentHealthRequest, pb.GetDepartmentHealthResponse
)
