"""The HTTP API as plain methods over a parsed request: routing, authentication, the handlers.

Handlers raise `ServiceError`s; `httpd` turns them into responses. Every read of the
department directory happens per request, so the control plane's changes to credentials
and workflows take effect on the very next call.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from department_service import actions, mail, query, workflows
from department_service.auth import Credentials, TokenVerifier, credentials_state, load_credentials
from department_service.errors import (
    BadRequest,
    InputRejected,
    KeysUnavailable,
    MailBusy,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    WorkflowBroken,
)
from department_service.logs import utc_now
from department_service.store import Execution, SqliteStore, Store

MAX_BODY = 64 * 1024
"""The size limit of a request body, except a file for google_drive (`actions.UPLOAD_BODY_LIMIT`)."""
RUN_WORKFLOWS, READ_EXECUTIONS, READ_FILES = "workflows:run", "executions:read", "files:read"
"""The scopes the routes need (GET /workflows is read with the executions)."""
MAX_SENDS = 4
"""Messages the email workflow may be handing to the relay at once; more are refused (429)."""


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
    """A JSON response, or with `raw` set, those bytes as they are (a stored file's);
    `execution_id` is for the log line."""

    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)
    execution_id: str | None = None
    raw: bytes | None = None


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
        verifier: TokenVerifier | None = None,
        relay: mail.Relay | None = None,
        max_sends: int = MAX_SENDS,
        new_id: Callable[[], str] = lambda: secrets.token_hex(16),
        clock: Callable[[], str] = utc_now,
    ) -> None:
        """Serve `directory` (credentials.json, workflows/, data.db), or with `directory`
        None, a department configured by its environment: fixed `credentials`, a `store`
        and no workflows of its own (they run on the workflow platform). `verifier` checks
        callers' access tokens (without one, every route but /healthz answers 503).
        `relay` is where the email workflow sends, `max_sends` messages at a time; without
        it, messages are kept unsent."""
        if directory is None and (store is None or credentials is None):
            raise ValueError("a department without a directory needs its store and its credentials")
        self.department_id = department_id
        self.directory = directory
        #: The department's own `data.db` unless another store (PostgreSQL) is given.
        self.store: Store = store or SqliteStore(_within(directory, "data.db"))
        self._credentials = credentials
        self._verifier = verifier
        self._relay = relay
        self._max_sends = max_sends
        self._sending = threading.BoundedSemaphore(max_sends)
        self.draining = False  # set at shutdown: /healthz then answers NOT_SERVING
        self._new_id = new_id
        self._clock = clock

    def body_limit(self, path: str) -> int:
        """How many bytes of body a request to `path` may send: files go to workflow webhooks."""
        return actions.UPLOAD_BODY_LIMIT if path.startswith("/workflows/") else MAX_BODY

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
        if path == "/files":
            return {"GET": self._files}
        file_id = path.removeprefix("/files/")
        if file_id != path and file_id and "/" not in file_id:
            return {"GET": lambda request: self._file(request, file_id)}
        name = path.removeprefix("/workflows/")
        if name != path and name and "/" not in name:
            return {"POST": lambda request: self._run(request, name)}
        raise NotFound("no such path")

    def _authenticate(self, request: Request, scope: str) -> None:
        if self._verifier is None:
            raise KeysUnavailable("this service has no token issuer configured (OAUTH_ISSUER)")
        credentials = self._credentials or load_credentials(self._credentials_file)
        self._verifier.verify(request.authorization, credentials, scope)

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
        self._authenticate(request, READ_EXECUTIONS)
        listed = [workflow.describe() for workflow in self._workflows().values()]
        return Response(200, {"department_id": self.department_id, "workflows": listed})

    def _executions(self, request: Request) -> Response:
        self._authenticate(request, READ_EXECUTIONS)
        params = query.params(request.query)
        workflow = params.get("workflow", [None])[-1] or None
        executions = self.store.recent(workflow, query.limit(params))
        return Response(200, {"department_id": self.department_id, "executions": executions})

    def _files(self, request: Request) -> Response:
        self._authenticate(request, READ_FILES)
        params = query.params(request.query)
        files = self.store.files(params.get("folder", [None])[-1] or None, query.limit(params))
        return Response(200, {"department_id": self.department_id, "files": files})

    def _file(self, request: Request, file_id: str) -> Response:
        self._authenticate(request, READ_FILES)
        stored = self.store.file(file_id)
        if stored is None:
            raise NotFound(f"no file {file_id!r}")
        headers = {
            "Content-Type": stored.content_type,
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(stored.name, safe='')}",
            "ETag": f'"{stored.sha256}"',
            "Content-Security-Policy": "sandbox",  # never run as a page, whatever it holds
        }
        return Response(200, {}, headers, raw=stored.content)

    def _run(self, request: Request, name: str) -> Response:
        received_at = self._clock()
        self._authenticate(request, RUN_WORKFLOWS)
        workflow = (
            None
            if self.directory is None
            else workflows.find(self.directory / "workflows", name, self.department_id)
        )
        if workflow is None:
            raise NotFound(f"workflow {name!r} is not deployed")
        if workflow.action is None:
            raise WorkflowBroken(f"workflow {name!r} is broken: {workflow.problem}")
        if len(request.body) > MAX_BODY and not isinstance(workflow.action, workflows.DriveAction):
            raise PayloadTooLarge(f"the body is over the limit of {MAX_BODY} bytes")
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
        if query.dry_run(request.query):
            # Checked, authenticated and recorded, but no effect: no row, no mail.
            result = {**effect.result, "dry_run": True}
            self.store.record(replace(execution, result=result), None)
            return _answer(200, execution.id, name, "succeeded", result=result)
        if effect.table == "outbox":
            # A slow relay holds each send for up to its timeout: refused before anything
            # is recorded, so the caller's retry is the only copy.
            if not self._sending.acquire(blocking=False):
                raise MailBusy(f"{self._max_sends} messages are being sent already; retry shortly")
            try:
                return self._send(replace(execution, result=effect.result), effect, effect_id)
            finally:
                self._sending.release()
        self.store.record(replace(execution, result=effect.result), effect, effect_id)
        return _answer(200, execution.id, name, "succeeded", result=effect.result)

    def _send(self, execution: Execution, effect: actions.Effect, message_id: str) -> Response:
        """Record the message as pending, hand it to the relay, then record what the relay said.

        A crash between the two writes leaves the message `pending` and its execution
        `sending`: it is never sent twice on its own (see docs/workflows.md).
        """
        self.store.record(replace(execution, status="sending"), effect, message_id)
        if self._relay is None:
            delivery = mail.NOT_CONFIGURED
        else:
            to, subject, body = (str(value) for value in effect.values[:3])
            message = mail.compose(self._relay, message_id, self.department_id, to, subject, body)
            delivery = mail.send(self._relay, message)
        sent = delivery.status == "sent"
        result = {**execution.result, "delivery": {"status": delivery.status, "reply": delivery.reply}}
        settled = replace(execution, status="succeeded" if sent else "failed", result=result)
        self.store.settle_message(message_id, delivery, self._clock(), settled)
        if sent:
            return _answer(200, execution.id, execution.workflow, "succeeded", result=result)
        code, status = ("smtp_not_configured", 503) if delivery.status == "unsent" else ("smtp_failed", 502)
        error = {"code": code, "message": delivery.reply}
        return _answer(status, execution.id, execution.workflow, "failed", error=error, result=result)


def _within(directory: Path | None, name: str) -> Path:
    if directory is None:
        raise ValueError(f"{name} needs a department directory")
    return directory / name


def _answer(status: int, execution_id: str, workflow: str, outcome: str, **extra: object) -> Response:
    body = {"execution_id": execution_id, "workflow": workflow, "status": outcome, **extra}
    return Response(status, body, execution_id=execution_id)
