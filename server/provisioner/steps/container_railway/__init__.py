"""The Railway adapter of the `container` step (`PROVISIONER_RAILWAY_*`).

- `adapter`: `RailwayContainer`, the step itself (apply, compensate, check), and the
  department's service name.
- `operations`: the GraphQL documents it sends, in the shapes of Railway's API guides.
- `api`: `RailwayApi`, the HTTP transport and the translation of its failures into step
  errors, retryable or not.

Every document and header follows Railway's API guides and its CLI; `tests/integration/
fake_railway.py` plays them back. What only a real account can confirm:

- A project token (`auth="project"`) is scoped to one environment; whether it may create
  and delete services, which are project-wide, is not documented.
- `project { services }` is read without page arguments, as documented; a project with
  more services than Railway returns in one page could hide a department's service (and
  apply would make a second one).
- A service made from an image deploys at once in every environment of the project,
  before its variables are set; that first deployment may crash and is superseded by
  ours. Services are project-wide: control planes sharing a project must not share
  department ids, and compensation deletes the service in all environments.
- Rate limits reported inside GraphQL `errors` are recognised by their wording ("rate
  limit", "too many requests", "too quickly") or an `extensions.code` of RATE_LIMITED.
- Each service gets the health check path `/healthz` (`serviceInstanceUpdate`,
  manage-services), so SUCCESS means it answered HTTP 200 there (deployments/healthchecks;
  Railway does not probe it afterwards), and one Railway-provided domain
  (`serviceDomainCreate` when `domains` lists none, manage-domains; services get none on
  their own, networking/domains/working-with-domains). Whether an instance update made
  through the API applies to the next deployment at once, rather than being staged as
  the dashboard's changes are, is not documented; apply deploys right after it.
- Compensation sends only `serviceDelete`. manage-services says it deletes "the service
  and all its deployments"; no page says what becomes of its domains, nor asks for
  `serviceDomainDelete` first. The domains belong to the service, so they are taken to
  go with it; a real account should confirm that the host is released.
"""

from provisioner.steps.container_railway.adapter import RailwayContainer, service_name
from provisioner.steps.container_railway.api import DEFAULT_ENDPOINT, AuthKind, RailwayApi

__all__ = ["DEFAULT_ENDPOINT", "AuthKind", "RailwayApi", "RailwayContainer", "service_name"]
