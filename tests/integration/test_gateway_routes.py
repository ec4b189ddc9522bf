"""Routes in the job store: every replica's Envoy files are written from them.

Two gateways on one store (SQLite and PostgreSQL) play two replicas: a route one of them
(or any replica) records reaches the other's files within its follow interval, and a
route to a service on one replica's machine stays on that replica. The files are what
Envoy reads; that Envoy applies them is tested in test_envoy_config.py and end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from provisioner.core.routes import Route
from provisioner.settings import Address
from provisioner.steps.departments import DepartmentDirs
from provisioner.steps.envoy_config import ROUTES_FILE, Upstream
from provisioner.steps.gateway import ROUTE_FILE, EnvoyGateway
from provisioner.store.sql import SqlJobStore


class NoServices:
    async def upstream(self, department_id: str) -> Upstream | None:
        return None


def gateway(store: SqlJobStore, root: Path, replica: str, *, local: bool) -> EnvoyGateway:
    return EnvoyGateway(
        DepartmentDirs(root / replica / "departments"),
        routes=store.routes,
        replica=replica,
        local_services=local,
        services=NoServices(),
        dynamic_dir=root / replica / "dynamic",
        http_addr=Address("127.0.0.1", 1),
        admin_addr=Address("127.0.0.1", 2),
    )


def routed(root: Path, replica: str) -> set[str]:
    """The departments a replica's Envoy route table holds."""
    path = root / replica / "dynamic" / ROUTES_FILE
    if not path.exists():
        return set()
    table = json.loads(path.read_text())["resources"][0]["virtual_hosts"][0]["routes"]
    prefixes = {r["match"].get("prefix", "") for r in table}
    return {p.split("/")[2] for p in prefixes if p.startswith("/departments/")}


@contextlib.contextmanager
def following(*gateways: EnvoyGateway, interval: float = 0.1) -> Iterator[None]:
    tasks = [asyncio.ensure_future(g.follow(interval)) for g in gateways]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()


async def eventually(check: object, within: float = 1.0) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < within, "not within the deadline"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[tuple[SqlJobStore, SqlJobStore]]:
    a, b = SqlJobStore(store_url), SqlJobStore(store_url)
    await a.initialize()
    await b.initialize()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_a_route_recorded_anywhere_is_on_every_replica_within_a_second(
    stores: tuple[SqlJobStore, SqlJobStore], tmp_path: Path
) -> None:
    a, b = gateway(stores[0], tmp_path, "a", local=False), gateway(stores[1], tmp_path, "b", local=False)
    await a.sync()
    await b.sync()
    with following(a, b):
        await stores[0].routes.put_route(Route("hr", "hr.up.railway.app", 443, tls=True))
        await eventually(lambda: routed(tmp_path, "a") == routed(tmp_path, "b") == {"hr"})
        assert await stores[1].routes.delete_route("hr")
        await eventually(lambda: routed(tmp_path, "a") == routed(tmp_path, "b") == set())


async def test_a_route_to_one_machine_stays_on_its_replica(
    stores: tuple[SqlJobStore, SqlJobStore], tmp_path: Path
) -> None:
    a, b = gateway(stores[0], tmp_path, "a", local=True), gateway(stores[1], tmp_path, "b", local=True)
    await stores[0].routes.put_route(Route("hr", "127.0.0.1", 20001, replica="a"))
    await stores[0].routes.put_route(Route("shared", "svc.example", 443, tls=True))
    await a.sync()
    await b.sync()
    assert routed(tmp_path, "a") == {"hr", "shared"}
    assert routed(tmp_path, "b") == {"shared"}


async def test_route_files_of_an_older_release_move_into_the_store(
    stores: tuple[SqlJobStore, SqlJobStore], tmp_path: Path
) -> None:
    old = gateway(stores[0], tmp_path, "a", local=True)
    directory = tmp_path / "a" / "departments" / "hr"
    directory.mkdir(parents=True)
    (directory / ROUTE_FILE).write_text(json.dumps({"host": "127.0.0.1", "port": 20001, "tls": False}))

    assert await old.adopt_route_files() == 1
    assert await old.adopt_route_files() == 0
    assert not (directory / ROUTE_FILE).exists()
    assert await stores[1].routes.get_route("hr") == Route("hr", "127.0.0.1", 20001, replica="a")
