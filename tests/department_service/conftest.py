"""Fixtures: a prepared department directory, and the real service running over it,
sending its email workflow's messages to a real SMTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.department_service.harness import DepartmentDir, RunningService
from tests.smtp import MailServer, mail_server

__all__ = ["mail_server"]


@pytest.fixture
def department(tmp_path: Path) -> DepartmentDir:
    return DepartmentDir(tmp_path / "hr").prepare()


@pytest.fixture
def service(department: DepartmentDir, tmp_path: Path, mail_server: MailServer) -> Iterator[RunningService]:
    running = RunningService(department, tmp_path / "service.log", {"SMTP_URL": mail_server.url})
    yield running
    running.close()
