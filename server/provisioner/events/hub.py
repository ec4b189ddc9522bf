"""In-process fan-out of committed events, backed by the store for replay and catch-up.

`subscribe(job_id, after_sequence)` registers for live events *before* replaying the
stored ones, so nothing committed in between is missed; duplicates from that overlap are
dropped by sequence, and a gap (an event committed by another replica, or published while
a subscriber was busy) is filled from the store. The engine never waits for a subscriber:
a subscriber whose queue overflows is ended with a resumable error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from provisioner.core.errors import NotFoundError, ServiceDrainingError, SubscriberTooSlowError
from provisioner.core.job import Event
from provisioner.store.protocol import JobStore

_PAGE = 500


@dataclass(eq=False, slots=True)
class _Subscriber:
    queue: asyncio.Queue[Event | None]
    overflowed: bool = False
    closed: bool = False


class EventHub:
    """Delivers each job's events in order, exactly once, ending after the terminal one."""

    def __init__(self, store: JobStore, *, queue_size: int = 1024, poll_interval: float = 1.0) -> None:
        if queue_size < 1:
            raise ValueError("event hub: queue_size must be >= 1")
        self._store = store
        self._queue_size = queue_size
        self._poll_interval = poll_interval
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def publish(self, events: Sequence[Event]) -> None:
        """Hand committed events to live subscribers; never blocks, never raises."""
        for event in events:
            for sub in self._subscribers.get(event.job_id, ()):
                if sub.overflowed:
                    continue
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.overflowed = True

    def close(self) -> None:
        """End every subscription with a resumable error (server shutting down)."""
        self._closed = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.closed = True
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(None)

    async def subscribe(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        """Every event of `job_id` after `after_sequence`, in order, ending with the terminal one.

        Raises `NotFoundError` for an unknown job, `SubscriberTooSlowError` if the caller
        fell behind, `ServiceDrainingError` on shutdown; the last two are resumable.
        """
        if self._closed:
            raise ServiceDrainingError("the server is shutting down; resume the watch elsewhere")
        sub = _Subscriber(asyncio.Queue(self._queue_size))
        self._subscribers.setdefault(job_id, set()).add(sub)
        try:
            head = await self._store.job_head(job_id)
            if head is None:
                raise NotFoundError(f"job {job_id} not found")
            last = after_sequence
            if head.finished and last >= head.last_sequence:
                return
            async for event in self._catch_up(job_id, last):
                yield event
                last = event.sequence
                if event.is_terminal:
                    return
            while True:
                live = await self._next_live(sub)
                if live is None:
                    # Idle for a while, or a gap: what is committed is in the store.
                    async for stored in self._catch_up(job_id, last):
                        yield stored
                        last = stored.sequence
                        if stored.is_terminal:
                            return
                    continue
                event = live
                if event.sequence <= last:
                    continue
                if event.sequence > last + 1:
                    async for stored in self._catch_up(job_id, last, until=event.sequence):
                        yield stored
                        last = stored.sequence
                yield event
                last = event.sequence
                if event.is_terminal:
                    return
        finally:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[job_id]

    async def _next_live(self, sub: _Subscriber) -> Event | None:
        if sub.overflowed:
            raise SubscriberTooSlowError("the watcher fell behind; resume from the last sequence seen")
        try:
            event = await asyncio.wait_for(sub.queue.get(), self._poll_interval)
        except TimeoutError:
            return None
        if event is None or sub.closed:
            raise ServiceDrainingError("the server is shutting down; resume the watch elsewhere")
        return event

    async def _catch_up(self, job_id: str, after: int, until: int | None = None) -> AsyncIterator[Event]:
        while True:
            page = await self._store.events_after(job_id, after, _PAGE)
            for event in page:
                if until is not None and event.sequence >= until:
                    return
                yield event
                after = event.sequence
            if len(page) < _PAGE:
                return
