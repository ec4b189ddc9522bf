"""The server's Prometheus metrics: every family, and the few calls that feed them.

Families live on prometheus_client's default registry, beside its process and GC
collectors, so `/metrics` also carries the process's CPU, memory and file descriptors.
Label values come from closed sets (job kinds, outcomes, step names, gRPC methods and
codes, rejection reasons): never a department id, a job id or a principal, which would
make one series per caller.

Jobs and steps are counted from the events this replica commits (`job_committed`), so
two replicas never count the same transition twice. The gauges of what is open now (jobs
running here, watch streams) go up and down around the work, in `try`/`finally`
(`track_inprogress`), so no error path leaves them off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import Counter, Gauge, Histogram

from provisioner.core.job import Event, EventType, Job
from provisioner.core.notifications import EVENT_TYPES
from provisioner.core.states import DepartmentStatus, JobKind, State, StepName

#: Seconds: a no-op step takes microseconds, a real one up to its timeout (minutes).
_STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

JOBS = Counter("provisioner_jobs", "Jobs finished on this replica.", ["kind", "outcome"])
JOBS_IN_FLIGHT = Gauge("provisioner_jobs_in_flight", "Jobs running on this replica.", ["kind"])
JOB_DURATION = Histogram(
    "provisioner_job_duration_seconds",
    "From a job's creation to its end.",
    ["kind", "outcome"],
    buckets=_JOB_BUCKETS,
)
STEP_DURATION = Histogram(
    "provisioner_step_duration_seconds",
    "A step's final attempt, from its start to its success or failure.",
    ["step", "outcome"],
    buckets=_STEP_BUCKETS,
)
STEP_RETRIES = Counter("provisioner_step_retries", "Step attempts that failed and are retried.", ["step"])
COMPENSATIONS = Counter(
    "provisioner_compensations", "Steps undone (rollback or teardown), by outcome.", ["step", "outcome"]
)
REQUESTS = Counter("provisioner_requests", "RPCs answered, by method and status code.", ["method", "code"])
REQUEST_DURATION = Histogram(
    "provisioner_request_duration_seconds",
    "RPC latency (for streams: the stream's whole life).",
    ["method"],
    buckets=_FAST_BUCKETS,
)
REJECTED = Counter(
    "provisioner_requests_rejected",
    "RPCs refused before any work: auth, rate_limit, concurrency or invalid.",
    ["reason"],
)
REJECTION_REASONS = ("auth", "rate_limit", "concurrency", "invalid")
WATCH_STREAMS = Gauge("provisioner_watch_streams", "Open WatchProgress streams on this replica.")
EVENT_DELIVERY = Histogram(
    "provisioner_event_delivery_seconds",
    "From an event's commit to its sending to a watcher.",
    buckets=_FAST_BUCKETS,
)
STORE_COMMIT = Histogram(
    "provisioner_store_commit_seconds",
    "One group-commit transaction of the job store.",
    buckets=_FAST_BUCKETS,
)
STORE_BATCH = Histogram(
    "provisioner_store_commit_batch_size", "Writes in one group-commit transaction.", buckets=_BATCH_BUCKETS
)

DEPARTMENTS = Gauge(
    "provisioner_departments",
    "Departments by status, in the whole job store (every replica reports the same).",
    ["status"],
)
OVERDUE_JOBS = Gauge(
    "provisioner_jobs_overdue",
    "Unfinished jobs past their deadline, in the whole job store: nobody is running them.",
)

WEBHOOKS = Counter(
    "provisioner_webhook_deliveries",
    "Webhook delivery attempts by event type and outcome (delivered, retrying, failed: given up).",
    ["type", "outcome"],
)
WEBHOOK_ATTEMPT = Histogram(
    "provisioner_webhook_attempt_seconds",
    "One webhook delivery attempt, until the receiver's answer.",
    buckets=_FAST_BUCKETS,
)
WEBHOOKS_PENDING = Gauge(
    "provisioner_webhooks_pending", "Webhook messages not yet delivered, in the whole job store."
)
WEBHOOKS_FAILED = Gauge(
    "provisioner_webhooks_failed", "Webhook messages given up on, in the whole job store."
)

OAUTH_TOKENS = Counter(
    "provisioner_oauth_tokens",
    "Token requests at /oauth2/token: issued, or refused with their RFC 6749 error code.",
    ["outcome"],
)
OAUTH_OUTCOMES = (
    "issued",
    "invalid_request",
    "invalid_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "temporarily_unavailable",
)

_OUTCOMES = {State.COMPLETED: "completed", State.FAILED: "failed"}


def _initialize() -> None:
    """Create every series whose labels are known, at 0, so a dashboard or an alert sees
    0 rather than nothing before the first event (a `rate()` needs the series to exist)."""
    for kind in JobKind:
        JOBS_IN_FLIGHT.labels(kind.value)
        for outcome in _OUTCOMES.values():
            JOBS.labels(kind.value, outcome)
    for step in StepName:
        STEP_RETRIES.labels(step.value)
    for status in DepartmentStatus:
        DEPARTMENTS.labels(status.value)
    for reason in REJECTION_REASONS:
        REJECTED.labels(reason)
    for event_type in EVENT_TYPES:
        for delivery in ("delivered", "retrying", "failed"):
            WEBHOOKS.labels(event_type, delivery)
    for outcome in OAUTH_OUTCOMES:
        OAUTH_TOKENS.labels(outcome)


_initialize()


def census_taken(
    departments: Mapping[DepartmentStatus, int],
    overdue_jobs: int,
    webhooks_pending: int,
    webhooks_failed: int,
) -> None:
    for status, count in departments.items():
        DEPARTMENTS.labels(status.value).set(count)
    OVERDUE_JOBS.set(overdue_jobs)
    WEBHOOKS_PENDING.set(webhooks_pending)
    WEBHOOKS_FAILED.set(webhooks_failed)


def job_committed(job: Job, events: Sequence[Event]) -> None:
    """Count what `events`, just committed for `job` (as it is after them), say happened."""
    for event in events:
        kind = event.type
        if kind is EventType.JOB_FINISHED:
            outcome = _OUTCOMES.get(event.state, "failed")
            JOBS.labels(job.kind.value, outcome).inc()
            JOB_DURATION.labels(job.kind.value, outcome).observe(
                max(0.0, (event.at - job.created_at).total_seconds())
            )
        elif kind in (EventType.STEP_SUCCEEDED, EventType.STEP_FAILED) and event.step is not None:
            record = job.steps.get(event.step)
            started = record.started_at if record is not None else None
            if started is not None:
                outcome = "succeeded" if kind is EventType.STEP_SUCCEEDED else "failed"
                STEP_DURATION.labels(event.step.value, outcome).observe(
                    max(0.0, (event.at - started).total_seconds())
                )
        elif kind is EventType.STEP_RETRYING and event.step is not None:
            STEP_RETRIES.labels(event.step.value).inc()
        elif kind is EventType.STEP_COMPENSATED and event.step is not None:
            COMPENSATIONS.labels(event.step.value, "compensated").inc()
        elif kind is EventType.STEP_COMPENSATION_FAILED and event.step is not None:
            COMPENSATIONS.labels(event.step.value, "failed").inc()
