"""The n8n adapter of the workflows step against a real n8n (opt-in: marker `n8n`).

Runs when PROVISIONER_N8N_URL and PROVISIONER_N8N_API_KEY point at an n8n (for example
after `eval "$(scripts/start-n8n)"`), or with PROVISIONER_N8N_TESTS=1, where the session
starts one itself with scripts/start-n8n (installing it into .tools/n8n the first time,
which takes a few minutes) and stops it afterwards if it was not already running.
Skipped otherwise.

Every department id is unique to its test and every department a test makes is
compensated after it, so the tests share an n8n with anything else safely. What n8n
holds is read back through its public API here, never through the adapter.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.spec import DepartmentSpec
from provisioner.steps.base import StepContext
from provisioner.steps.workflows_n8n import N8nWorkflows, department_tag, to_n8n, workflow_name
from provisioner.steps.workflows_n8n.convert import credential
from tests.n8n import N8n
from tests.smtp import MailServer

# The first session may install n8n (minutes) inside its first test's timeout. The relay
# wants a login without TLS: n8n could not trust a test CA (its SMTP credential has none).
pytestmark = [
    pytest.mark.n8n,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

ALL = ("email", "google_drive", "database")


@pytest.fixture
async def api(n8n: N8n) -> AsyncIterator[httpx.AsyncClient]:
    """n8n's public API, to see for ourselves what the adapter did."""
    async with httpx.AsyncClient(
        base_url=f"{n8n.url}/api/v1", headers={"X-N8N-API-KEY": n8n.api_key}, timeout=30, trust_env=False
    ) as client:
        yield client


@pytest.fixture
def mail() -> Iterator[MailServer]:
    """A real SMTP relay that wants a login (over loopback, so without TLS)."""
    with MailServer(login=("mailer", "s3cret")) as server:
        yield server


@pytest.fixture
async def step(n8n: N8n, mail: MailServer) -> AsyncIterator[N8nWorkflows]:
    adapter = N8nWorkflows(n8n.url, n8n.api_key, smtp_url=f"{mail.url}?from=desk@example.com")
    yield adapter
    await adapter.close()


@pytest.fixture
async def department(step: N8nWorkflows) -> AsyncIterator[Callable[..., StepContext]]:
    """Makes step contexts for one fresh department id, compensated after the test."""
    department_id = f"it-{uuid.uuid4().hex[:10]}"

    def make(workflows: tuple[str, ...] = ALL, **overrides: str) -> StepContext:
        values = {
            "department_name": "Integration",
            "data_retention": "30d",
            "region": "us-west",
            "admin_email": "admin@example.com",
            **overrides,
        }
        return StepContext("job-it", DepartmentSpec(department_id, workflows=workflows, **values), attempt=1)

    yield make
    await step.compensate(make())


