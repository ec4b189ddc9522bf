"""The GraphQL operations the Railway container step sends, in Railway's documented shapes.

Each document is the one shown in Railway's API guides (docs.railway.com/integrations/api/):
`manage-projects` (a project's services), `manage-services` (serviceCreate from a Docker
image, serviceInstanceUpdate, serviceInstanceDeployV2, serviceDelete), `manage-domains`
(domains, serviceDomainCreate), `manage-variables` (variableCollectionUpsert) and
`manage-deployments` (deployment, deployments, statuses). Every argument travels in
`variables`, never spliced into a document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provisioner.core.errors import StepError
from provisioner.steps.container_railway.api import RailwayApi

PROJECT_SERVICES = """query projectServices($id: String!) {
  project(id: $id) {
    services {
      edges {
        node {
          id
          name
        }
      }
    }
  }
}"""

SERVICE_CREATE = """mutation serviceCreate($input: ServiceCreateInput!) {
  serviceCreate(input: $input) {
    id
    name
  }
}"""

SERVICE_INSTANCE_UPDATE = """mutation serviceInstanceUpdate(
  $serviceId: String!
  $environmentId: String!
  $input: ServiceInstanceUpdateInput!
) {
  serviceInstanceUpdate(serviceId: $serviceId, environmentId: $environmentId, input: $input)
}"""

DOMAINS = """query domains($projectId: String!, $environmentId: String!, $serviceId: String!) {
  domains(projectId: $projectId, environmentId: $environmentId, serviceId: $serviceId) {
    serviceDomains {
      id
      domain
    }
  }
}"""

SERVICE_DOMAIN_CREATE = """mutation serviceDomainCreate($input: ServiceDomainCreateInput!) {
  serviceDomainCreate(input: $input) {
    id
    domain
  }
}"""

VARIABLE_COLLECTION_UPSERT = """mutation variableCollectionUpsert($input: VariableCollectionUpsertInput!) {
  variableCollectionUpsert(input: $input)
}"""

SERVICE_INSTANCE_DEPLOY = """mutation serviceInstanceDeployV2($serviceId: String!, $environmentId: String!) {
  serviceInstanceDeployV2(serviceId: $serviceId, environmentId: $environmentId)
}"""

DEPLOYMENT = """query deployment($id: String!) {
  deployment(id: $id) {
    id
    status
  }
}"""

LATEST_DEPLOYMENTS = """query deployments($input: DeploymentListInput!, $first: Int) {
  deployments(input: $input, first: $first) {
    edges {
      node {
        id
        status
        createdAt
      }
    }
  }
}"""

SERVICE_DELETE = """mutation serviceDelete($id: String!) {
  serviceDelete(id: $id)
}"""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment of a service, as far as the step cares: its id and status."""

    id: str
    status: str


def _field(data: Any, *path: str) -> Any:
    """`data[path[0]][path[1]]...`, or a step error naming where the shape broke."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            raise StepError(f"Railway answered in an unexpected shape (no {'.'.join(path)})")
        data = data[key]
    return data


def _nodes(connection: Any, what: str) -> list[dict[str, Any]]:
    edges = _field(connection, "edges")
    if not isinstance(edges, list):
        raise StepError(f"Railway answered in an unexpected shape ({what}.edges is not a list)")
    nodes = [edge.get("node") for edge in edges if isinstance(edge, dict)]
    return [node for node in nodes if isinstance(node, dict)]


def _deployment(node: Any) -> Deployment:
    return Deployment(id=str(_field(node, "id")), status=str(_field(node, "status")))


async def services_named(api: RailwayApi, project_id: str, name: str) -> list[str]:
    """The ids of the project's services called `name` (normally none or one)."""
    data = await api.execute(PROJECT_SERVICES, {"id": project_id})
    project = _field(data, "project")
    if project is None:
        raise StepError("Railway does not know the project (check PROVISIONER_RAILWAY_PROJECT_ID)")
    nodes = _nodes(_field(project, "services"), "project.services")
    return [str(node["id"]) for node in nodes if node.get("name") == name and "id" in node]


