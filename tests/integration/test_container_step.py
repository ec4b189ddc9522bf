"""The container step with real department service processes: launch, adopt, restart,
move off a port someone took, and stop without leaving anything behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from department_service import schema
from provisioner.steps.base import StepContext
from provisioner.steps.container import SERVICE_FILE, LocalProcessContainer, Placement, alive
from provisioner.steps.departments import DepartmentDirs, read_json
from tests.unit.factories import spec

pytestmark = pytest.mark.slow


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[LocalProcessContainer]:
    dirs = DepartmentDirs(tmp_path / "departments")
    step = LocalProcessContainer(dirs)
    yield step
    for department_id in dirs.ids():  # never leave a process behind, whatever failed
        running = read_json(dirs.path(department_id) / SERVICE_FILE)
        if running is not None and alive(int(running["pid"]), dirs.path(department_id)):
            os.kill(int(running["pid"]), signal.SIGKILL)


async def kill(pid: int, directory: Path) -> None:
    os.kill(pid, signal.SIGKILL)
    for _ in range(500):
        if not alive(pid, directory):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pid} survived SIGKILL")


def context(tmp_path: Path, department_id: str = "hr") -> StepContext:
    directory = tmp_path / "departments" / department_id
    directory.mkdir(parents=True, exist_ok=True)
    schema.create(directory / "data.db")
    return StepContext(job_id="job-1", spec=spec(department_id), attempt=1)


async def test_apply_launches_once_and_adopts_a_running_service(
    container: LocalProcessContainer, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    first = await container.apply(ctx)
    again = await container.apply(ctx)
    assert again == first
    assert (await container.check(ctx)).healthy


async def test_a_dead_service_is_restarted_on_its_port_and_a_taken_port_is_left(
    container: LocalProcessContainer, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    moved: list[bool] = []

    async def told() -> None:
        moved.append(True)

    container.on_moved = told
    first = await container.apply(ctx)
    directory = tmp_path / "departments" / "hr"
    await kill(int(first["pid"]), directory)
    assert await container.reconcile() == ["hr"]
    restarted = read_json(directory / SERVICE_FILE)
    assert restarted is not None and restarted["pid"] != int(first["pid"])
    assert str(Placement.read(directory)) == first["address"]

    # Its kept port is taken while it is down: it moves, and routes are told.
    await kill(int(restarted["pid"]), directory)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = Placement("127.0.0.1", int(squatter.getsockname()[1]))
        taken.write(directory)
        assert await container.reconcile() == []
        assert moved == [True]
        assert await container.reconcile() == ["hr"]
    assert Placement.read(directory) != taken
    assert (await container.check(ctx)).healthy


async def test_compensation_stops_the_service_and_removes_its_files(
    container: LocalProcessContainer, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    made = await container.apply(ctx)
    await container.compensate(ctx)
    directory = tmp_path / "departments" / "hr"
    assert not alive(int(made["pid"]), directory)
    assert {p.name for p in directory.iterdir()} <= {"data.db", "data.db-shm", "data.db-wal"}
    assert await container.reconcile() == []
    await container.compensate(ctx)  # idempotent
    assert not (await container.check(ctx)).healthy
