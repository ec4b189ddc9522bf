"""The asyncio SDK against a real server: provisioning, following, errors and paging."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import (
    AlreadyExistsError,
    AsyncProvisioningClient,
    ConfigurationError,
    InvalidArgumentError,
    NotFoundError,
    Reconnect,
    RetryPolicy,
    UnavailableError,
    is_terminal,
)
from tests.client.harness import Harness, spec

FAST = RetryPolicy(max_attempts=20, initial_delay=0.02, max_delay=0.1)


def client(server: Harness, **options: object) -> AsyncProvisioningClient:
    return AsyncProvisioningClient(server.target, "t0ken", **options)  # type: ignore[arg-type]


async def follow(api: AsyncProvisioningClient, job_id: str) -> list[pb.Job | pb.JobEvent]:
    return [item async for item in api.watch(job_id)]


async def test_provision_then_watch_to_completed(server: Harness) -> None:
    async with client(server) as api:
        job = await api.provision(spec("hr"))
        assert job.state == pb.JOB_STATE_PENDING
        items = await follow(api, job.job_id)
        snapshot, events = items[0], items[1:]
        assert isinstance(snapshot, pb.Job)
        assert snapshot.job_id == job.job_id
        assert all(isinstance(e, pb.JobEvent) for e in events)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # type: ignore[union-attr]
        last = events[-1]
        assert isinstance(last, pb.JobEvent)
        assert is_terminal(last)
        assert last.state == pb.JOB_STATE_COMPLETED
        finished = await api.wait(job.job_id)
        assert finished.state == pb.JOB_STATE_COMPLETED
        assert finished.progress == 100
    assert set(server.auth.seen) == {"Bearer t0ken"}


async def test_provision_takes_keywords_and_replays_a_request_id(server: Harness) -> None:
    key = str(uuid.uuid4())
    fields = spec("ops")
    async with client(server) as api:
        first = await api.provision(
            department_id="ops",
            department_name=fields.department_name,
            workflows=["email"],
            data_retention="30d",
            region="eu-west",
            admin_email="ops@example.com",
            request_id=key,
        )
        again = await api.provision(
            department_id="ops",
            department_name=fields.department_name,
            workflows=["email"],
            data_retention="30d",
            region="eu-west",
            admin_email="ops@example.com",
            request_id=key,
        )
        assert again.job_id == first.job_id
        assert first.request_id == key
        with pytest.raises(ConfigurationError, match="lacks department_name"):
            await api.provision(department_id="ops")
        with pytest.raises(ConfigurationError, match="not both"):
            await api.provision(fields, region="x")


async def test_a_watch_resumes_across_a_server_restart_without_loss_or_repeats(server: Harness) -> None:
    notes: list[Reconnect] = []
    async with client(server, reconnect=FAST) as api:
        job = await api.provision(spec("slow-restart"))
        events: list[pb.JobEvent] = []
        async for item in api.watch(job.job_id, on_reconnect=notes.append):
            if isinstance(item, pb.JobEvent):
                events.append(item)
                if item.sequence == 4:
                    # The job goes on while the server is away; the watch must catch up.
                    await server.restart(down_for=0.3)
    assert notes
    assert notes[0].after_sequence >= 4  # events already in flight when it stopped count too
    assert "UNAVAILABLE" in notes[0].reason
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert is_terminal(events[-1])
    assert events[-1].state == pb.JOB_STATE_COMPLETED


async def test_watching_from_a_sequence_skips_what_was_seen(server: Harness) -> None:
    async with client(server) as api:
        job = await api.provision(spec("hr"))
        done = await api.wait(job.job_id)
        items = [i async for i in api.watch(job.job_id, after_sequence=5)]
        assert [i.sequence for i in items[1:]] == list(range(6, done.last_sequence + 1))  # type: ignore[union-attr]
        # Past the end, a finished job yields its snapshot and nothing else.
        past = [i async for i in api.watch(job.job_id, after_sequence=done.last_sequence)]
        assert len(past) == 1
        assert isinstance(past[0], pb.Job)


async def test_a_watch_gives_up_when_the_server_stays_away(server: Harness) -> None:
    notes: list[Reconnect] = []
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02)
    async with client(server, reconnect=policy) as api:
        job = await api.provision(spec("slow-gone"))

        async def watch_while_the_server_goes() -> None:
            async for item in api.watch(job.job_id, on_reconnect=notes.append):
                if isinstance(item, pb.JobEvent) and item.sequence == 2:
                    await server.stop_serving()

        with pytest.raises(UnavailableError, match="could not resume"):
            await watch_while_the_server_goes()
    assert [n.attempt for n in notes] == [1, 2]


async def test_a_silent_stream_is_abandoned_and_resumed(server: Harness) -> None:
    # Heartbeats come every 0.5 s; slow steps take 0.1 s. An idle timeout shorter than
    # a step makes the client give up on a healthy stream and resume it: harmless.
    notes: list[Reconnect] = []
    async with client(server, reconnect=FAST, idle_timeout=0.02) as api:
        job = await api.provision(spec("slow-quiet"))
        items = [i async for i in api.watch(job.job_id, on_reconnect=notes.append)]
    events = [i for i in items if isinstance(i, pb.JobEvent)]
    assert any("nothing heard" in n.reason for n in notes)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert is_terminal(events[-1])


async def test_invalid_arguments_carry_every_field_violation(server: Harness) -> None:
    async with client(server) as api:
        with pytest.raises(InvalidArgumentError) as caught:
            await api.provision(spec("HR", workflows=("fax",), region="x", admin_email="no"))
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_SPEC"
    assert [v.field for v in error.violations] == ["department_id", "workflows[0]", "region", "admin_email"]
    assert all(v.description for v in error.violations)


async def test_unknown_things_are_not_found_and_conflicts_already_exist(server: Harness) -> None:
    async with client(server) as api:
        with pytest.raises(NotFoundError) as caught:
            await api.get_status(str(uuid.uuid4()))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.reason
        with pytest.raises(NotFoundError):
            await api.get_department("ghost")
        with pytest.raises(NotFoundError):
            await api.get_department_health("ghost")
        with pytest.raises(NotFoundError):
            await follow(api, str(uuid.uuid4()))
        await api.provision(spec("hr"))
        with pytest.raises(AlreadyExistsError) as conflict:
            await api.provision(spec("hr", region="eu-west"))
        assert conflict.value.reason == "CONFLICT"


async def test_unary_calls_retry_until_the_server_is_back(server: Harness) -> None:
    await server.stop_serving()
    async with client(server, retry=RetryPolicy(max_attempts=30, initial_delay=0.02, max_delay=0.05)) as api:
        pending = api.provision(spec("late"))
        back = server.restart(down_for=0.2)
        job, _ = await asyncio.gather(pending, back)
        assert job.department_id == "late"
    async with client(server, retry=RetryPolicy(max_attempts=2, initial_delay=0.01)) as api:
        await server.stop_serving()
        with pytest.raises(UnavailableError):
            await api.get_department("late")


async def test_list_departments_pages_through_everything(server: Harness) -> None:
    async with client(server) as api:
        for name, region in [("a1", "us-west"), ("b2", "eu-west"), ("c3", "us-west"), ("d4", "us-west")]:
            await api.wait((await api.provision(spec(name, region=region))).job_id)
        everything = [d.department_id async for d in api.list_departments(page_size=1)]
        assert everything == ["a1", "b2", "c3", "d4"]
        west = [d.department_id async for d in api.list_departments(region="us-west", page_size=2)]
        assert west == ["a1", "c3", "d4"]
        active = [d.department_id async for d in api.list_departments(status="active", page_size=3)]
        assert active == everything
        assert [d async for d in api.list_departments(status="failed")] == []
        with pytest.raises(ConfigurationError, match="unknown department status"):
            [d async for d in api.list_departments(status="sleepy")]


async def test_deprovision_and_department_views(server: Harness) -> None:
    async with client(server) as api:
        await api.wait((await api.provision(spec("hr"))).job_id)
        department = await api.get_department("hr")
        assert department.status == pb.DEPARTMENT_STATUS_ACTIVE
        health = await api.get_department_health("hr")
        assert health.healthy
        teardown = await api.deprovision("hr")
        assert teardown.kind == pb.JOB_KIND_DEPROVISION
        assert (await api.wait(teardown.job_id)).state == pb.JOB_STATE_COMPLETED
        assert (await api.get_department("hr")).status == pb.DEPARTMENT_STATUS_DEPROVISIONED