async def listed(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    """Every workflow n8n lists for `params` (one page is plenty for one department)."""
    reply = await api.get("/workflows", params={"limit": "250", "excludePinnedData": "true", **params})
    reply.raise_for_status()
    return list(reply.json()["data"])


async def of_department(api: httpx.AsyncClient, department_id: str) -> list[dict[str, Any]]:
    found = await listed(api, name=f"dept-{department_id}-")
    return sorted(found, key=lambda w: w["name"])


async def executions(api: httpx.AsyncClient, workflow_id: str, at_least: int = 1) -> list[dict[str, Any]]:
    """The workflow's executions, once n8n has saved `at_least` of them (it saves after answering)."""
    for _ in range(100):
        reply = await api.get("/executions", params={"workflowId": workflow_id})
        reply.raise_for_status()
        data: list[dict[str, Any]] = reply.json()["data"]
        if len(data) >= at_least:
            return data
        await asyncio.sleep(0.1)
    raise AssertionError(f"no execution of {workflow_id} saved after 10 s")


async def test_apply_deploys_tagged_active_workflows_whose_webhooks_run(
    step: N8nWorkflows,
    api: httpx.AsyncClient,
    department: Callable[..., StepContext],
    n8n: N8n,
    mail: MailServer,
) -> None:
    # A name n8n would evaluate if it were pasted into a parameter as it is.
    ctx = department(department_name="={{ 6 * 7 }} Sales", admin_email="boss@example.com")
    department_id = ctx.department_id
    resources = await step.apply(ctx)

    workflows = await of_department(api, department_id)
    assert [w["name"] for w in workflows] == [workflow_name(department_id, k) for k in sorted(ALL)]
    assert all(w["active"] for w in workflows)
    assert all([t["name"] for t in w["tags"]] == [department_tag(department_id)] for w in workflows)
    tagged = await listed(api, tags=department_tag(department_id))
    assert sorted(w["id"] for w in tagged) == sorted(w["id"] for w in workflows)
    assert resources == {
        "workflows": "database,email,google_drive",
        "n8n_ids": ",".join(w["id"] for w in workflows),
        "webhooks": ",".join(f"/webhook/{department_id}/{k}" for k in sorted(ALL)),
    }

    for kind, credential_type in (("email", "smtp"), ("google_drive", "googleDriveOAuth2Api")):
        wanted = credential(department_id, kind)
        assert wanted is not None
        found = (await api.get(f"/credentials/{wanted.id}")).raise_for_status().json()
        assert (found["name"], found["type"]) == (wanted.name, credential_type)

    request = {"name": "q3-report.pdf", "amount": 42}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        answers = {
            kind: await client.post(f"{n8n.url}/webhook/{department_id}/{kind}", json=request) for kind in ALL
        }
    assert {kind: reply.status_code for kind, reply in answers.items()} == {
        "email": 200,
        "google_drive": 500,  # its credential is a placeholder until an operator fills it in
        "database": 200,
    }
    # The email went through the relay, logged in with the department's SMTP credential.
    sent = answers["email"].json()
    assert sent["accepted"] == ["boss@example.com"] and sent["response"].startswith("250 ")
    (received,) = mail.wait_for(1)
    assert (received.sender, received.recipients) == ("desk@example.com", ["boss@example.com"])
    assert received.message["Subject"] == f"New event for {department_id}: q3-report.pdf"
    assert json.loads(received.message.get_content()) == request
    record = answers["database"].json()
    assert (record["department_id"], record["workflow"], record["record"]) == (
        department_id,
        "database",
        request,
    )
    assert record["received_at"].endswith("Z")

    by_kind = {w["name"].removeprefix(f"dept-{department_id}-"): w for w in workflows}
    statuses = {kind: (await executions(api, by_kind[kind]["id"]))[0]["status"] for kind in ALL}
    assert statuses == {"email": "success", "google_drive": "error", "database": "success"}
    (failed,) = await executions(api, by_kind["google_drive"]["id"])
    detail = (await api.get(f"/executions/{failed['id']}", params={"includeData": "true"})).json()
    error = detail["data"]["resultData"]["error"]
    # It stopped at the credential, before any request to Google.
    assert (error["node"]["name"], error["message"]) == (
        "Create file in Google Drive",
        "Unable to sign without access token",
    )


async def test_apply_twice_adopts_and_changes_nothing(
    step: N8nWorkflows, api: httpx.AsyncClient, department: Callable[..., StepContext]
) -> None:
    ctx = department()
    first = await step.apply(ctx)
    before = await of_department(api, ctx.department_id)
    assert await step.apply(ctx) == first
    after = await of_department(api, ctx.department_id)
    assert len(after) == 3
    # Same workflows, same versions: the second apply found them up to date.
    assert [(w["id"], w["versionId"], w["active"]) for w in after] == [
        (w["id"], w["versionId"], True) for w in before
    ]


async def test_apply_adopts_an_untagged_workflow_left_by_a_crash(
    step: N8nWorkflows, api: httpx.AsyncClient, department: Callable[..., StepContext]
) -> None:
    ctx = department(workflows=("email",))
    orphan = (await api.post("/workflows", json=to_n8n("email", ctx.spec))).raise_for_status().json()
    resources = await step.apply(ctx)
    assert resources["n8n_ids"] == orphan["id"]
    (adopted,) = await of_department(api, ctx.department_id)
    assert adopted["active"] and [t["name"] for t in adopted["tags"]] == [department_tag(ctx.department_id)]


async def test_a_spec_with_fewer_workflows_removes_the_others(
    step: N8nWorkflows, api: httpx.AsyncClient, department: Callable[..., StepContext], n8n: N8n
) -> None:
    ctx = department()
    await step.apply(ctx)
    kept = await step.apply(department(workflows=("email",), admin_email="new@example.com"))
    (email,) = await of_department(api, ctx.department_id)
    assert (email["name"], email["id"], email["active"]) == (
        workflow_name(ctx.department_id, "email"),
        kept["n8n_ids"],
        True,
    )
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        gone = await client.post(f"{n8n.url}/webhook/{ctx.department_id}/database", json={})
        updated = await client.post(f"{n8n.url}/webhook/{ctx.department_id}/email", json={"name": "x"})
    assert gone.status_code == 404
    assert updated.json()["accepted"] == ["new@example.com"]  # the update is live, not only saved


async def test_compensate_removes_every_workflow_and_the_tag(
    step: N8nWorkflows, api: httpx.AsyncClient, department: Callable[..., StepContext]
) -> None:
    ctx = department()
    await step.apply(ctx)
    await step.compensate(ctx)
    assert await of_department(api, ctx.department_id) == []
    tags = (await api.get("/tags", params={"limit": "250"})).raise_for_status().json()["data"]
    assert department_tag(ctx.department_id) not in {t["name"] for t in tags}
    for kind in ("email", "google_drive"):
        wanted = credential(ctx.department_id, kind)
        assert wanted is not None and (await api.get(f"/credentials/{wanted.id}")).status_code == 404
    await step.compensate(ctx)  # nothing left to remove: still succeeds


async def test_check_is_healthy_then_reports_what_it_finds(
    step: N8nWorkflows, api: httpx.AsyncClient, department: Callable[..., StepContext]
) -> None:
    ctx = department()
    await step.apply(ctx)
    healthy = await step.check(ctx)
    assert (healthy.healthy, healthy.reason) == (True, "ACTIVE")

    by_name = {w["name"]: w for w in await of_department(api, ctx.department_id)}
    email = by_name[workflow_name(ctx.department_id, "email")]
    (await api.post(f"/workflows/{email['id']}/deactivate")).raise_for_status()
    inactive = await step.check(ctx)
    assert (inactive.healthy, inactive.reason, inactive.message) == (
        False,
        "INACTIVE",
        "not active in n8n: email",
    )

    drive = by_name[workflow_name(ctx.department_id, "google_drive")]
    (await api.post(f"/workflows/{drive['id']}/deactivate")).raise_for_status()
    (await api.delete(f"/workflows/{drive['id']}")).raise_for_status()
    missing = await step.check(ctx)
    assert (missing.healthy, missing.reason) == (False, "MISSING")
    assert "google_drive" in missing.message and "email" in missing.message

    await step.apply(ctx)  # a re-run repairs both
    assert (await step.check(ctx)).healthy


async def test_a_wrong_key_is_fatal_and_an_unreachable_n8n_retryable(
    n8n: N8n, department: Callable[..., StepContext]
) -> None:
    ctx = department()
    wrong = N8nWorkflows(n8n.url, "not-the-key")
    try:
        with pytest.raises(StepError, match="n8n rejected the API key") as caught:
            await wrong.apply(ctx)
        assert not isinstance(caught.value, TransientStepError)
        assert (await wrong.check(ctx)).reason == "REJECTED"
    finally:
        await wrong.close()
    # Port 9 (discard) on loopback: nothing listens there.
    nowhere = N8nWorkflows("http://127.0.0.1:9", n8n.api_key, timeout=2)
    try:
        with pytest.raises(TransientStepError, match="cannot reach n8n"):
            await nowhere.compensate(ctx)
        condition = await nowhere.check(ctx)
        assert (condition.reason, n8n.api_key in condition.message) == ("UNREACHABLE", False)
    finally:
        await nowhere.close()
