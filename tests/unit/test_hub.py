"""The event hub: replay then live, no gap, no duplicate, no reordering, never blocking."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta

import pytest

from provisioner.core.department import AuditEntry
from provisioner.core.errors import NotFoundError, ServiceDrainingError, SubscriberTooSlowError
from provisioner.core.job import Event, Job
from provisioner.core.states import StepName
from provisioner.events.hub import EventHub
from provisioner.store.memory import InMemoryJobStore
from provisioner.store.protocol import JobHead
from tests.unit.factories import T0, new_job

OWNER = "r1"


async def setup(poll: float = 5.0, queue_size: int = 1024) -> tuple[InMemoryJobStore, EventHub, Job, Event]:
    store = InMemoryJobStore()
    job, created = new_job()
    await store.create_job(
        job, created, AuditEntry(T0, "t", "provision", "hr", "accepted"), (OWNER, T0 + timedelta(days=1))
    )
    return store, EventHub(store, poll_interval=poll, queue_size=queue_size), job, created


async def commit(store: InMemoryJobStore, hub: EventHub | None, job: Job, events: list[Event]) -> None:
    await store.commit(job, events, OWNER)
    if hub is not None:
        hub.publish(events)


async def play(store: InMemoryJobStore, hub: EventHub | None, job: Job) -> None:
    """Run the job to COMPLETED, committing (and, given a hub, publishing) each change."""
    await commit(store, hub, job, job.start(T0))
    await play_rest(store, hub, job)


async def play_rest(store: InMemoryJobStore, hub: EventHub | None, job: Job) -> None:
    for name in StepName:
        await commit(store, hub, job, [job.start_step(name, T0)])
        await commit(store, hub, job, job.step_succeeded(name, {}, T0))
        await asyncio.sleep(0)
    await commit(store, hub, job, job.complete(T0))


async def collect(hub: EventHub, job_id: str, after: int = 0) -> list[int]:
    return [e.sequence async for e in hub.subscribe(job_id, after)]


async def test_a_subscriber_joining_mid_job_gets_everything_once_in_order() -> None:
    store, hub, job, _ = await setup()
    await commit(store, hub, job, job.start(T0))
    watcher = asyncio.create_task(collect(hub, job.job_id))
    await asyncio.sleep(0)
    await play_rest(store, hub, job)
    assert await watcher == list(range(1, job.last_sequence + 1))


@pytest.mark.parametrize("after", [0, 1, 5, 20])
async def test_resuming_after_a_sequence_sees_only_what_follows(after: int) -> None:
    store, hub, job, _ = await setup()
    await play(store, hub, job)
    assert await collect(hub, job.job_id, after) == list(range(after + 1, job.last_sequence + 1))


async def test_resuming_after_the_end_returns_at_once() -> None:
    store, hub, job, _ = await setup()
    await play(store, hub, job)
    assert await collect(hub, job.job_id, job.last_sequence) == []


async def test_events_committed_but_never_published_are_found_in_the_store() -> None:
    # What another replica commits never reaches this hub's publish(): polling finds it.
    store, hub, job, _ = await setup(poll=0.01)
    watcher = asyncio.create_task(collect(hub, job.job_id))
    await asyncio.sleep(0.02)
    await play(store, None, job)
    assert await asyncio.wait_for(watcher, 5) == list(range(1, job.last_sequence + 1))


async def test_a_gap_in_live_events_is_filled_from_the_store() -> None:
    store, hub, job, _ = await setup()
    watcher = asyncio.create_task(collect(hub, job.job_id))
    await asyncio.sleep(0.01)
    await commit(store, None, job, job.start(T0))  # committed, publish lost
    await play_rest(store, hub, job)
    assert await asyncio.wait_for(watcher, 5) == list(range(1, job.last_sequence + 1))


async def test_a_slow_subscriber_is_cut_off_resumably_and_never_blocks_publishing() -> None:
    store, hub, job, _ = await setup(queue_size=2)
    stream = hub.subscribe(job.job_id)
    first = await anext(stream)  # replayed job.created; now registered and live
    await play(store, hub, job)  # publishes ~25 events into a queue of 2
    with pytest.raises(SubscriberTooSlowError):
        async for _ in stream:
            pass
    resumed = await collect(hub, job.job_id, first.sequence)
    assert resumed == list(range(2, job.last_sequence + 1))


async def test_closing_the_hub_ends_watchers_resumably() -> None:
    _, hub, job, _ = await setup()
    stream = hub.subscribe(job.job_id)
    await anext(stream)
    hub.close()
    with pytest.raises(ServiceDrainingError):
        await anext(stream)
    with pytest.raises(ServiceDrainingError):
        await anext(hub.subscribe(job.job_id))
    assert hub.subscriber_count == 0


async def test_unknown_jobs_are_not_found() -> None:
    _, hub, _, _ = await setup()
    with pytest.raises(NotFoundError):
        async with contextlib.aclosing(hub.subscribe("nope")) as stream:
            await anext(stream)


class CountingStore(InMemoryJobStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {"job_heads": 0, "events_after": 0}

    async def job_heads(self, job_ids: Sequence[str]) -> dict[str, JobHead]:
        self.reads["job_heads"] += 1
        return await super().job_heads(job_ids)

    async def events_after(self, job_id: str, after: int, limit: int = 500) -> list[Event]:
        self.reads["events_after"] += 1
        return await super().events_after(job_id, after, limit)


async def test_idle_watchers_cost_one_store_read_per_interval_not_one_each() -> None:
    store = CountingStore()
    hub = EventHub(store, poll_interval=0.05)
    jobs = []
    for index in range(5):
        job, created = new_job(department_id=f"d{index}")
        audit = AuditEntry(T0, "t", "provision", job.department_id, "ok")
        await store.create_job(job, created, audit, (OWNER, T0 + timedelta(days=1)))
        jobs.append(job)
    watchers = [asyncio.create_task(collect(hub, jobs[i % 5].job_id)) for i in range(200)]
    await asyncio.sleep(0.02)
    joined = dict(store.reads)  # each watcher read the store once to join
    await asyncio.sleep(0.5)
    assert store.reads["events_after"] == joined["events_after"]  # idle: nothing read per watcher
    assert 5 <= store.reads["job_heads"] - joined["job_heads"] <= 11
    # What another process commits is read once per job, however many watch it.
    await commit(store, None, jobs[0], jobs[0].start(T0))
    await asyncio.sleep(0.15)
    assert store.reads["events_after"] - joined["events_after"] == 1
    hub.close()
    for watcher in watchers:
        with contextlib.suppress(ServiceDrainingError):
            await watcher
