"""Per-principal rate limits for the API: exact sliding windows, seeded from the audit log.

A call is admitted when fewer than `count` calls of the same principal and bucket were
admitted in the last `period` seconds; a refused call learns exactly when the oldest
admission leaves the window. The windows are plain data over times passed in (`now`, in
seconds since the epoch, because the audit log that seeds them after a restart keeps
wall-clock times); only `seed_from_audit` does I/O.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from provisioner.core.department import AuditEntry
from provisioner.core.errors import ProvisioningError
from provisioner.edge.auth import DEPROVISION, PROVISION, SERVICE

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")

PROVISION_BUCKET = "provision"
DEPROVISION_BUCKET = "deprovision"
READ_BUCKET = "read"
#: Buckets whose calls the engine audits, by the audit action that records them.
AUDITED_BUCKETS = {PROVISION_BUCKET: "provision", DEPROVISION_BUCKET: "deprovision"}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` calls per `period` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """`10/h`, `600/m`, `5/30s`: a count, a slash, an optional multiplier and a unit."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"expected a rate like 10/h or 600/m, got {text!r}")
    count, multiplier, unit = match.groups()
    period = (int(multiplier) if multiplier else 1) * _UNITS[unit]
    if int(count) < 1 or period <= 0:
        raise ValueError(f"a rate needs a positive count and period, got {text!r}")
    return Rate(int(count), period)


class RateLimitedError(ProvisioningError):
    """Too many calls of one kind by one principal; `retry_after` says when one fits again."""

    reason = "RATE_LIMITED"
    retryable = True

    def __init__(self, bucket: str, rate: Rate, retry_after: float) -> None:
        super().__init__(
            f"rate limit for {bucket} calls reached ({rate.count} per {rate.period:g} s); "
            f"retry in {max(1, math.ceil(retry_after))} s",
            retry_after=retry_after,
        )
        self.bucket = bucket
        self.rate = rate


def bucket_for(method: str) -> str | None:
    """The bucket a call of `method` counts against; None for calls that are not limited
    (health, reflection, anything outside the provisioning service)."""
    if method == PROVISION:
        return PROVISION_BUCKET
    if method == DEPROVISION:
        return DEPROVISION_BUCKET
    return READ_BUCKET if method.startswith(f"/{SERVICE}/") else None


class SlidingWindow:
    """The admission log of one rate, per key: at most `rate.count` times per key, and
    keys idle for a whole period are dropped, so memory follows the active callers."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._log: dict[str, deque[float]] = {}
        self._swept = -math.inf

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._log)

    def admit(self, key: str, now: float) -> float | None:
        """Record an admission of `key` at `now` and return None, or return the seconds
        until the oldest admission leaves the window (more than 0) and record nothing."""
        self._sweep(now)
        times = self._log.get(key)
        if times is None:
            times = self._log[key] = deque()
        self._expire(times, now)
        if len(times) >= self.rate.count:
            return max(times[0] + self.rate.period - now, 1e-6)
        times.append(now)
        return None

    def seed(self, key: str, times: Iterable[float], now: float) -> None:
        """Count earlier admissions of `key` (from before a restart) as if made here."""
        recent = [t for t in times if now - self.rate.period < t <= now]
        merged = sorted([*self._log.get(key, ()), *recent])[-self.rate.count :]
        # Beyond `count`, only the latest matter: the window frees up when the
        # `count`-th newest leaves it.
        if merged:
            self._log[key] = deque(merged)

    def _expire(self, times: deque[float], now: float) -> None:
        horizon = now - self.rate.period
        while times and times[0] <= horizon:
            times.popleft()

    def _sweep(self, now: float) -> None:
        # Once per period: cheap amortised, and a key's log is empty after a period idle.
        if now - self._swept < self.rate.period:
            return
        self._swept = now
        horizon = now - self.rate.period
        for key in [k for k, times in self._log.items() if not times or times[-1] <= horizon]:
            del self._log[key]


class RateLimiter:
    """The three buckets of the API, each an exact sliding window per principal."""

    def __init__(self, *, provision: Rate, deprovision: Rate, read: Rate) -> None:
        self.windows = {
            PROVISION_BUCKET: SlidingWindow(provision),
            DEPROVISION_BUCKET: SlidingWindow(deprovision),
            READ_BUCKET: SlidingWindow(read),
        }

    def acquire(self, principal: str, bucket: str, now: float) -> None:
        """Admit one call, or raise `RateLimitedError` with the exact wait."""
        window = self.windows[bucket]
        wait = window.admit(principal, now)
        if wait is not None:
            raise RateLimitedError(bucket, window.rate, wait)

    def seed(self, principal: str, bucket: str, times: Iterable[float], now: float) -> None:
        self.windows[bucket].seed(principal, times, now)


class AuditSource(Protocol):
    """The part of the job store the limiter reads at start (`JobStore.audit_since`)."""

    async def audit_since(self, action: str, since: datetime) -> list[AuditEntry]: ...


async def seed_from_audit(limiter: RateLimiter, audit: AuditSource, now: float) -> int:
    """Count the audited calls of the last window, so a restart does not reset the limit.

    The engine audits every provision and deprovision request that reaches it, accepted or
    not, under the caller's principal. Returns how many entries were read.
    """
    read = 0
    for bucket, action in AUDITED_BUCKETS.items():
        window = limiter.windows[bucket]
        since = datetime.fromtimestamp(now - window.rate.period, UTC)
        by_principal: dict[str, list[float]] = {}
        for entry in await audit.audit_since(action, since):
            by_principal.setdefault(entry.principal, []).append(entry.at.timestamp())
        for principal, times in by_principal.items():
            window.seed(principal, times, now)
            read += len(times)
    return read
