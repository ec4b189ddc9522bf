"""The Railway adapter of the container step against a local fake of Railway's GraphQL API.

The fake (`fake_railway.py`) is a real HTTP server speaking Railway's documented shapes,
so these tests exercise the adapter's real HTTP client, headers, JSON and error mapping.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import StepName
from provisioner.steps.base import StepContext
from provisioner.steps.container_railway import RailwayContainer

from .fake_railway import FakeDomain, FakeRailway, Fault

TOKEN = "rw-token-4b1d5e0c-never-in-logs"
PROJECT = "project-1"
ENVIRONMENT = "environment-1"
IMAGE = "ghcr.io/example/department-service:1.0"
DB_PASSWORD = "s3cret-db-password-5f1e"
DB_URL = f"postgresql://dept_sales:{DB_PASSWORD}@db.internal:5432/departments"


def ctx(department_id: str = "sales") -> StepContext:
    return StepContext(job_id="job-1", spec=DepartmentSpec(department_id, "Sales"), attempt=1)


def variables_of(department_id: str) -> dict[str, str]:
    return {"DEPARTMENT_ID": department_id, "DATABASE_URL": DB_URL}


async def department_variables(department_id: str) -> dict[str, str]:
    return variables_of(department_id)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The adapter honours proxy settings (Railway is on the internet); the fake is on loopback.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def railway() -> Iterator[FakeRailway]:
    with FakeRailway(TOKEN, PROJECT, ENVIRONMENT) as fake:
        yield fake


def make_container(endpoint: str, **options: Any) -> RailwayContainer:
    settings: dict[str, Any] = {
        "endpoint": endpoint,
        "variables": department_variables,
        "poll_interval": 0.005,
        "deploy_timeout": 5.0,
        "timeout": 2.0,
    }
    settings.update(options)
    token = settings.pop("token", TOKEN)
    return RailwayContainer(token, PROJECT, ENVIRONMENT, IMAGE, **settings)


@pytest.fixture
async def container(railway: FakeRailway) -> AsyncIterator[RailwayContainer]:
    step = make_container(railway.url)
    yield step
    await step.close()


async def test_apply_creates_the_service_sets_variables_and_waits_for_success(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    resources = await container.apply(ctx())

    service = railway.service_named("dept-sales")
    assert service is not None
    assert service.image == IMAGE
    assert service.variables[ENVIRONMENT] == variables_of("sales")
    assert service.settings[ENVIRONMENT] == {"healthcheckPath": "/healthz"}
    [domain] = service.domains[ENVIRONMENT]
    assert resources == {
        "service_id": service.id,
        "service_name": "dept-sales",
        "deployment_id": resources["deployment_id"],
        "domain": domain.domain,
    }
    assert domain.domain.endswith(".up.railway.app")
    # Our own deployment succeeded; the one Railway started on creation was superseded.
    assert railway.deployments[resources["deployment_id"]].status == "SUCCESS"
    assert [d.status for d in railway.deployments.values()] == ["REMOVED", "SUCCESS"]
    assert railway.operations()[:7] == [
        "project",
        "serviceCreate",
        "serviceInstanceUpdate",
        "domains",
        "serviceDomainCreate",
        "variableCollectionUpsert",
        "serviceInstanceDeployV2",
    ]
    update = next(c for c in railway.calls if c.operation == "serviceInstanceUpdate")
    assert update.variables == {
        "serviceId": service.id,
        "environmentId": ENVIRONMENT,
        "input": {"healthcheckPath": "/healthz"},
    }
    create = next(c for c in railway.calls if c.operation == "serviceDomainCreate")
    assert create.variables == {"input": {"serviceId": service.id, "environmentId": ENVIRONMENT}}
    assert railway.operations().count("deployment") >= 3  # QUEUED -> BUILDING -> DEPLOYING -> SUCCESS
    upsert = next(c for c in railway.calls if c.operation == "variableCollectionUpsert")
    assert upsert.variables["input"]["skipDeploys"] is True  # one deployment, the one we watch
    assert all(c.headers["authorization"] == f"Bearer {TOKEN}" for c in railway.calls)
    assert container.name is StepName.CONTAINER


async def test_apply_twice_adopts_the_service(railway: FakeRailway, container: RailwayContainer) -> None:
    first = await container.apply(ctx())
    second = await container.apply(ctx())

    assert railway.operations().count("serviceCreate") == 1
    assert len(railway.services) == 1
    assert second["service_id"] == first["service_id"]
    # Every apply deploys the current variables; the newest deployment took over.
    assert second["deployment_id"] != first["deployment_id"]
    assert railway.deployments[first["deployment_id"]].status == "REMOVED"
    assert railway.deployments[second["deployment_id"]].status == "SUCCESS"
    # The domain is made once and kept; the health check path is set again, unchanged.
    assert railway.operations().count("serviceDomainCreate") == 1
    assert railway.operations().count("serviceInstanceUpdate") == 2
    assert second["domain"] == first["domain"]
    service = railway.service_named("dept-sales")
    assert service is not None
    assert [d.domain for d in service.domains[ENVIRONMENT]] == [first["domain"]]
    assert service.settings[ENVIRONMENT] == {"healthcheckPath": "/healthz"}


async def test_apply_adopts_a_domain_made_before(railway: FakeRailway, container: RailwayContainer) -> None:
    await container.apply(ctx())
    service = railway.service_named("dept-sales")
    assert service is not None
    # Say someone generated a second domain by hand: apply keeps the first, makes none.
    kept = service.domains[ENVIRONMENT][0].domain
    service.domains[ENVIRONMENT].append(FakeDomain("domain-2", "by-hand.up.railway.app"))

    resources = await container.apply(ctx())

    assert resources["domain"] == kept
    assert railway.operations().count("serviceDomainCreate") == 1


async def test_departments_get_their_own_services(railway: FakeRailway, container: RailwayContainer) -> None:
    sales = await container.apply(ctx("sales"))
    legal = await container.apply(ctx("legal"))

    assert sales["service_id"] != legal["service_id"]
    assert sales["domain"] != legal["domain"]
    assert {s.name for s in railway.services.values()} == {"dept-sales", "dept-legal"}
    await container.compensate(ctx("sales"))
    assert {s.name for s in railway.services.values()} == {"dept-legal"}


async def test_secrets_stay_out_of_resources_conditions_and_logs(
    railway: FakeRailway, container: RailwayContainer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    resources = await container.apply(ctx())
    condition = await container.check(ctx())
    await container.compensate(ctx())

    secrets = (DB_PASSWORD, DB_URL, TOKEN)
    assert not any(secret in value for value in resources.values() for secret in secrets)
    assert not any(secret in f"{condition.reason} {condition.message}" for secret in secrets)
    assert caplog.records, "the step logs what it made"
    for record in caplog.records:
        text = f"{record.getMessage()} {getattr(record, 'fields', '')} {record.args}"
        assert not any(secret in text for secret in secrets), record


async def test_a_graphql_error_that_echoes_a_variable_does_not_leak_it(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    railway.inject(
        Fault(
            graphql_error=f'Variable "$input" got invalid value "{DB_URL}"',
            operation="variableCollectionUpsert",
        )
    )

    with pytest.raises(StepError) as raised:
        await container.apply(ctx())

    assert DB_PASSWORD not in str(raised.value)
    assert "***" in str(raised.value)


async def test_a_project_token_goes_in_its_own_header() -> None:
    with FakeRailway(TOKEN, PROJECT, ENVIRONMENT, project_token=True) as fake:
        step = make_container(fake.url, auth="project")
        try:
            await step.apply(ctx())
        finally:
            await step.close()
        assert all(c.headers.get("project-access-token") == TOKEN for c in fake.calls)
        assert not any("authorization" in c.headers for c in fake.calls)


async def test_compensate_deletes_the_service_and_is_idempotent(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    await container.apply(ctx())

    await container.compensate(ctx())
    assert railway.services == {}  # with its domains, which the fake keeps on the service
    assert railway.deployments == {}
    await container.compensate(ctx())

    assert railway.operations().count("serviceDelete") == 1
    assert "serviceDomainDelete" not in railway.operations()


async def test_compensate_removes_a_service_whose_deployment_failed(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    railway.deploy_outcome = "FAILED"
    with pytest.raises(StepError):
        await container.apply(ctx())
    assert railway.service_named("dept-sales") is not None

    await container.compensate(ctx())

    assert railway.services == {}


async def test_compensate_with_nothing_made_deletes_nothing(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    await container.compensate(ctx())

    assert railway.operations() == ["project"]


async def test_check_reports_a_successful_deployment_as_running(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    resources = await container.apply(ctx())

    condition = await container.check(ctx())

    assert condition.step is StepName.CONTAINER
    assert condition.healthy
    assert condition.reason == "RUNNING"
    assert resources["deployment_id"] in condition.message
    assert f"at {resources['domain']}" in condition.message


async def test_check_says_when_a_running_service_has_no_domain(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    await container.apply(ctx())
    service = railway.service_named("dept-sales")
    assert service is not None
    service.domains.clear()  # removed in the dashboard

    condition = await container.check(ctx())

    assert condition.healthy
    assert "no public domain" in condition.message


async def test_check_reads_domains_only_for_a_running_deployment(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    railway.deploy_outcome = "FAILED"
    with pytest.raises(StepError):
        await container.apply(ctx())
    before = railway.operations().count("domains")

    condition = await container.check(ctx())

    assert condition.reason == "FAILED"
    assert railway.operations().count("domains") == before


async def test_check_reports_a_missing_service_as_not_deployed(container: RailwayContainer) -> None:
    condition = await container.check(ctx())

    assert not condition.healthy
    assert condition.reason == "NOT_DEPLOYED"


@pytest.mark.parametrize("outcome", ["FAILED", "CRASHED"])
async def test_a_failed_deployment_fails_apply_and_shows_in_check(
    railway: FakeRailway, container: RailwayContainer, outcome: str
) -> None:
    railway.deploy_outcome = outcome

    with pytest.raises(StepError) as raised:
        await container.apply(ctx())

    assert not isinstance(raised.value, TransientStepError)
    assert outcome in str(raised.value)
    condition = await container.check(ctx())
    assert not condition.healthy
    assert condition.reason == outcome


async def test_a_deployment_that_never_finishes_times_out_retryably(railway: FakeRailway) -> None:
    railway.deploy_outcome = None
    step = make_container(railway.url, deploy_timeout=0.2)
    try:
        with pytest.raises(TransientStepError) as raised:
            await step.apply(ctx())
        assert "DEPLOYING" in str(raised.value)
        condition = await step.check(ctx())
    finally:
        await step.close()
    assert not condition.healthy
    assert condition.reason == "DEPLOYING"


async def test_a_blip_while_watching_the_deployment_is_ridden_out(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    railway.inject(Fault(status=502, operation="deployment", times=2))

    resources = await container.apply(ctx())

    assert railway.deployments[resources["deployment_id"]].status == "SUCCESS"


FAULTS = [
    pytest.param(Fault(status=401), StepError, "Railway rejected the token", None, id="http-401"),
    pytest.param(Fault(status=403), StepError, "Railway rejected the token", None, id="http-403"),
    pytest.param(Fault(status=429, retry_after="7"), TransientStepError, "rate limit", 7.0, id="http-429"),
    pytest.param(Fault(status=500), TransientStepError, "HTTP 500", None, id="http-500"),
    pytest.param(Fault(status=503, retry_after="3"), TransientStepError, "HTTP 503", 3.0, id="http-503"),
    pytest.param(
        Fault(graphql_error="Not Authorized"),
        StepError,
        "Railway rejected the token",
        None,
        id="graphql-auth",
    ),
    pytest.param(
        Fault(graphql_error="Rate limit exceeded", retry_after="11"),
        TransientStepError,
        "rate limit",
        11.0,
        id="graphql-rate-limit",
    ),
    pytest.param(
        Fault(graphql_error="Problem processing\nrequest", operation="serviceCreate"),
        StepError,
        "Railway serviceCreate: Problem processing request",
        None,
        id="graphql-other",
    ),
]


@pytest.mark.parametrize(("fault", "kind", "text", "retry_after"), FAULTS)
async def test_api_failures_map_to_step_errors(
    railway: FakeRailway,
    container: RailwayContainer,
    fault: Fault,
    kind: type[StepError],
    text: str,
    retry_after: float | None,
) -> None:
    railway.inject(fault)

    with pytest.raises(StepError) as raised:
        await container.apply(ctx())

    assert type(raised.value) is kind
    assert text in raised.value.message
    assert "\n" not in raised.value.message
    assert TOKEN not in raised.value.message
    assert raised.value.retry_after == retry_after
    if fault.status != 200:
        assert isinstance(raised.value.__cause__, httpx.HTTPStatusError)


NEW_OPERATIONS = ["serviceInstanceUpdate", "domains", "serviceDomainCreate"]


@pytest.mark.parametrize("operation", NEW_OPERATIONS)
@pytest.mark.parametrize(
    ("fault", "kind", "text"),
    [
        pytest.param(Fault(status=429, retry_after="5"), TransientStepError, "rate limit", id="http-429"),
        pytest.param(Fault(status=502), TransientStepError, "HTTP 502", id="http-502"),
        pytest.param(
            Fault(graphql_error="Not Authorized"), StepError, "Railway rejected the token", id="auth"
        ),
        pytest.param(Fault(graphql_error="Problem processing request"), StepError, "Problem", id="other"),
    ],
)
async def test_failures_of_the_health_check_and_domain_operations_fail_apply(
    railway: FakeRailway,
    container: RailwayContainer,
    operation: str,
    fault: Fault,
    kind: type[StepError],
    text: str,
) -> None:
    railway.inject(dataclasses.replace(fault, operation=operation))

    with pytest.raises(StepError) as raised:
        await container.apply(ctx())

    assert type(raised.value) is kind
    assert text in raised.value.message
    assert operation in raised.value.message
    assert TOKEN not in raised.value.message
    # Nothing was deployed past the failure; a retry converges (one domain, set path).
    assert "serviceInstanceDeployV2" not in railway.operations()
    await container.apply(ctx())
    service = railway.service_named("dept-sales")
    assert service is not None
    assert len(service.domains[ENVIRONMENT]) == 1
    assert service.settings[ENVIRONMENT] == {"healthcheckPath": "/healthz"}


async def test_a_domain_the_fake_cannot_list_makes_check_unreachable(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    await container.apply(ctx())
    railway.inject(Fault(status=500, operation="domains"))

    condition = await container.check(ctx())

    assert not condition.healthy
    assert condition.reason == "UNREACHABLE"
    assert "domains" in condition.message


async def test_the_fake_refuses_fields_the_guides_do_not_list(railway: FakeRailway) -> None:
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            railway.url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={
                "query": "mutation serviceDomainCreate($input: ServiceDomainCreateInput!) "
                "{ serviceDomainCreate(input: $input) { id domain } }",
                "variables": {"input": {"serviceId": "x", "environmentId": ENVIRONMENT, "name": "n"}},
            },
        )

    assert reply.status_code == 400
    assert "name" in reply.json()["errors"][0]["message"]


async def test_a_wrong_token_is_rejected_without_being_echoed(railway: FakeRailway) -> None:
    step = make_container(railway.url, token="not-the-token")
    try:
        with pytest.raises(StepError) as raised:
            await step.apply(ctx())
    finally:
        await step.close()

    assert type(raised.value) is StepError
    assert "Railway rejected the token" in raised.value.message
    assert "not-the-token" not in raised.value.message
    assert railway.services == {}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_api_is_retryable() -> None:
    step = make_container(f"http://127.0.0.1:{closed_port()}/graphql/v2")
    try:
        with pytest.raises(TransientStepError) as raised:
            await step.apply(ctx())
        condition = await step.check(ctx())
    finally:
        await step.close()

    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert condition.reason == "UNREACHABLE"


@pytest.mark.parametrize(
    "fault", [Fault(status=500), Fault(status=401), Fault(graphql_error="Not Authorized")]
)
async def test_check_never_raises_on_api_trouble(
    railway: FakeRailway, container: RailwayContainer, fault: Fault
) -> None:
    await container.apply(ctx())
    railway.inject(fault)

    condition = await container.check(ctx())

    assert not condition.healthy
    assert condition.reason == "UNREACHABLE"


async def test_a_bad_department_id_never_reaches_railway(
    railway: FakeRailway, container: RailwayContainer
) -> None:
    bad = ctx("Robert'); drop")

    with pytest.raises(StepError):
        await container.apply(bad)
    condition = await container.check(bad)

    assert condition.reason == "UNREACHABLE"
    assert railway.calls == []


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (("", PROJECT, ENVIRONMENT, IMAGE), "PROVISIONER_RAILWAY_TOKEN"),
        ((TOKEN, "", ENVIRONMENT, IMAGE), "PROVISIONER_RAILWAY_PROJECT_ID"),
        ((TOKEN, PROJECT, " ", IMAGE), "PROVISIONER_RAILWAY_ENVIRONMENT_ID"),
        ((TOKEN, PROJECT, ENVIRONMENT, ""), "PROVISIONER_RAILWAY_IMAGE"),
    ],
)
def test_missing_settings_are_named(args: tuple[str, str, str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        RailwayContainer(*args)
