"""Fixtures: a prepared department directory, and the real service running over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.department_service.harness import DepartmentDir, RunningService


@pytest.fixture
def department(tmp_path: Path) -> DepartmentDir:
    return DepartmentDir(tmp_path / "hr").prepare()


@pytest.fixture
def service(department: DepartmentDir, tmp_path: Path) -> Iterator[RunningService]:
    running = RunningService(department, tmp_path / "service.log")
    yield running
    running.close()
