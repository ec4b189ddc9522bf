"""`PROVISIONER_N8N_*` against a real n8n, end to end (opt-in: marker `n8n`, see tests/n8n.py).

The control plane deploys a department's workflows to n8n with their credentials; its
validation step runs one of them there; webhooks called afterwards run on n8n, which
keeps the executions, and the email one delivers to a real SMTP relay; and
deprovisioning leaves no workflow and no credential in n8n. What n8n holds is read
through its own API.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.steps.workflows_n8n.convert import credential
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from tests.e2e.conftest import started_plane
from tests.e2e.test_departments import deprovision, provision, traces
from tests.n8n import N8n
from tests.smtp import MailServer, mail_server

__all__ = ["mail_server"]

pytestmark = [pytest.mark.n8n, pytest.mark.slow, pytest.mark.timeout(900)]


def workflows_of(n8n: N8n, department_id: str) -> list[dict[str, Any]]:
    reply = httpx.get(
        f"{n8n.url}/api/v1/workflows",
        params={"name": f"dept-{department_id}-", "limit": "50"},
        headers={"X-N8N-API-KEY": n8n.api_key},
        timeout=30,
        trust_env=False,
    )
    reply.raise_for_status()
    return sorted(reply.json()["data"], key=lambda w: w["name"])


def executions_of(n8n: N8n, workflow_id: str, at_least: int) -> list[dict[str, Any]]:
    """The workflow's executions, once n8n has saved `at_least` (it saves after answering)."""
    for _ in range(100):
        reply = httpx.get(
            f"{n8n.url}/api/v1/executions",
            params={"workflowId": workflow_id},
            headers={"X-N8N-API-KEY": n8n.api_key},
            timeout=30,
            trust_env=False,
        )
        reply.raise_for_status()
        found: list[dict[str, Any]] = reply.json()["data"]
        if len(found) >= at_least:
            return found
        time.sleep(0.1)
    raise AssertionError(f"n8n saved fewer than {at_least} executions of {workflow_id}")


def credentials_of(n8n: N8n, department_id: str) -> list[str]:
    """The names of the department's credentials that n8n has."""
    found = []
    for kind in ("email", "google_drive"):
        wanted = credential(department_id, kind)
        assert wanted is not None
        reply = httpx.get(
            f"{n8n.url}/api/v1/credentials/{wanted.id}",
            headers={"X-N8N-API-KEY": n8n.api_key},
            timeout=30,
            trust_env=False,
        )
        if reply.status_code != 404:
            found.append(reply.raise_for_status().json()["name"])
    return found


def test_workflows_deployed_to_n8n_run_there_and_are_gone_after_deprovisioning(
    n8n: N8n, mail_server: MailServer, tmp_path: Path
) -> None:
    with started_plane(
        tmp_path,
        PROVISIONER_N8N_URL=n8n.url,
        PROVISIONER_N8N_API_KEY=n8n.api_key,
        PROVISIONER_SMTP_URL=mail_server.url,
    ) as plane:
        dept = f"e2e-{uuid.uuid4().hex[:8]}"
        _, job = provision(plane, dept)
        assert job.state == pb.JOB_STATE_COMPLETED, job.error

        deployed = workflows_of(n8n, dept)
        assert [w["name"] for w in deployed] == [
            f"dept-{dept}-{k}" for k in ("database", "email", "google_drive")
        ]
        assert all(w["active"] for w in deployed)
        # The validation step's smoke test ran on n8n, then ours does.
        database = deployed[0]
        assert len(executions_of(n8n, database["id"], 1)) == 1
        webhook = f"{n8n.url}/webhook/{dept}/database"
        ran = httpx.post(webhook, json={"amount": 3}, timeout=30, trust_env=False)
        assert ran.status_code == 200, ran.text
        assert len(executions_of(n8n, database["id"], 2)) == 2
        assert credentials_of(n8n, dept) == [f"dept-{dept}-smtp", f"dept-{dept}-google-drive"]
        mailed = httpx.post(
            f"{n8n.url}/webhook/{dept}/email", json={"name": "hello"}, timeout=30, trust_env=False
        )
        assert mailed.status_code == 200, mailed.text
        (received,) = mail_server.wait_for(1)
        assert received.message["Subject"] == f"New event for {dept}: hello"
        assert received.sender == f"{dept}@localhost"

        teardown = deprovision(plane, dept)
        assert teardown.state == pb.JOB_STATE_COMPLETED, teardown.error
        assert workflows_of(n8n, dept) == []
        assert credentials_of(n8n, dept) == []
        gone = httpx.post(webhook, json={}, timeout=30, trust_env=False)
        assert gone.status_code == 404
        assert traces(plane, dept) == {}
