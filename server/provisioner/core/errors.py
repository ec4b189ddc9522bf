"""One exception hierarchy for the whole product; the edge maps it to a status once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One violated rule of a request, named by its field path."""

    field: str
    description: str


class ProvisioningError(Exception):
    """Root of every error the product raises on purpose.

    `reason` is a stable UPPER_SNAKE code for machines; the message is for people.
    `retryable` says whether trying the same thing again may succeed, and
    `retry_after` (seconds) is the error's own hint, honoured by the retry policy.
    """

    reason = "PROVISIONING_ERROR"
    retryable = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidSpecError(ProvisioningError):
    """The request breaks field rules: the first `MAX_VIOLATIONS` of them are listed (and
    counted in the message), so a hostile request cannot make a large error."""

    reason = "INVALID_SPEC"
    MAX_VIOLATIONS = 10

    def __init__(self, violations: list[FieldViolation]) -> None:
        listed = violations[: self.MAX_VIOLATIONS]
        if len(violations) == 1:
            message = f"invalid request: {violations[0].field} {violations[0].description}"
        else:
            fields = ", ".join(dict.fromkeys(v.field for v in listed))
            more = len(violations) - len(listed)
            also = f" and {more} more" if more else ""
            message = f"invalid request: {fields}{also} (see the field violations)"
        super().__init__(message)
        self.violations = listed


class NotFoundError(ProvisioningError):
    reason = "NOT_FOUND"


class ConflictError(ProvisioningError):
    """The request contradicts what already exists (another spec, another payload)."""

    reason = "CONFLICT"


class FailedPreconditionError(ProvisioningError):
    """The request is valid but the system is not in a state to accept it now."""

    reason = "FAILED_PRECONDITION"


class QuotaExceededError(FailedPreconditionError):
    """Provisioning one more department would pass the platform's quota.

    A precondition, not a rate: trying again succeeds only once a department is gone.
    """

    reason = "QUOTA_EXCEEDED"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the quota of {limit} departments is reached; deprovision one first "
            "(or raise PROVISIONER_MAX_DEPARTMENTS)"
        )
        self.limit = limit


class StepError(ProvisioningError):
    """A step could not do its work. Fatal unless a subclass says otherwise."""

    reason = "STEP_FAILED"


class TransientStepError(StepError):
    """A network blip, a rate limit, a busy dependency: worth retrying."""

    reason = "STEP_TRANSIENT"
    retryable = True


class StepTimeoutError(TransientStepError):
    reason = "STEP_TIMEOUT"


class DeadlineExceededError(ProvisioningError):
    reason = "DEADLINE_EXCEEDED"


class CancelledByRequestError(ProvisioningError):
    reason = "CANCELLED"


class LeaseLostError(ProvisioningError):
    """Another replica owns the job now; this one must stop touching it."""

    reason = "LEASE_LOST"
    retryable = True


class StoreUnavailableError(ProvisioningError):
    reason = "STORE_UNAVAILABLE"
    retryable = True


class SubscriberTooSlowError(ProvisioningError):
    """A watcher fell too far behind; it may resume from the last sequence it saw."""

    reason = "WATCHER_TOO_SLOW"
    retryable = True


class ServiceDrainingError(ProvisioningError):
    """The server is shutting down; the caller may resume elsewhere or later."""

    reason = "DRAINING"
    retryable = True


class ElsewhereError(ProvisioningError):
    """Only another replica can answer: the department's resources are on its machine."""

    reason = "ON_ANOTHER_REPLICA"
    retryable = True


class ConfigurationError(ProvisioningError):
    """A setting is missing or malformed; the message names it."""

    reason = "BAD_CONFIGURATION"
