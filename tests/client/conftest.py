"""Fixtures of the client tier: a real server, in the test's loop or in a background thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.client.harness import Harness, ThreadedServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.start()
    yield harness
    await harness.close()


@pytest.fixture
def threaded_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    running = ThreadedServer(tmp_path)
    yield running
    running.close()


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own server, token, secret and contexts must not leak into the tests."""
    monkeypatch.setenv("PROVISIONER_CONFIG", str(tmp_path / "provisionctl.yaml"))
    for name in (
        "PROVISIONER_SERVER",
        "PROVISIONER_TOKEN",
        "PROVISIONER_JWT_SECRET",
        "PROVISIONER_JWT_ISSUER",
        "PROVISIONER_JWT_AUDIENCE",
    ):
        monkeypatch.delenv(name, raising=False)
