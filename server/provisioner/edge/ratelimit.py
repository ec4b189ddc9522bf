"""Per-principal rate limits for the API: exact sliding windows.

A call is admitted when fewer than `count` calls of the same principal and bucket were
admitted in the last `period` seconds; a refused call learns exactly when the oldest
admission leaves the window. Times are passed in (`now`, seconds since the epoch: the
shared windows are compared across replicas and restarts).

Provision and deprovision windows are kept in the job store (`AdmissionStore`), so every
replica counts the same calls and a restart forgets none: N replicas admit exactly the
configured number. Reads are counted in each replica's memory: a read changes nothing,
and a store write per read would cost more than the read it limits; behind N replicas a
principal may make up to N times the read rate.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from provisioner.core.errors import ProvisioningError
from provisioner.edge.auth import DEPROVISION, PROVISION, SERVICE

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")

PROVISION_BUCKET = "provision"
DEPROVISION_BUCKET = "deprovision"
READ_BUCKET = "read"
#: Buckets counted in the job store, by every replica together.
SHARED_BUCKETS = (PROVISION_BUCKET, DEPROVISION_BUCKET)


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
            f"rate limit for {bucket} calls reached ({rate.count} per {rate.period:g} s, "
            f"PROVISIONER_RATE_LIMIT_{bucket.upper()}); retry in {max(1, math.ceil(retry_after))} s",
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
        wait = self.wait(key, now)
        if wait is None:
            self._log.setdefault(key, deque()).append(now)
        return wait

    def wait(self, key: str, now: float) -> float | None:
        """What `admit` would answer, admitting nothing."""
        times = self._log.get(key)
        if times is None:
            return None
        self._expire(times, now)
        return max(times[0] + self.rate.period - now, 1e-6) if len(times) >= self.rate.count else None

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


class AdmissionStore(Protocol):
    """Where shared windows are counted: the job store (`store.admissions`)."""

    async def admit(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        """Record an admission and return None, or return the seconds to wait."""

    async def wait(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        """What `admit` would answer, recording nothing."""


class RateLimiter:
    """The three buckets of the API, each an exact sliding window per principal; with
    `shared`, the provision and deprovision windows are counted there."""

    def __init__(
        self, *, provision: Rate, deprovision: Rate, read: Rate, shared: AdmissionStore | None = None
    ) -> None:
        self.windows = {
            PROVISION_BUCKET: SlidingWindow(provision),
            DEPROVISION_BUCKET: SlidingWindow(deprovision),
            READ_BUCKET: SlidingWindow(read),
        }
        self._shared = shared

    async def acquire(self, principal: str, bucket: str, now: float) -> None:
        """Admit one call, or raise `RateLimitedError` with the exact wait (or
        `StoreUnavailableError` when a shared window cannot be counted)."""
        await self._decide(principal, bucket, now, admit=True)

    async def check(self, principal: str, bucket: str, now: float) -> None:
        """Raise `RateLimitedError` if a call would be refused now; admit nothing."""
        await self._decide(principal, bucket, now, admit=False)

    async def _decide(self, principal: str, bucket: str, now: float, *, admit: bool) -> None:
        window = self.windows[bucket]
        if self._shared is not None and bucket in SHARED_BUCKETS:
            ask = self._shared.admit if admit else self._shared.wait
            wait = await ask(bucket, principal, window.rate.count, window.rate.period, now)
        else:
            wait = window.admit(principal, now) if admit else window.wait(principal, now)
        if wait is not None:
            raise RateLimitedError(bucket, window.rate, wait)
