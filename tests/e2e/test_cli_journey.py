"""A newcomer's journey with the installed `provisionctl`, against the real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, SECRET, ControlPlane, control_plane

pytestmark = pytest.mark.slow

FLAGS = (
    "--name", "Finance", "--workflow", "email", "--workflow", "database",
    "--retention", "365d", "--region", "eu-central-1", "--admin-email", "cfo@example.com",
)  # fmt: skip


def test_a_newcomer_mints_a_token_provisions_watches_lists_checks_and_deprovisions(
    plane: ControlPlane,
) -> None:
    minted = subprocess.run(
        [str(BIN / "provisionctl"), "token", "--role", "admin"],
        env={**plane.env, "PROVISIONER_JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    )
    admin = minted.stdout.strip()
    assert admin.count(".") == 2

    provisioned = plane.run("provision", "--department-id", "finance", *FLAGS, bearer=admin)
    assert provisioned.returncode == 0, provisioned.stderr
    lines = provisioned.stdout.splitlines()
    for step in ("validate", "database", "oauth", "container", "workflows", "gateway", "validation"):
        assert any(step in line and "succeeded" in line for line in lines), (step, lines)
    assert lines[-1].startswith("COMPLETED")

    listed = plane.run("-o", "json", "list", "--region", "eu-central-1", bearer=admin)
    departments = json.loads(listed.stdout)["departments"]
    assert [d["departmentId"] for d in departments] == ["finance"]
    job_id = departments[0]["currentJobId"]
    status = plane.run("-o", "json", "status", job_id, bearer=admin)
    assert json.loads(status.stdout)["state"] == "JOB_STATE_COMPLETED"
    assert plane.run("health", "finance", bearer=admin).returncode == 0

    watched = plane.run("-o", "json", "watch", job_id, bearer=admin)
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert "snapshot" in events[0]
    assert events[-1]["event"]["type"] == "JOB_EVENT_TYPE_JOB_FINISHED"

    removed = plane.run("deprovision", "finance", bearer=admin)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines()[-1].startswith("COMPLETED")


def test_errors_are_one_sentence_with_distinct_exit_codes(plane: ControlPlane, tmp_path: Path) -> None:
    invalid = plane.run("provision", "--department-id", "Not Valid", *FLAGS)
    assert invalid.returncode == 2
    assert "--department-id must be" in invalid.stderr
    viewer = plane.run("provision", "--department-id", "viewers", *FLAGS, role="viewer")
    assert viewer.returncode == 3
    assert "admin" in viewer.stderr
    unknown = plane.run("status", "9b2f6c1e-0d7a-4c55-8a3e-1f6f4b8e2a10")
    assert unknown.returncode == 4
    for result in (invalid, viewer, unknown):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 8

    gone = control_plane(tmp_path)  # never started: nothing listens on its port
    unreachable = gone.run("--timeout", "1", "list")
    assert unreachable.returncode == 6
    assert "Traceback" not in unreachable.stderr
