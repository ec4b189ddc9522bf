"""Retry policy: exponential backoff with jitter and a cap, for retryable errors only."""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.core.errors import ProvisioningError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The seed's policy: up to 3 retries, 1 s base, doubling, with jitter and a cap."""

    max_retries: int = 3
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("retry policy: max_retries must be >= 0")
        if self.base_delay < 0:
            raise ValueError("retry policy: base_delay must be >= 0")
        if self.factor < 1:
            raise ValueError("retry policy: factor must be >= 1")
        if self.max_delay < self.base_delay:
            raise ValueError("retry policy: max_delay must be >= base_delay")
        if not 0 <= self.jitter <= 1:
            raise ValueError("retry policy: jitter must be within [0, 1]")

    def next_delay(self, attempt: int, error: BaseException, rand: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        `attempt` is the number of the attempt that just failed (1 for the first);
        `rand` is a uniform sample from [0, 1) supplied by the caller so this stays pure.
        An error's own `retry_after` wins over the computed backoff (still capped).
        """
        if not is_retryable(error) or attempt > self.max_retries:
            return None
        hinted = getattr(error, "retry_after", None)
        if isinstance(hinted, int | float) and hinted >= 0:
            return min(float(hinted), self.max_delay)
        raw = self.base_delay * self.factor ** (attempt - 1)
        spread = raw * self.jitter * (2 * rand - 1)
        return max(0.0, min(raw + spread, self.max_delay))


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, ProvisioningError) and error.retryable
