"""A local fake of Railway's public GraphQL API: exactly the operations the container step sends.

It is a real HTTP server (the standard library's, on a thread, port 0), so the adapter's
real HTTP client, headers and JSON go over a socket. It reads each document's operation
type, root field and `name: $variable` arguments (every argument the adapter sends
travels in `variables`), answers in Railway's response shapes, keeps state (services,
their variables, deployments) and can be told to misbehave.

The shapes follow Railway's own documentation and client, as found with the search tool:

- docs.railway.com/integrations/api (railwayapp/docs `content/docs/integrations/api.md`):
  the endpoint `https://backboard.railway.com/graphql/v2`, a POST of `{"query",
  "variables"}`, account/workspace tokens in `Authorization: Bearer <token>`, project
  tokens in `Project-Access-Token: <token>`, and the rate limit headers (`Retry-After`
  once the window is used up).
- .../api/manage-projects: `project(id) { services { edges { node { id name } } } }`.
- .../api/manage-services: `serviceCreate(input: {projectId, name, source: {image}})
  { id name }`, `serviceInstanceDeployV2(serviceId, environmentId)` ("returns the
  deployment ID"), `serviceDelete(id)` ("deletes the service and all its deployments"),
  `serviceInstanceUpdate(serviceId, environmentId, input: {healthcheckPath, ...})`
  returning a Boolean.
- .../api/manage-domains: `domains(projectId, environmentId, serviceId) { serviceDomains
  { id domain suffix targetPort } customDomains {...} }` and `serviceDomainCreate(input:
  {serviceId, environmentId, targetPort?}) { id domain }`. A service has no domain until
  one is made (docs.railway.com/networking/domains/working-with-domains). The docs do not
  say what deleting a service does to its domains; here they go with it.
- .../api/manage-variables: `variableCollectionUpsert(input: {projectId, environmentId,
  serviceId, variables, replace?, skipDeploys?})` returning a Boolean; without
  `skipDeploys` a change triggers a redeploy.
- .../api/manage-deployments: `deployment(id) { id status }`, `deployments(input:
  {projectId, serviceId, environmentId}, first) { edges { node { id status createdAt } } }`
  newest first, and the statuses (QUEUED, BUILDING, DEPLOYING, SUCCESS, FAILED, CRASHED,
  REMOVED, SKIPPED, SLEEPING, WAITING).
- docs.railway.com/deployments/reference: a new service is deployed on creation.
- railwayapp/cli `src/client.rs`: HTTP 429 means rate limited; a first error whose
  message contains "not authorized" means the token was refused (here: a wrong or
  missing token gets HTTP 200 with `{"data": null, "errors": [{"message": "Not
  Authorized"}]}`).
- railwayapp/docs pull request #1320 (the API's error convention): execution and
  authorization failures are HTTP 200 with an `errors` array, documents that do not parse
  or validate are HTTP 400, errors carry `extensions.code` and a `traceId`.

What only a real account can confirm is listed in `provisioner.steps.container_railway`.

With a `runtime`, deployments really run: the runtime gives each service its public
domain and starts the service's image with its variables when a deployment finishes,
which then succeeds only if the health check path answers 200, as on Railway.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

#: What a deployment goes through before its outcome; each read moves it one step on.
PROGRESS = ("QUEUED", "BUILDING", "DEPLOYING")
_HEADER = re.compile(r"^\s*(query|mutation)\b([^{]*)\{\s*(\w+)\s*(?:\(([^)]*)\))?", re.S)
_ARGUMENT = re.compile(r"(\w+)\s*:\s*\$(\w+)")


class GraphQLFailure(Exception):
    """An error the fake answers with, in GraphQL's shape."""

    def __init__(self, message: str, code: str = "INTERNAL_SERVER_ERROR", status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass
class Fault:
    """A misbehaviour for the next `times` requests (to `operation`, a root field, if given).

    `status` other than 200 answers with that HTTP status; `graphql_error` answers HTTP
    200 with that message in `errors`; `retry_after` adds a `Retry-After` header.
    """

    status: int = 200
    graphql_error: str | None = None
    retry_after: str | None = None
    operation: str | None = None
    times: int = 1


@dataclass(frozen=True)
class Call:
    """One request the fake answered (or refused), for the tests to inspect."""

    operation: str
    variables: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeDeployment:
    id: str
    service_id: str
    environment_id: str
    outcome: str | None
    step: int = 0
    status: str = PROGRESS[0]
    created: int = 0


#: The fields of `ServiceInstanceUpdateInput` and `ServiceDomainCreateInput` in the guides.
INSTANCE_SETTINGS = frozenset(
    {
        "buildCommand",
        "cronSchedule",
        "dockerfilePath",
        "healthcheckPath",
        "healthcheckTimeout",
        "numReplicas",
        "region",
        "restartPolicyMaxRetries",
        "restartPolicyType",
        "rootDirectory",
        "sleepApplication",
        "startCommand",
        "watchPatterns",
    }
)
DOMAIN_SETTINGS = frozenset({"serviceId", "environmentId", "targetPort"})
DOMAIN_SUFFIX = "up.railway.app"


class Runtime(Protocol):
    """What runs the services' images, for a fake whose deployments are real."""

    def domain(self, service: str) -> str:
        """The public domain of a new domain for `service`."""

    def run(self, service: str, variables: dict[str, str], healthcheck_path: str | None) -> bool:
        """(Re)start `service` with `variables`; whether its health check answered 200."""

    def remove(self, service: str) -> None:
        """Stop `service` and release its domain."""


@dataclass(frozen=True)
class FakeDomain:
    id: str
    domain: str


@dataclass
class FakeService:
    id: str
    name: str
    image: str
    variables: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Per environment: the instance settings set with serviceInstanceUpdate.
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per environment: the Railway-provided domains.
    domains: dict[str, list[FakeDomain]] = field(default_factory=dict)


class FakeRailway:
    """The fake API for one project; use as a context manager, then point the adapter at `url`.

    `deploy_outcome` is the final status of deployments created from now on (None: they
    never finish). `polls_to_finish` is how many reads a deployment takes to get there.
    """

    def __init__(
        self,
        token: str,
        project_id: str,
        environment_id: str,
        *,
        project_token: bool = False,
        runtime: Runtime | None = None,
    ) -> None:
        self.token = token
        self.runtime = runtime
        self.project_token = project_token
        self.project_id = project_id
        self.environment_id = environment_id
        self.deploy_outcome: str | None = "SUCCESS"
        self.services: dict[str, FakeService] = {}
        self.deployments: dict[str, FakeDeployment] = {}
        self.calls: list[Call] = []
        self._faults: list[Fault] = []
        self._clock = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for the serving loop to notice it.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-railway",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/graphql/v2"

    def __enter__(self) -> FakeRailway:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # What the tests set and read.

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def operations(self) -> list[str]:
        with self._lock:
            return [call.operation for call in self.calls]

    def service_named(self, name: str) -> FakeService | None:
        with self._lock:
            return next((s for s in self.services.values() if s.name == name), None)

    # The server.

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, headers, body = fake._answer(dict(self.headers.items()), self.rfile.read(length))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test output stays quiet

        return Handler

    def _answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            request = json.loads(raw)
            document, variables = request["query"], request.get("variables") or {}
            kind, declared, root, arguments = self._parse(document)
        except (ValueError, KeyError, TypeError, GraphQLFailure) as exc:
            message = (
                exc.message if isinstance(exc, GraphQLFailure) else "Syntax Error: cannot parse the request"
            )
            return 400, {}, _errors(message, "GRAPHQL_PARSE_FAILED")
        with self._lock:
            self.calls.append(Call(root, variables, {k.lower(): v for k, v in headers.items()}))
            fault = self._take_fault(root)
            if fault is not None:
                return _faulty(fault)
            if not self._authorized(headers):
                return 200, {}, _errors("Not Authorized", "UNAUTHENTICATED")
            try:
                missing = [name for name in arguments.values() if name not in declared]
                if missing:
                    raise GraphQLFailure(
                        f'Variable "${missing[0]}" is not defined.', "GRAPHQL_VALIDATION_FAILED", 400
                    )
                values = {arg: variables.get(var) for arg, var in arguments.items()}
                data = self._resolve(kind, root, values)
            except GraphQLFailure as exc:
                return exc.status, {}, _errors(exc.message, exc.code)
        return 200, {}, {"data": {root: data}}

    @staticmethod
    def _parse(document: str) -> tuple[str, set[str], str, dict[str, str]]:
        found = _HEADER.match(document)
        if found is None:
            raise GraphQLFailure("Syntax Error: expected a query or a mutation", "GRAPHQL_PARSE_FAILED", 400)
        kind, header, root, arguments = found.groups()
        declared = set(re.findall(r"\$(\w+)\s*:", header))
        return kind, declared, root, dict(_ARGUMENT.findall(arguments or ""))

    def _take_fault(self, root: str) -> Fault | None:
        for fault in self._faults:
            if fault.operation in (None, root):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _authorized(self, headers: dict[str, str]) -> bool:
        lowered = {k.lower(): v for k, v in headers.items()}
        if self.project_token:
            return lowered.get("project-access-token") == self.token
        return lowered.get("authorization") == f"Bearer {self.token}"

    # The operations.

    def _resolve(self, kind: str, root: str, args: dict[str, Any]) -> Any:
        resolvers = {
            ("query", "project"): self._project,
            ("mutation", "serviceCreate"): self._service_create,
            ("mutation", "variableCollectionUpsert"): self._variables_upsert,
            ("mutation", "serviceInstanceDeployV2"): self._deploy,
            ("query", "deployment"): self._deployment,
            ("query", "deployments"): self._deployments,
            ("mutation", "serviceDelete"): self._service_delete,
            ("mutation", "serviceInstanceUpdate"): self._instance_update,
            ("query", "domains"): self._domains,
            ("mutation", "serviceDomainCreate"): self._service_domain_create,
        }
        resolver = resolvers.get((kind, root))
        if resolver is None:
            on = "Query" if kind == "query" else "Mutation"
            raise GraphQLFailure(
                f'Cannot query field "{root}" on type "{on}".', "GRAPHQL_VALIDATION_FAILED", 400
            )
        return resolver(args)

    def _project(self, args: dict[str, Any]) -> Any:
        self._require_project(_required(args, "id"))
        edges = [{"node": {"id": s.id, "name": s.name}} for s in self.services.values()]
        return {"services": {"edges": edges}}

    def _service_create(self, args: dict[str, Any]) -> Any:
        spec = _required(args, "input")
        self._require_project(_required(spec, "projectId"))
        image = _required(_required(spec, "source"), "image")
        service = FakeService(id=str(uuid.uuid4()), name=spec.get("name") or "unnamed", image=image)
        self.services[service.id] = service
        # Railway deploys a new service at once, before anyone sets its variables.
        self._new_deployment(service.id, self.environment_id)
        return {"id": service.id, "name": service.name}

    def _variables_upsert(self, args: dict[str, Any]) -> Any:
        spec = _required(args, "input")
        self._require_project(_required(spec, "projectId"))
        environment_id = self._require_environment(_required(spec, "environmentId"))
        service = self._require_service(_required(spec, "serviceId"))
        values = _required(spec, "variables")
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise GraphQLFailure("variables must map names to strings", "BAD_USER_INPUT")
        current = {} if spec.get("replace") else service.variables.get(environment_id, {})
        service.variables[environment_id] = {**current, **values}
        if not spec.get("skipDeploys"):
            self._new_deployment(service.id, environment_id)
        return True

    def _deploy(self, args: dict[str, Any]) -> Any:
        service = self._require_service(_required(args, "serviceId"))
        environment_id = self._require_environment(_required(args, "environmentId"))
        return self._new_deployment(service.id, environment_id).id

    def _deployment(self, args: dict[str, Any]) -> Any:
        deployment = self.deployments.get(_required(args, "id"))
        if deployment is None:
            raise GraphQLFailure("Deployment not found", "NOT_FOUND")
        self._advance(deployment)
        return {"id": deployment.id, "status": deployment.status}

    def _deployments(self, args: dict[str, Any]) -> Any:
        spec = _required(args, "input")
        self._require_project(_required(spec, "projectId"))
        found = [
            d
            for d in self.deployments.values()
            if d.service_id == spec.get("serviceId", d.service_id)
            and d.environment_id == spec.get("environmentId", d.environment_id)
        ]
        found.sort(key=lambda d: d.created, reverse=True)
        first = args.get("first")
        if isinstance(first, int):
            found = found[:first]
        edges = [{"node": {"id": d.id, "status": d.status, "createdAt": f"t{d.created}"}} for d in found]
        return {"edges": edges}

    def _service_delete(self, args: dict[str, Any]) -> Any:
        service = self._require_service(_required(args, "id"))
        del self.services[service.id]
        if self.runtime is not None:
            self.runtime.remove(service.name)
        for deployment_id in [d.id for d in self.deployments.values() if d.service_id == service.id]:
            del self.deployments[deployment_id]
        return True

    def _instance_update(self, args: dict[str, Any]) -> Any:
        service = self._require_service(_required(args, "serviceId"))
        environment_id = self._require_environment(_required(args, "environmentId"))
        spec = _required(args, "input")
        _known_fields(spec, INSTANCE_SETTINGS, "ServiceInstanceUpdateInput")
        service.settings.setdefault(environment_id, {}).update(spec)
        return True

    def _domains(self, args: dict[str, Any]) -> Any:
        self._require_project(_required(args, "projectId"))
        environment_id = self._require_environment(_required(args, "environmentId"))
        service = self._require_service(_required(args, "serviceId"))
        found = [
            {"id": d.id, "domain": d.domain, "suffix": DOMAIN_SUFFIX, "targetPort": None}
            for d in service.domains.get(environment_id, [])
        ]
        return {"serviceDomains": found, "customDomains": []}

    def _service_domain_create(self, args: dict[str, Any]) -> Any:
        spec = _required(args, "input")
        _known_fields(spec, DOMAIN_SETTINGS, "ServiceDomainCreateInput")
        service = self._require_service(_required(spec, "serviceId"))
        environment_id = self._require_environment(_required(spec, "environmentId"))
        name = (
            self.runtime.domain(service.name)
            if self.runtime is not None
            else f"{service.name}-{uuid.uuid4().hex[:6]}.{DOMAIN_SUFFIX}"
        )
        made = FakeDomain(str(uuid.uuid4()), name)
        service.domains.setdefault(environment_id, []).append(made)
        return {"id": made.id, "domain": made.domain}

    # State.

    def _new_deployment(self, service_id: str, environment_id: str) -> FakeDeployment:
        for older in self.deployments.values():
            same = older.service_id == service_id and older.environment_id == environment_id
            if same and older.status in PROGRESS:
                older.status = "REMOVED"  # superseded before it finished
        self._clock += 1
        deployment = FakeDeployment(
            str(uuid.uuid4()), service_id, environment_id, self.deploy_outcome, created=self._clock
        )
        self.deployments[deployment.id] = deployment
        return deployment

    def _advance(self, deployment: FakeDeployment) -> None:
        if deployment.status not in PROGRESS:
            return
        deployment.step += 1
        if deployment.step < len(PROGRESS):
            deployment.status = PROGRESS[deployment.step]
        elif deployment.outcome is not None:
            deployment.status = deployment.outcome
            if deployment.outcome == "SUCCESS" and self.runtime is not None:
                service = self.services[deployment.service_id]
                healthy = self.runtime.run(
                    service.name,
                    service.variables.get(deployment.environment_id, {}),
                    service.settings.get(deployment.environment_id, {}).get("healthcheckPath"),
                )
                deployment.status = "SUCCESS" if healthy else "FAILED"
            if deployment.status == "SUCCESS":
                for other in self.deployments.values():
                    same = other.service_id == deployment.service_id and other is not deployment
                    if (
                        same
                        and other.environment_id == deployment.environment_id
                        and other.status == "SUCCESS"
                    ):
                        other.status = "REMOVED"  # the new one took over

    def _require_project(self, project_id: str) -> None:
        if project_id != self.project_id:
            raise GraphQLFailure("Project not found", "NOT_FOUND")

    def _require_environment(self, environment_id: str) -> str:
        if environment_id != self.environment_id:
            raise GraphQLFailure("Environment not found", "NOT_FOUND")
        return environment_id

    def _require_service(self, service_id: str) -> FakeService:
        service = self.services.get(service_id)
        if service is None:
            raise GraphQLFailure("Service not found", "NOT_FOUND")
        return service


def _required(values: Any, name: str) -> Any:
    if not isinstance(values, dict) or values.get(name) is None:
        raise GraphQLFailure(f'Field "{name}" of required type was not provided.', "BAD_USER_INPUT")
    return values[name]


def _known_fields(values: Any, known: frozenset[str], type_name: str) -> None:
    if not isinstance(values, dict):
        raise GraphQLFailure(f'Expected an object of type "{type_name}".', "BAD_USER_INPUT")
    unknown = sorted(set(values) - known)
    if unknown:
        raise GraphQLFailure(
            f'Field "{unknown[0]}" is not defined by type "{type_name}".', "GRAPHQL_VALIDATION_FAILED", 400
        )


def _errors(message: str, code: str) -> dict[str, Any]:
    return {
        "data": None,
        "errors": [{"message": message, "extensions": {"code": code, "traceId": uuid.uuid4().hex}}],
    }


def _faulty(fault: Fault) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    if fault.status != 200:
        return fault.status, headers, {"errors": [{"message": f"HTTP {fault.status}"}]}
    return 200, headers, _errors(fault.graphql_error or "Problem processing request", "INTERNAL_SERVER_ERROR")
