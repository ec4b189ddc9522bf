"""Tunables of the engine, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.core.errors import ConfigurationError
from provisioner.core.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class EngineConfig:
    step_timeout: float = 60.0
    #: How long one step's health check may take (at most the step timeout); a department's
    #: answer is kept `health_ttl` seconds and shared by everyone asking meanwhile.
    health_timeout: float = 5.0
    health_ttl: float = 2.0
    job_deadline: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: How long a replica's claim on a job lasts without renewal.
    lease_seconds: float = 15.0
    #: How often leases are renewed and orphaned jobs looked for.
    claim_interval: float = 1.0
    max_running_jobs: int = 5000
    #: At most this many departments hold resources at once (reserved when a job is made).
    max_departments: int = 1000
    #: False for a replica that only accepts requests and leaves running them to others.
    run_jobs: bool = True
    #: How often the store's figures (departments by status, overdue jobs) are refreshed
    #: for the metrics.
    census_interval: float = 15.0
    #: Finished jobs' events, audit entries and settled webhook messages older than this
    #: many days are removed, in small batches, every `retention_interval` seconds; 0
    #: keeps everything.
    retention_days: float = 90.0
    retention_interval: float = 3600.0
    #: The regions this platform runs departments in; a provisioning naming another is
    #: refused before any job is made (the validate step checks again). Empty: any.
    regions: tuple[str, ...] = ()
    #: Whether finished jobs put webhook messages in the outbox (PROVISIONER_WEBHOOK_URL
    #: is set); the same on every replica.
    webhooks: bool = False

    def __post_init__(self) -> None:
        if self.step_timeout <= 0:
            raise ConfigurationError("PROVISIONER_STEP_TIMEOUT must be > 0 seconds")
        if self.health_timeout <= 0 or self.health_ttl < 0:
            raise ConfigurationError("health checks need a timeout > 0 and a time to keep answers >= 0")
        if self.job_deadline < self.step_timeout:
            raise ConfigurationError("PROVISIONER_JOB_DEADLINE must be >= PROVISIONER_STEP_TIMEOUT")
        if self.claim_interval <= 0:
            raise ConfigurationError("PROVISIONER_CLAIM_INTERVAL must be > 0 seconds")
        if self.lease_seconds < 3 * self.claim_interval:
            raise ConfigurationError(
                "PROVISIONER_LEASE_SECONDS must be at least 3x PROVISIONER_CLAIM_INTERVAL, "
                "so a lease is renewed several times before it can expire"
            )
        if self.max_running_jobs < 1:
            raise ConfigurationError("PROVISIONER_MAX_RUNNING_JOBS must be >= 1")
        if self.census_interval <= 0:
            raise ConfigurationError("PROVISIONER_CENSUS_INTERVAL must be > 0 seconds")
        if self.retention_days < 0 or self.retention_interval <= 0:
            raise ConfigurationError(
                "PROVISIONER_RETENTION_DAYS must be >= 0 and PROVISIONER_RETENTION_INTERVAL > 0 seconds"
            )
        if self.max_departments < 1:
            raise ConfigurationError("PROVISIONER_MAX_DEPARTMENTS must be >= 1")
