"""The HTTP API as plain methods over a parsed request: routing, authentication, the handlers.

Handlers raise `ServiceError`s; `httpd` turns them into responses. Every read of the
department directory happens per request, so the control plane's changes to credentials
and workflows take effect on the very next call.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs

from department_service import actions, workflows
from department_service.auth import Credentials, authenticate, credentials_state, load_credentials
from department_service.errors import BadRequest, InputRejected, MethodNotAllowed, NotFound, WorkflowBroken
from department_service.logs import utc_now
from department_service.store import Execution, SqliteStore, Store

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


@dataclass(frozen=True)
class Request:
    """What the handlers need of an HTTP request (the body is already read and size-checked)."""

    method: str
    path: str
    query: str = ""
    authorization: str | None = None
    body: bytes = b""


@dataclass
class Response:
    """A JSON response; `execution_id` is for the log line."""

    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)
    execution_id: str | None = None


Handler = Callable[[Request], Response]


def parse_object(body: bytes) -> dict[str, object]:
    """The request body as a JSON object; an empty body is `{}`. BadRequest otherwise."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python accepts them, JSON does not


class Department:
    """One department's API over its directory: `handle` answers a request or raises ServiceError."""

    def __init__(
        self,
        department_id: str,
        directory: Path | None,
        *,
        store: Store | None = None,
        credentials: Credentials | None = None,
        new_id: Callable[[], str] = lambda: secrets.token_hex(16),
        clock: Callable[[], str] = utc_now,
    ) -> None:
        """Serve `directory` (credentials.json, workflows/, data.db), or with `directory`
        None, a department configured by its environment: fixed `credentials`, a `store`
        and no workflows of its own (they run on the workflow platform)."""
        if directory is None and (store is None or credentials is None):
            raise ValueError("a department without a directory needs its store and its credentials")
        self.department_id = department_id
        self.directory = directory
        #: The department's own `data.db` unless another store (PostgreSQL) is given.
        self.store: Store = store or SqliteStore(_within(directory, "data.db"))
        self._credentials = credentials
        self.draining = False  # set at shutdown: /healthz then answers NOT_SERVING
        self._new_id = new_id
        self._clock = clock

    def handle(self, request: Request) -> Response:
        """Route the request to its handler (HEAD is answered as GET, without the body)."""
        routes = self._routes(request.path)
        handler = routes.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allow = (*routes, "HEAD") if "GET" in routes else tuple(routes)
            raise MethodNotAllowed(request.method, allow)
        return handler(request)

    def _routes(self, path: str) -> dict[str, Handler]:
        if path == "/healthz":
            return {"GET": self._healthz}
        if path == "/workflows":
            return {"GET": self._list_workflows}
        if path == "/executions":
            return {"GET": self._executions}
        name = path.removeprefix("/workflows/")
        if name != path and name and "/" not in name:
            return {"POST": lambda request: self._run(request, name)}
        raise NotFound("no such path")

    def _authenticate(self, request: Request) -> None:
        authenticate(request.authorization, self._credentials or load_credentials(self._credentials_file))

    @property
    def _credentials_file(self) -> Path:
        return _within(self.directory, "credentials.json")

    def _credentials_state(self) -> str:
        if self._credentials is not None:
            return "revoked" if self._credentials.revoked else "ok"
        return credentials_state(self._credentials_file)

    def _workflows(self) -> dict[str, workflows.Workflow]:
        if self.directory is None:
            return {}
        return workflows.load_all(self.directory / "workflows", self.department_id)

    def _healthz(self, request: Request) -> Response:
        database = self.store.check()
        reason = "shutting down" if self.draining else database
        body: dict[str, object] = {
            "status": "NOT_SERVING" if reason else "SERVING",
            "department_id": self.department_id,
            "database": database or "ok",
            "credentials": self._credentials_state(),
            "workflows": {name: workflow.state for name, workflow in self._workflows().items()},
        }
        if reason:
            body["reason"] = reason
        return Response(503 if reason else 200, body)

    def _list_workflows(self, request: Request) -> Response:
        self._authenticate(request)
        listed = [workflow.describe() for workflow in self._workflows().values()]
        return Response(200, {"department_id": self.department_id, "workflows": listed})

    def _executions(self, request: Request) -> Response:
        self._authenticate(request)
        try:
            params = parse_qs(request.query, max_num_fields=20)
        except ValueError as exc:
            raise BadRequest(f"bad query string: {exc}") from exc
        workflow = params.get("workflow", [None])[-1] or None
        raw_limit = params.get("limit", [str(DEFAULT_LIMIT)])[-1]
        if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT):
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        executions = self.store.recent(workflow, int(raw_limit))
        return Response(200, {"department_id": self.department_id, "executions": executions})

    def _run(self, request: Request, name: str) -> Response:
        received_at = self._clock()
        self._authenticate(request)
        workflow = (
            None
            if self.directory is None
            else workflows.find(self.directory / "workflows", name, self.department_id)
        )
        if workflow is None:
            raise NotFound(f"workflow {name!r} is not deployed")
        if workflow.action is None:
            raise WorkflowBroken(f"workflow {name!r} is broken: {workflow.problem}")
        payload = parse_object(request.body)
        execution = Execution(self._new_id(), name, received_at, "succeeded", actions.to_json(payload), {})
        effect_id = self._new_id()
        try:
            effect = actions.plan(workflow.action, payload, effect_id)
        except InputRejected as exc:
            # Still recorded: the department can see what was sent and why it was refused.
            error = {"code": exc.code, "message": exc.message}
            self.store.record(replace(execution, status="rejected", result={"error": error}), None)
            return _answer(422, execution.id, name, "rejected", error=error)
        self.store.record(replace(execution, result=effect.result), effect, effect_id)
        return _answer(200, execution.id, name, "succeeded", result=effect.result)


def _within(directory: Path | None, name: str) -> Path:
    if directory is None:
        raise ValueError(f"{name} needs a department directory")
    return directory / name


def _answer(status: int, execution_id: str, workflow: str, outcome: str, **extra: object) -> Response:
    body = {"execution_id": execution_id, "workflow": workflow, "status": outcome, **extra}
    return Response(status, body, execution_id=execution_id)