async def create_service(api: RailwayApi, project_id: str, name: str, image: str) -> str:
    """Create the service `name` from a Docker image; returns its id."""
    data = await api.execute(
        SERVICE_CREATE, {"input": {"projectId": project_id, "name": name, "source": {"image": image}}}
    )
    return str(_field(data, "serviceCreate", "id"))


async def set_healthcheck_path(api: RailwayApi, service_id: str, environment_id: str, path: str) -> None:
    """Make Railway wait for HTTP 200 on `path` before a deployment of the service goes live."""
    await api.execute(
        SERVICE_INSTANCE_UPDATE,
        {"serviceId": service_id, "environmentId": environment_id, "input": {"healthcheckPath": path}},
    )


async def service_domains(
    api: RailwayApi, project_id: str, environment_id: str, service_id: str
) -> list[str]:
    """The Railway-provided domains (hosts, no scheme) of the service in the environment."""
    data = await api.execute(
        DOMAINS, {"projectId": project_id, "environmentId": environment_id, "serviceId": service_id}
    )
    found = _field(data, "domains", "serviceDomains")
    if not isinstance(found, list):
        raise StepError("Railway answered in an unexpected shape (domains.serviceDomains is not a list)")
    return [str(item["domain"]) for item in found if isinstance(item, dict) and item.get("domain")]


async def create_service_domain(api: RailwayApi, service_id: str, environment_id: str) -> str:
    """Generate a Railway-provided domain for the service in the environment; returns its host."""
    data = await api.execute(
        SERVICE_DOMAIN_CREATE, {"input": {"serviceId": service_id, "environmentId": environment_id}}
    )
    domain = _field(data, "serviceDomainCreate", "domain")
    if not isinstance(domain, str) or not domain:
        raise StepError("Railway created a service domain without giving its name")
    return domain


async def upsert_variables(
    api: RailwayApi, project_id: str, environment_id: str, service_id: str, variables: Mapping[str, str]
) -> None:
    """Set the service's variables in the environment, without deploying (we deploy next)."""
    payload = {
        "input": {
            "projectId": project_id,
            "environmentId": environment_id,
            "serviceId": service_id,
            "variables": dict(variables),
            "skipDeploys": True,
        }
    }
    await api.execute(VARIABLE_COLLECTION_UPSERT, payload, secrets=list(variables.values()))


async def deploy(api: RailwayApi, service_id: str, environment_id: str) -> str:
    """Start a deployment of the service in the environment; returns the deployment id."""
    data = await api.execute(
        SERVICE_INSTANCE_DEPLOY, {"serviceId": service_id, "environmentId": environment_id}
    )
    deployment_id = _field(data, "serviceInstanceDeployV2")
    if not isinstance(deployment_id, str) or not deployment_id:
        raise StepError("Railway started a deployment without giving its id")
    return deployment_id


async def deployment(api: RailwayApi, deployment_id: str) -> Deployment:
    """The deployment `deployment_id` as it is now."""
    data = await api.execute(DEPLOYMENT, {"id": deployment_id})
    return _deployment(_field(data, "deployment"))


async def latest_deployment(
    api: RailwayApi, project_id: str, environment_id: str, service_id: str
) -> Deployment | None:
    """The service's most recent deployment in the environment, if it has any."""
    data = await api.execute(
        LATEST_DEPLOYMENTS,
        {
            "input": {"projectId": project_id, "environmentId": environment_id, "serviceId": service_id},
            "first": 1,
        },
    )
    nodes = _nodes(_field(data, "deployments"), "deployments")
    return _deployment(nodes[0]) if nodes else None


async def delete_service(api: RailwayApi, service_id: str) -> None:
    """Delete the service and all its deployments (manage-services).

    Its domains are not deleted one by one: the guide documents no step for them, and
    they belong to the service (see the package's notes on what is unconfirmed).
    """
    await api.execute(SERVICE_DELETE, {"id": service_id})
