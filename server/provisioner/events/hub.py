"""Fan-out of committed events to watchers, backed by the store for replay and catch-up.

`subscribe(job_id, after_sequence)` registers for live events *before* replaying the
stored ones, so nothing committed in between is missed; duplicates from that overlap are
dropped by sequence, and a gap (an event published while a subscriber was busy) is filled
from the store. The engine never waits for a subscriber: a subscriber whose queue
overflows is ended with a resumable error.

Events committed on this replica are published by its runners. Those committed by other
replicas arrive as notifications (`notify`, PostgreSQL's LISTEN/NOTIFY): each job with
watchers here is read from the store once per notification and its new events fanned out.
As a safety net one poller per hub (never one per watcher) reads the heads of every
watched job in one query and treats what is new like a notification: every
`push_poll_interval` while notifications flow (`pushed(True)`), every `poll_interval`
without them (SQLite, or the listening connection down), and at once when they resume.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from provisioner.core.errors import (
    NotFoundError,
    ProvisioningError,
    ServiceDrainingError,
    SubscriberTooSlowError,
)
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

    def __init__(
        self,
        store: JobStore,
        *,
        queue_size: int = 1024,
        poll_interval: float = 1.0,
        push_poll_interval: float = 30.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("event hub: queue_size must be >= 1")
        self._store = store
        self._queue_size = queue_size
        self._poll_interval = poll_interval
        self._push_poll_interval = push_poll_interval
        self._pushed = False
        self._subscribers: dict[str, set[_Subscriber]] = {}
        #: Per job with subscribers: the highest sequence handed to them live.
        self._seen: dict[str, int] = {}
        #: Jobs being read after a notification, with the highest sequence announced since.
        self._fetching: dict[str, int] = {}
        self._closed = False
        self._poller: asyncio.Task[None] | None = None
        #: Set to make the poller look now (notifications resumed, or the hub closed).
        self._look_now = asyncio.Event()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def publish(self, events: Sequence[Event]) -> None:
        """Hand committed events to live subscribers; never blocks, never raises."""
        for event in events:
            subs = self._subscribers.get(event.job_id)
            if not subs:
                continue
            if event.sequence > self._seen.get(event.job_id, 0):
                self._seen[event.job_id] = event.sequence
            for sub in subs:
                self._offer(sub, event)

    @staticmethod
    def _offer(sub: _Subscriber, item: Event | None) -> None:
        if sub.overflowed:
            return
        try:
            sub.queue.put_nowait(item)
        except asyncio.QueueFull:
            sub.overflowed = True

    def pushed(self, listening: bool) -> None:
        """Whether notifications of other replicas' commits are flowing. When they start
        (again), the poller looks at the store at once: what was committed meanwhile was
        announced to nobody."""
        self._pushed = listening
        self._look_now.set()

    async def _poll(self) -> None:
        """While anyone watches: every watched job's head, in one read per interval."""
        while self._subscribers and not self._closed:
            interval = self._push_poll_interval if self._pushed else self._poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look_now.wait(), interval)
            self._look_now.clear()
            if not self._subscribers or self._closed:
                return
            try:
                heads = await self._store.job_heads(list(self._subscribers))
            except ProvisioningError:
                continue  # the store is away: look again next time
            self.notify([(job_id, head.last_sequence) for job_id, head in heads.items()])

    def notify(self, heads: Sequence[tuple[str, int]]) -> None:
        """Other replicas committed up to these sequences: fetch and fan out what is new."""
        for job_id, sequence in heads:
            if job_id not in self._subscribers or sequence <= self._seen.get(job_id, 0):
                continue
            if job_id in self._fetching:
                self._fetching[job_id] = max(self._fetching[job_id], sequence)
                continue
            self._fetching[job_id] = sequence
            asyncio.get_running_loop().create_task(self._fetch(job_id), name=f"hub-fetch-{job_id}")

    async def _fetch(self, job_id: str) -> None:
        """Read a job's new events once for all its subscribers, until nothing more was announced."""
        try:
            while job_id in self._subscribers and self._fetching[job_id] > self._seen.get(job_id, 0):
                page = await self._store.events_after(job_id, self._seen.get(job_id, 0), _PAGE)
                if not page:
                    return
                self.publish(page)
        except ProvisioningError:
            return  # the store is away: the watchers' own polling catches up
        finally:
            self._fetching.pop(job_id, None)

    def close(self) -> None:
        """End every subscription with a resumable error (server shutting down)."""
        self._closed = True
        self._look_now.set()
        for subs in self._subscribers.values():
            for sub in subs:
                sub.closed = True
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(None)

    async def subscribe(self, job_id: str, after_sequence: int = 0) -> AsyncGenerator[Event, None]:
        """Every event of `job_id` after `after_sequence`, in order, ending with the terminal one.

        Raises `NotFoundError` for an unknown job, `SubscriberTooSlowError` if the caller
        fell behind, `ServiceDrainingError` on shutdown; the last two are resumable.
        """
        if self._closed:
            raise ServiceDrainingError("the server is shutting down; resume the watch elsewhere")
        sub = _Subscriber(asyncio.Queue(self._queue_size))
        self._subscribers.setdefault(job_id, set()).add(sub)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="hub-poll")
        try:
            head = await self._store.job_head(job_id)
            if head is None:
                raise NotFoundError(f"job {job_id} not found")
            # What is stored now is replayed below: only later sequences are news.
            self._seen[job_id] = max(self._seen.get(job_id, 0), head.last_sequence)
            last = after_sequence
            if head.finished and last >= head.last_sequence:
                return
            async for event in self._catch_up(job_id, last):
                yield event
                last = event.sequence
                if event.is_terminal:
                    return
            if head.finished:
                return  # its events are past the retention period: the snapshot says it all
            while True:
                event = await self._next_live(sub)
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
                    self._seen.pop(job_id, None)

    @staticmethod
    async def _next_live(sub: _Subscriber) -> Event:
        if sub.overflowed:
            raise SubscriberTooSlowError("the watcher fell behind; resume from the last sequence seen")
        item = await sub.queue.get()
        if item is None or sub.closed:
            raise ServiceDrainingError("the server is shutting down; resume the watch elsewhere")
        return item

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
