"""The n8n adapter of the workflows step, without n8n: the conversion of our templates,
the error mapping, and the step's logic against an in-memory n8n behind
`httpx.MockTransport` (tests/integration/fake_n8n.py) that keeps the rules of the real
one that matter here (read-only fields refused, one active workflow per webhook path, no
deleting an active workflow, unique credential ids).
The real n8n is in tests/integration/test_workflows_n8n.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from department_service.mail import parse_url
from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.core.spec import WORKFLOW_KINDS
from provisioner.steps.base import StepContext
from provisioner.steps.workflows_n8n import N8nWorkflows, department_tag, to_n8n, webhook_path, workflow_name
from provisioner.steps.workflows_n8n import adapter as adapter_module
from provisioner.steps.workflows_n8n.client import N8nApi, N8nConflict, error_for
from provisioner.steps.workflows_n8n.convert import (
    ACTION_NODES,
    constant,
    credential,
    js_string,
    smtp_data,
    template_expression,
)
from tests.integration.fake_n8n import KEY, FakeN8n

from .factories import spec

URL = "http://n8n.test:5678"
ALL = ("email", "google_drive", "database")


@pytest.fixture
def n8n() -> FakeN8n:
    return FakeN8n()


@pytest.fixture
async def step(n8n: FakeN8n) -> AsyncIterator[N8nWorkflows]:
    adapter = N8nWorkflows(URL, KEY, activation_timeout=1.0, transport=httpx.MockTransport(n8n.handler))
    yield adapter
    await adapter.close()


def ctx(department_id: str = "hr", workflows: tuple[str, ...] = ALL, **overrides: object) -> StepContext:
    return StepContext("job-1", spec(department_id, workflows=workflows, **overrides), attempt=1)


# -- conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WORKFLOW_KINDS)
def test_every_kind_becomes_a_webhook_workflow_at_the_department_path(kind: str) -> None:
    workflow = to_n8n(kind, spec("hr"))
    assert workflow["name"] == workflow_name("hr", kind) == f"dept-hr-{kind}"
    assert set(workflow) == {"name", "nodes", "connections", "settings"}  # what the API accepts
    trigger, action = workflow["nodes"]
    assert trigger["type"] == "n8n-nodes-base.webhook"
    assert trigger["parameters"]["httpMethod"] == "POST"
    assert trigger["parameters"]["path"] == webhook_path("hr", kind) == f"hr/{kind}"
    assert trigger["parameters"]["responseMode"] == "lastNode"
    assert (action["name"], action["type"], action["typeVersion"]) == ACTION_NODES[kind]
    needed = credential("hr", kind)
    if needed is None:
        assert "credentials" not in action
    else:
        assert action["credentials"] == needed.reference
    assert workflow["connections"] == {
        trigger["name"]: {"main": [[{"node": action["name"], "type": "main", "index": 0}]]}
    }
    assert workflow["settings"]["saveDataSuccessExecution"] == "all"
    assert len({node["id"] for node in workflow["nodes"]}) == 2
    json.dumps(workflow)  # plain JSON


def test_the_conversion_is_deterministic_and_per_department() -> None:
    assert to_n8n("email", spec("hr")) == to_n8n("email", spec("hr"))
    ours, theirs = to_n8n("email", spec("hr")), to_n8n("email", spec("sales"))
    assert {n["id"] for n in ours["nodes"]}.isdisjoint({n["id"] for n in theirs["nodes"]})
    assert ours["nodes"][0]["webhookId"] != theirs["nodes"][0]["webhookId"]
    assert department_tag("hr") == "department:hr"


def parameters(workflow: dict[str, Any]) -> dict[str, Any]:
    return dict(workflow["nodes"][1]["parameters"])


def test_each_kind_does_its_work_from_the_spec_and_the_request() -> None:
    email = parameters(to_n8n("email", spec("hr", admin_email="boss@example.com")))
    assert (email["fromEmail"], email["toEmail"]) == ("hr@localhost", "boss@example.com")
    assert email["subject"] == '={{ "New event for hr: " + String($json.body["name"] ?? "") }}'
    assert email["text"] == "={{ JSON.stringify($json.body, null, 2) }}"
    assert (email["emailFormat"], email["options"]) == ("text", {"appendAttribution": False})
    assert (
        parameters(to_n8n("email", spec("hr"), sender="desk@example.com"))["fromEmail"] == "desk@example.com"
    )
    drive_workflow = to_n8n("google_drive", spec("hr", department_name="Human Resources"))
    drive = parameters(drive_workflow)
    assert (drive["resource"], drive["operation"]) == ("file", "createFromText")
    assert drive["name"] == '={{ String($json.body["name"] ?? "") }}'
    assert "Human Resources (hr)" in drive_workflow["nodes"][1]["notes"]  # the folder to pick
    record = {
        f["name"]: f["value"]
        for f in parameters(to_n8n("database", spec("hr")))["assignments"]["assignments"]
    }
    assert record["record"] == "={{ $json.body }}"
    assert record["department_id"] == "hr"


def test_credentials_are_per_department_with_ids_n8n_accepts() -> None:
    ours, theirs = credential("hr", "email"), credential("sales", "email")
    assert ours is not None and theirs is not None
    assert (ours.name, ours.type) == ("dept-hr-smtp", "smtp")
    assert ours.id != theirs.id and re.fullmatch(r"[a-f0-9]{16}", ours.id)
    assert credential("hr", "email") == ours
    drive = credential("hr", "google_drive")
    assert drive is not None and (drive.name, drive.type) == ("dept-hr-google-drive", "googleDriveOAuth2Api")
    assert credential("hr", "database") is None
    relay = parse_url("smtps://mailer:p%40ss@mail.example.com?from=desk@example.com", "hr")
    assert smtp_data(relay) == {
        "host": "mail.example.com",
        "port": 465,
        "secure": True,
        "disableStartTls": False,
        "user": "mailer",
        "password": "p@ss",
    }


def test_a_value_that_looks_like_an_expression_stays_text() -> None:
    sender = "={{ $env.SECRET }}@example.com"
    wrapped = parameters(to_n8n("email", spec("hr"), sender=sender))["fromEmail"]
    assert wrapped.startswith("={{ ") and wrapped.endswith(" }}")
    inner = wrapped.removeprefix("={{ ").removesuffix(" }}")
    assert "{" not in inner and "}" not in inner  # nothing can close the expression early
    assert json.loads(inner) == sender
    assert constant("plain {{ text }}") == "plain {{ text }}"  # not an expression to n8n
    assert json.loads(js_string('a "b" \\ \u2028 {}')) == 'a "b" \\ \u2028 {}'


@pytest.mark.parametrize("template", ["{0}", "{}", "{a.b}", "{a[0]}", "{a!r}", "{a:>9}", "{unclosed"])
def test_only_plain_field_placeholders_are_allowed(template: str) -> None:
    with pytest.raises(StepError):
        template_expression(template)


def test_literal_braces_and_fields_in_a_template() -> None:
    assert (
        template_expression("{{x}} {name}") == '={{ "\\u007bx\\u007d " + String($json.body["name"] ?? "") }}'
    )
    assert template_expression("") == '={{ "" }}'


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_fatal_and_never_echoed(status: int) -> None:
    error = error_for(httpx.Response(status, json={"message": f"bad key {KEY}"}), "listing")
    assert type(error) is StepError
    assert error.message.startswith("n8n rejected the API key")
    assert KEY not in error.message


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_rate_limits_and_server_errors_are_retryable(status: int) -> None:
    response = httpx.Response(status, headers={"Retry-After": "7"}, json={"message": "busy"})
    error = error_for(response, "listing")
    assert isinstance(error, TransientStepError)
    assert error.retry_after == (7.0 if status == 429 else None)


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_client_errors_are_fatal_with_n8ns_message_on_one_line(status: int) -> None:
    message = "There is a conflict\n  with one of the webhooks. " + "x" * 500
    error = error_for(httpx.Response(status, json={"message": message}), "activating dept-hr-email")
    assert isinstance(error, StepError) and not isinstance(error, TransientStepError)
    assert isinstance(error, N8nConflict) == (status == 409)  # the adapter may wait one out
    assert "There is a conflict with one of the webhooks." in error.message
    assert f"HTTP {status} while activating dept-hr-email" in error.message
    assert "\n" not in error.message and len(error.message) < 300


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_an_unreachable_n8n_is_retryable_and_chained(failure: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    api = N8nApi(URL, KEY, transport=httpx.MockTransport(fail))
    try:
        with pytest.raises(TransientStepError, match="cannot reach n8n") as caught:
            await api.call("GET", "/workflows", doing="listing")
        assert caught.value.__cause__ is failure
    finally:
        await api.close()


async def test_the_key_goes_in_its_header_only() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(502, text=f"proxy says {KEY}")

    api = N8nApi(URL + "/", KEY, transport=httpx.MockTransport(record))
    try:
        with pytest.raises(TransientStepError) as caught:
            await api.call("GET", "/workflows", doing="listing")
    finally:
        await api.close()
    assert KEY not in caught.value.message and KEY not in repr(api)
    assert seen[0].headers["X-N8N-API-KEY"] == KEY
    assert str(seen[0].url) == f"{URL}/api/v1/workflows"


async def test_an_answer_that_is_not_json_is_retryable() -> None:
    api = N8nApi(URL, KEY, transport=httpx.MockTransport(lambda _: httpx.Response(200, text="<html>")))
    try:
        with pytest.raises(TransientStepError, match="not JSON"):
            await api.call("GET", "/workflows", doing="listing")
    finally:
        await api.close()


async def test_a_listing_whose_cursor_never_ends_fails() -> None:
    stuck = httpx.MockTransport(lambda _: httpx.Response(200, json={"data": [], "nextCursor": "same"}))
    api = N8nApi(URL, KEY, transport=stuck)
    try:
        with pytest.raises(StepError, match="never ended"):
            await api.pages("/workflows", doing="listing")
    finally:
        await api.close()


@pytest.mark.parametrize("url", ["n8n.test:5678", "ftp://n8n.test", "http://", "http://n8n.test/?x=1"])
def test_a_malformed_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="PROVISIONER_N8N_URL"):
        N8nWorkflows(url, KEY)


def test_an_empty_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PROVISIONER_N8N_API_KEY"):
        N8nWorkflows(URL, " ")


# -- the step against the fake n8n --------------------------------------------------------


async def test_apply_deploys_each_kind_tagged_and_active(step: N8nWorkflows, n8n: FakeN8n) -> None:
    resources = await step.apply(ctx("hr"))
    deployed = sorted(n8n.of("hr"), key=lambda w: w["name"])
    assert [w["name"] for w in deployed] == ["dept-hr-database", "dept-hr-email", "dept-hr-google_drive"]
    assert all(
        w["active"] and w["tags"] == [{"id": n8n.tag("department:hr"), "name": "department:hr"}]
        for w in deployed
    )
    assert resources == {
        "workflows": "database,email,google_drive",
        "n8n_ids": ",".join(w["id"] for w in deployed),
        "webhooks": "/webhook/hr/database,/webhook/hr/email,/webhook/hr/google_drive",
    }
    assert (await step.check(ctx("hr"))).reason == "ACTIVE"
    # No PROVISIONER_SMTP_URL: both credentials are empty, for an operator to fill in.
    assert sorted((c["name"], c["type"], c["data"]) for c in n8n.credentials.values()) == [
        ("dept-hr-google-drive", "googleDriveOAuth2Api", {}),
        ("dept-hr-smtp", "smtp", {}),
    ]


async def test_a_second_apply_changes_nothing(step: N8nWorkflows, n8n: FakeN8n) -> None:
    first = await step.apply(ctx("hr"))
    n8n.calls.clear()
    assert await step.apply(ctx("hr")) == first
    assert n8n.writes() == []
    assert len(n8n.of("hr")) == 3


async def test_a_changed_spec_updates_in_place_and_removes_what_it_no_longer_asks_for(
    step: N8nWorkflows, n8n: FakeN8n
) -> None:
    first = await step.apply(ctx("hr"))
    email_id = first["n8n_ids"].split(",")[1]
    changed = await step.apply(ctx("hr", workflows=("email",), admin_email="new@example.com"))
    assert changed["n8n_ids"] == email_id
    (email,) = n8n.of("hr")
    assert email["active"] and parameters(email)["toEmail"] == "new@example.com"
    assert (await step.check(ctx("hr", workflows=("email",)))).healthy
    assert [c["name"] for c in n8n.credentials.values()] == ["dept-hr-smtp"]


async def test_apply_adopts_an_untagged_workflow_left_by_a_crash(step: N8nWorkflows, n8n: FakeN8n) -> None:
    orphan = n8n.add(to_n8n("email", spec("hr")))
    resources = await step.apply(ctx("hr", workflows=("email",)))
    assert resources["n8n_ids"] == orphan
    assert n8n.workflows[orphan]["active"]
    assert [t["name"] for t in n8n.workflows[orphan]["tags"]] == ["department:hr"]


async def test_apply_keeps_the_running_one_of_duplicates_and_others_tags(
    step: N8nWorkflows, n8n: FakeN8n
) -> None:
    body = to_n8n("email", spec("hr", workflows=("email",)))
    older = n8n.add(body)
    running = n8n.add(body, active=True, tags=("billing",))
    stray = n8n.add({**body, "name": "dept-hr-legacy"}, tags=("department:hr",))
    resources = await step.apply(ctx("hr", workflows=("email",)))
    assert resources["n8n_ids"] == running
    assert set(n8n.workflows) == {running}
    assert {t["name"] for t in n8n.workflows[running]["tags"]} == {"billing", "department:hr"}
    assert older not in n8n.workflows and stray not in n8n.workflows


async def test_apply_leaves_other_departments_alone(step: N8nWorkflows, n8n: FakeN8n) -> None:
    await step.apply(ctx("hr-eu"))
    await step.apply(ctx("hr", workflows=("email",)))
    await step.compensate(ctx("hr"))
    assert len(n8n.of("hr-eu")) == 3 and all(w["active"] for w in n8n.of("hr-eu"))


async def test_a_webhook_path_held_by_a_foreign_workflow_is_fatal(
    step: N8nWorkflows, n8n: FakeN8n, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "SETTLE_TIMEOUT", 0.05)
    monkeypatch.setattr(adapter_module, "POLL_INTERVAL", 0.01)
    n8n.add({**to_n8n("email", spec("hr")), "name": "someone else's"}, active=True)
    with pytest.raises(StepError, match="conflict with one of the webhooks") as caught:
        await step.apply(ctx("hr", workflows=("email",)))
    assert not isinstance(caught.value, TransientStepError)


async def test_apply_waits_for_a_background_activation(
    step: N8nWorkflows, n8n: FakeN8n, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "POLL_INTERVAL", 0.01)
    n8n.inactive_reads = 2
    await step.apply(ctx("hr", workflows=("email",)))
    assert n8n.calls.count(f"GET /workflows/{n8n.of('hr')[0]['id']}") == 2


async def test_an_activation_that_never_lands_is_retryable(
    step: N8nWorkflows, n8n: FakeN8n, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "POLL_INTERVAL", 0.05)
    n8n.inactive_reads = 10**6
    with pytest.raises(TransientStepError, match="not active 1 s after activation"):
        await step.apply(ctx("hr", workflows=("email",)))


async def test_compensate_deactivates_then_deletes_everything_and_the_tag(
    step: N8nWorkflows, n8n: FakeN8n
) -> None:
    await step.apply(ctx("hr"))
    n8n.calls.clear()
    await step.compensate(ctx("hr"))
    assert n8n.of("hr") == [] and "department:hr" not in n8n.tags.values()
    for workflow_id in re.findall(r"DELETE /workflows/(\w+)", " ".join(n8n.calls)):
        calls = n8n.calls
        assert calls.index(f"POST /workflows/{workflow_id}/deactivate") < calls.index(
            f"DELETE /workflows/{workflow_id}"
        )
    assert n8n.credentials == {}
    await step.compensate(ctx("hr"))  # nothing left: still fine
    assert (await step.check(ctx("hr"))).reason == "MISSING"


async def test_the_smtp_credential_is_written_from_the_relay_setting_on_every_apply(n8n: FakeN8n) -> None:
    url = "smtp://mailer:s3cret@mail.example.com:2525?from=desk@example.com"
    adapter = N8nWorkflows(URL, KEY, smtp_url=url, transport=httpx.MockTransport(n8n.handler))
    try:
        await adapter.apply(ctx("hr", workflows=("email",)))
        (smtp,) = n8n.credentials.values()
        assert smtp["data"] == {
            "host": "mail.example.com",
            "port": 2525,
            "secure": False,
            "disableStartTls": False,
            "user": "mailer",
            "password": "s3cret",
        }
        (email,) = n8n.of("hr")
        assert parameters(email)["fromEmail"] == "desk@example.com"
        smtp["data"] = {}  # an operator's edit: the setting wins on the next apply
        n8n.calls.clear()
        await adapter.apply(ctx("hr", workflows=("email",)))
        assert n8n.writes() == [f"PATCH /credentials/{credential('hr', 'email').id}"]  # type: ignore[union-attr]
        assert smtp["data"]["password"] == "s3cret"
    finally:
        await adapter.close()


async def test_a_lost_credential_is_reported_and_made_again(step: N8nWorkflows, n8n: FakeN8n) -> None:
    await step.apply(ctx("hr"))
    smtp = credential("hr", "email")
    assert smtp is not None
    del n8n.credentials[smtp.id]
    condition = await step.check(ctx("hr"))
    assert (condition.healthy, condition.reason, condition.message) == (
        False,
        "MISSING",
        "not in n8n: credential dept-hr-smtp",
    )
    await step.apply(ctx("hr"))
    assert (await step.check(ctx("hr"))).healthy


async def test_a_credential_of_another_type_under_the_id_is_fatal(step: N8nWorkflows, n8n: FakeN8n) -> None:
    smtp = credential("hr", "email")
    assert smtp is not None
    n8n.credentials[smtp.id] = {"name": "someone's", "type": "googleDriveOAuth2Api", "data": {}}
    with pytest.raises(StepError, match="is not the smtp credential dept-hr-smtp") as caught:
        await step.apply(ctx("hr", workflows=("email",)))
    assert not isinstance(caught.value, TransientStepError)


async def test_check_reports_inactive_missing_unreachable_and_rejected(
    step: N8nWorkflows, n8n: FakeN8n
) -> None:
    await step.apply(ctx("hr"))
    email = next(w for w in n8n.of("hr") if w["name"] == "dept-hr-email")
    email["active"] = False
    inactive = await step.check(ctx("hr"))
    assert (inactive.healthy, inactive.reason, inactive.message) == (
        False,
        "INACTIVE",
        "not active in n8n: email",
    )
    del n8n.workflows[email["id"]]
    assert (await step.check(ctx("hr"))).reason == "MISSING"

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    for transport, reason in [(down, "UNREACHABLE"), (n8n.handler, "REJECTED")]:
        other = N8nWorkflows(URL, "wrong-key", transport=httpx.MockTransport(transport))
        try:
            condition = await other.check(ctx("hr"))
        finally:
            await other.close()
        assert (condition.healthy, condition.reason) == (False, reason)
        assert "wrong-key" not in condition.message


async def test_a_cancelled_apply_lets_its_request_in_flight_finish(n8n: FakeN8n) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/workflows"):
            entered.set()
            await release.wait()
        return n8n.handler(request)

    adapter = N8nWorkflows(URL, KEY, transport=httpx.MockTransport(slow))
    try:
        applying = asyncio.create_task(adapter.apply(ctx("hr", workflows=("email",))))
        await entered.wait()
        applying.cancel()
        await asyncio.sleep(0)
        assert not applying.done()  # held until the creation it started has landed
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await applying
        assert len(n8n.of("hr")) == 1  # so the rollback that follows finds it
        await adapter.compensate(ctx("hr"))
        assert n8n.of("hr") == []
    finally:
        await adapter.close()


async def test_compensate_waits_while_n8n_finishes_unpublishing(
    step: N8nWorkflows, n8n: FakeN8n, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "POLL_INTERVAL", 0.01)
    await step.apply(ctx("hr", workflows=("email",)))
    n8n.unpublishing = 3
    await step.compensate(ctx("hr"))
    assert n8n.of("hr") == []


async def test_a_delete_refused_for_too_long_is_retryable(
    step: N8nWorkflows, n8n: FakeN8n, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "SETTLE_TIMEOUT", 0.05)
    monkeypatch.setattr(adapter_module, "POLL_INTERVAL", 0.01)
    await step.apply(ctx("hr", workflows=("email",)))
    n8n.unpublishing = 10**6
    with pytest.raises(TransientStepError, match="still being unpublished") as caught:
        await step.compensate(ctx("hr"))
    assert isinstance(caught.value.__cause__, StepError)
    assert not n8n.of("hr")[0]["active"]  # deactivated: the retry will delete it
