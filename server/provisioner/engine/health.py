"""Recent health answers, per department, with one check in flight per department.

A health check asks every step to look at what it made (files, processes, HTTP calls), which
costs far more than any read of the store. Many callers asking about one department within a
moment share one check: a caller arriving while a check runs waits for that check, and one
arriving just after gets its answer, if it is younger than `ttl` seconds. Each condition
keeps the time it was observed, so a shared answer never claims to be newer than it is.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class HealthCache(Generic[T]):
    def __init__(
        self, *, ttl: float = 2.0, capacity: int = 1000, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._monotonic = monotonic
        self._answers: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._flights: dict[str, asyncio.Future[T]] = {}

    async def get(self, department_id: str, check: Callable[[], Awaitable[T]]) -> T:
        """The department's recent answer, or the answer of the check in flight, or a new one."""
        kept = self._answers.get(department_id)
        if kept is not None and kept[0] > self._monotonic():
            return kept[1]
        flight = self._flights.get(department_id)
        if flight is None:
            flight = asyncio.ensure_future(check())
            self._flights[department_id] = flight
            flight.add_done_callback(lambda done: self._landed(department_id, done))
        # A caller that leaves does not cancel the check the others are waiting for.
        return await asyncio.shield(flight)

    def forget(self, department_id: str) -> None:
        """Drop a kept answer (the department changed)."""
        self._answers.pop(department_id, None)

    def _landed(self, department_id: str, done: asyncio.Future[T]) -> None:
        self._flights.pop(department_id, None)
        if done.cancelled() or done.exception() is not None:
            return  # failures are not kept: the next caller checks again
        self._answers[department_id] = (self._monotonic() + self._ttl, done.result())
        self._answers.move_to_end(department_id)
        while len(self._answers) > self._capacity:
            self._answers.popitem(last=False)
