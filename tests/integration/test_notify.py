"""Watchers on one replica hear of events committed by another, over PostgreSQL's
LISTEN/NOTIFY, without polling; and still get them, by polling, while the listening
connection is down. Two stores on one database play two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from provisioner.core.job import Event
from provisioner.events.hub import EventHub
from provisioner.store.notify import Listener, parse, payloads
from provisioner.store.sql import SqlJobStore
from tests.integration.test_sql_store import OWNER, add_job
from tests.unit.factories import walk_to_completion

pytestmark = pytest.mark.postgres


def test_payloads_stay_under_the_size_limit_and_parse_back() -> None:
    heads = [(f"{i:08d}-0000-0000-0000-000000000000", i) for i in range(1000)]
    made = payloads(heads)
    assert len(made) > 1
    assert all(len(p.encode()) < 8000 for p in made)
    assert [h for p in made for h in parse(p)] == heads
    assert parse("junk,a:1,:2,b:x") == [("a", 1)]


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[SqlJobStore, SqlJobStore]]:
    writer, reader = SqlJobStore(postgres_url), SqlJobStore(postgres_url)
    await writer.initialize()
    await reader.initialize()
    try:
        yield writer, reader
    finally:
        await writer.close()
        await reader.close()


async def collect(hub: EventHub, job_id: str, into: list[tuple[Event, float]]) -> None:
    async for event in hub.subscribe(job_id):
        into.append((event, time.monotonic()))


async def until_listening(listener: Listener, *, not_on: int | None = None) -> None:
    for _ in range(500):
        if listener.backend_pid not in (None, not_on):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the listener never listened")


@contextlib.asynccontextmanager
async def listening(hub: EventHub, url: str) -> AsyncIterator[Listener]:
    listener = Listener(url, on_heads=hub.notify, on_state=hub.pushed, retry_seconds=0.1, check_seconds=0.2)
    task = asyncio.create_task(listener.run())
    try:
        await until_listening(listener)
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_events_committed_elsewhere_arrive_pushed_not_polled(
    replicas: tuple[SqlJobStore, SqlJobStore], postgres_url: str
) -> None:
    writer, reader = replicas
    # Polling would take a minute: whatever arrives sooner was pushed.
    hub = EventHub(reader, poll_interval=60, push_poll_interval=60)
    async with listening(hub, postgres_url):
        job = await add_job(writer)
        received: list[tuple[Event, float]] = []
        watcher = asyncio.create_task(collect(hub, job.job_id, received))
        await asyncio.sleep(0.2)
        committed: dict[int, float] = {}
        now = datetime.now(UTC)
        for event in walk_to_completion(job, now):
            await writer.commit(job, [event], OWNER)
            committed[event.sequence] = time.monotonic()
        async with asyncio.timeout(5):
            await watcher
    assert [e.sequence for e, _ in received] == list(range(1, job.last_sequence + 1))
    delays = sorted(at - committed[e.sequence] for e, at in received if e.sequence in committed)
    assert delays[len(delays) // 2] < 0.5  # far below the one-minute poll


async def test_without_notifications_watchers_poll_and_lose_nothing(
    replicas: tuple[SqlJobStore, SqlJobStore], postgres_url: str
) -> None:
    writer, reader = replicas
    hub = EventHub(reader, poll_interval=0.1, push_poll_interval=60)
    async with listening(hub, postgres_url) as listener:
        job = await add_job(writer)
        received: list[tuple[Event, float]] = []
        watcher = asyncio.create_task(collect(hub, job.job_id, received))
        events = walk_to_completion(job, datetime.now(UTC))
        half = len(events) // 2
        for event in events[:half]:
            await writer.commit(job, [event], OWNER)
        # The listening connection is cut: the hub polls until it is back.
        cut = listener.backend_pid
        admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", cut)
        finally:
            await admin.close()
        for event in events[half:]:
            await writer.commit(job, [event], OWNER)
        async with asyncio.timeout(10):
            await watcher
        await until_listening(listener, not_on=cut)  # and it listens again, on a new connection
    assert [e.sequence for e, _ in received] == list(range(1, job.last_sequence + 1))
