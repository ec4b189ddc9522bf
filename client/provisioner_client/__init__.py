"""The provisioning API's Python SDK and the `provisionctl` CLI.

Depends only on the contract (`provisioner_api`), never on the server.

    async with AsyncProvisioningClient() as client:
        job = await client.provision(DepartmentSpec(...))
        async for item in client.watch(job.job_id):
            ...
"""

from provisioner_client.aio import AsyncProvisioningClient
from provisioner_client.config import DEFAULT_TARGET, Endpoint
from provisioner_client.errors import (
    AlreadyExistsError,
    ApiError,
    ClientError,
    ConfigurationError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from provisioner_client.retry import RetryPolicy
from provisioner_client.spec import DepartmentSpec, SpecFields, load_spec_file
from provisioner_client.sync import ProvisioningClient
from provisioner_client.watch import Reconnect, WatchItem, is_terminal

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExistsError",
    "ApiError",
    "AsyncProvisioningClient",
    "ClientError",
    "ConfigurationError",
    "DeadlineExceededError",
    "DepartmentSpec",
    "Endpoint",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProvisioningClient",
    "Reconnect",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SpecFields",
    "UnauthenticatedError",
    "UnavailableError",
    "WatchItem",
    "is_terminal",
    "load_spec_file",
]
