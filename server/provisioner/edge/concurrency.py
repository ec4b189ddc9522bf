"""What one caller may hold at once, and when the server as a whole says "not now".

A rate limit bounds how fast calls start; these bound how many are open. Each principal
may hold at most `streams` open watches, `calls` unary calls in progress and `health`
department health checks in progress (the expensive kind). Past its own limit a caller is
refused with RESOURCE_EXHAUSTED and a message naming the limit, and nobody else notices.

The server sheds load before its latency collapses: when the event loop runs late by more
than `lag_threshold` (measured by `LoopLag`), or all principals together hold
`total_streams` streams or `total_calls` calls, new calls are refused with UNAVAILABLE
and a retry delay, which clients retry (on another replica, if they know several).
Calls already admitted run on; health checks of the server itself are never limited.

Plain Python over asyncio, no grpc: the interceptor asks `admit` for a slot and releases
it when the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.core.errors import ProvisioningError
from provisioner.edge.auth import SERVICE

WATCH = f"/{SERVICE}/WatchProgress"
HEALTH = f"/{SERVICE}/GetDepartmentHealth"


class Kind(enum.StrEnum):
    STREAM = "streams"
    CALL = "calls"
    HEALTH = "health checks"


def kind_for(method: str) -> Kind | None:
    """What a call of `method` holds while open; None for calls that are not limited
    (health, reflection, anything outside the provisioning service)."""
    if method == WATCH:
        return Kind.STREAM
    if method == HEALTH:
        return Kind.HEALTH
    return Kind.CALL if method.startswith(f"/{SERVICE}/") else None


@dataclass(frozen=True, slots=True)
class ConcurrencyLimits:
    """Per principal, then for the server as a whole."""

    streams: int = 100
    calls: int = 32
    health: int = 4
    total_streams: int = 5_000
    total_calls: int = 1_000
    #: Seconds the event loop may run late before new calls are shed.
    lag_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("streams", "calls", "health", "total_streams", "total_calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"concurrency limit {name} must be at least 1")
        if self.lag_threshold <= 0:
            raise ValueError("the loop lag threshold must be more than 0 seconds")

    def per_principal(self, kind: Kind) -> int:
        return {Kind.STREAM: self.streams, Kind.CALL: self.calls, Kind.HEALTH: self.health}[kind]


class ConcurrencyLimitedError(ProvisioningError):
    """One principal holds as many of a kind of call as it may; others are unaffected."""

    reason = "CONCURRENCY_LIMITED"
    retryable = True

    def __init__(self, kind: Kind, limit: int) -> None:
        super().__init__(
            f"too many {kind} open at once: at most {limit} per caller; "
            "wait for one to end (or close one) and retry",
            retry_after=1.0,
        )
        self.kind = kind
        self.limit = limit


class OverloadedError(ProvisioningError):
    """The server is shedding load; the call was not started. Retry, here or elsewhere."""

    reason = "OVERLOADED"
    retryable = True

    def __init__(self, why: str) -> None:
        super().__init__(f"the server is overloaded ({why}); retry shortly", retry_after=1.0)


class LoopLag:
    """How late the event loop runs: a task sleeps `interval` and measures the overshoot,
    smoothed so that one slow callback does not shed load, a busy loop soon does."""

    def __init__(self, interval: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self.seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._measure(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _measure(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self._interval)
            late = max(0.0, self._clock() - before - self._interval)
            self.seconds = 0.7 * self.seconds + 0.3 * late


class ConcurrencyLimiter:
    """Counts open calls per principal and kind; `admit` returns the release function."""

    def __init__(self, limits: ConcurrencyLimits | None = None, *, lag: LoopLag | None = None) -> None:
        self.limits = limits or ConcurrencyLimits()
        self._lag = lag
        self._held: Counter[tuple[str, Kind]] = Counter()
        self._totals: Counter[Kind] = Counter()

    def held(self, principal: str, kind: Kind) -> int:
        return self._held[principal, kind]

    def admit(self, principal: str, kind: Kind) -> Callable[[], None]:
        """A slot for one call, or `ConcurrencyLimitedError` / `OverloadedError`."""
        limits = self.limits
        if self._lag is not None and self._lag.seconds > limits.lag_threshold:
            raise OverloadedError(f"its event loop runs {self._lag.seconds * 1000:.0f} ms late")
        # Health checks are unary calls too: a principal's calls bound them as well.
        kinds = (kind, Kind.CALL) if kind is Kind.HEALTH else (kind,)
        for each in kinds:
            limit = limits.per_principal(each)
            if self._held[principal, each] >= limit:
                raise ConcurrencyLimitedError(each, limit)
        pool = Kind.STREAM if kind is Kind.STREAM else Kind.CALL
        total = limits.total_streams if pool is Kind.STREAM else limits.total_calls
        if self._totals[pool] >= total:
            raise OverloadedError(f"{total} {pool} open")
        for each in kinds:
            self._held[principal, each] += 1
        self._totals[pool] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            for each in kinds:
                self._held[principal, each] -= 1
                if not self._held[principal, each]:
                    del self._held[principal, each]
            self._totals[pool] -= 1

        return release
