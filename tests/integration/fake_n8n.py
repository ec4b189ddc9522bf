"""An in-memory n8n: the slice of its public API the workflows adapter uses, with the rules
of the real one that matter here (read-only fields refused, one active workflow per
webhook path, no deleting an active workflow, credential ids unique and data checked
against the type's fields, never read back).

`FakeN8n.handler` answers `httpx.Request`s, for `httpx.MockTransport` in unit tests;
`serving` puts the same fake behind a real HTTP server, for a control plane in another
process. It runs no workflow: the real n8n is in tests/integration/test_workflows_n8n.py.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

KEY = "n8n_api_test-key-0123456789"
#: The fields of the credential types the adapter makes (n8n refuses any other field).
CREDENTIAL_FIELDS = {
    "smtp": {"user", "password", "host", "port", "secure", "disableStartTls", "hostName"},
    "googleDriveOAuth2Api": {"serverUrl", "clientId", "clientSecret", "oauthTokenData"},
}


class FakeN8n:
    """The slice of n8n's public API the adapter uses, in memory."""

    def __init__(self, page_size: int = 2) -> None:
        self.workflows: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, str] = {}  # id -> name
        self.credentials: dict[str, dict[str, Any]] = {}  # id -> {name, type, data}
        self.calls: list[str] = []
        self.page_size = page_size
        self.inactive_reads = 0  # reads that still show a just-activated workflow inactive
        self.unpublishing = 0  # deletes refused as if n8n were still unpublishing in the background
        self.executions: list[tuple[str, Any]] = []  # (webhook path, body) of every webhook call run
        self._ids = (f"id{n:04d}" for n in itertools.count(1))

    def add(self, body: dict[str, Any], *, active: bool = False, tags: tuple[str, ...] = ()) -> str:
        workflow_id = next(self._ids)
        version = next(self._ids)
        self.workflows[workflow_id] = {
            **json.loads(json.dumps(body)),
            "id": workflow_id,
            "active": active,
            "isArchived": False,
            "versionId": version,
            "activeVersionId": version if active else None,
            "createdAt": f"2026-01-01T00:00:{len(self.workflows):02d}Z",
            "tags": [{"id": self.tag(name), "name": name} for name in tags],
        }
        return workflow_id

    def tag(self, name: str) -> str:
        found = next((i for i, n in self.tags.items() if n == name), None)
        if found is None:
            found = next(self._ids)
            self.tags[found] = name
        return found

    def of(self, department_id: str) -> list[dict[str, Any]]:
        prefix = f"dept-{department_id}-"
        return [w for w in self.workflows.values() if w["name"].startswith(prefix)]

    def writes(self) -> list[str]:
        return [call for call in self.calls if not call.startswith("GET")]

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/webhook/"):
            return self._webhook(request)
        path = request.url.path.removeprefix("/api/v1")
        self.calls.append(f"{request.method} {path}")
        if request.headers.get("x-n8n-api-key") != KEY:
            return httpx.Response(401, json={"message": "Unauthorized"})
        body: Any = json.loads(request.content) if request.content else None
        match (request.method, path.strip("/").split("/")):
            case ("GET", ["workflows"]):
                return self._page(self._filtered(request.url.params), request.url.params)
            case ("POST", ["workflows"]):
                if set(body) - {"name", "nodes", "connections", "settings"}:
                    return httpx.Response(
                        400, json={"message": "request/body must NOT have additional properties"}
                    )
                return httpx.Response(200, json=self.workflows[self.add(body)])
            case ("GET", ["tags"]):
                items = [{"id": i, "name": n} for i, n in self.tags.items()]
                return self._page(items, request.url.params)
            case ("POST", ["tags"]):
                if body["name"] in self.tags.values():
                    return httpx.Response(409, json={"message": "Tag already exists"})
                return httpx.Response(201, json={"id": self.tag(body["name"]), "name": body["name"]})
            case ("POST", ["credentials"]):
                return self._new_credential(body)
            case ("GET" | "PATCH" | "DELETE", ["credentials", credential_id]):
                return self._credential(request.method, credential_id, body)
            case ("DELETE", ["tags", tag_id]):
                if self.tags.pop(tag_id, None) is None:
                    return httpx.Response(404, json={"message": "Not Found"})
                for workflow in self.workflows.values():
                    workflow["tags"] = [t for t in workflow["tags"] if t["id"] != tag_id]
                return httpx.Response(200, json={"id": tag_id})
        return self._one(request.method, path.strip("/").split("/"), body)

    def _new_credential(self, body: dict[str, Any]) -> httpx.Response:
        fields = CREDENTIAL_FIELDS.get(body.get("type", ""))
        if fields is None or not isinstance(body.get("data"), dict) or set(body["data"]) - fields:
            return httpx.Response(400, json={"message": "request.body.data does not match the type"})
        credential_id = body.get("id") or next(self._ids)
        if credential_id in self.credentials:
            return httpx.Response(409, json={"message": "A credential with this ID already exists"})
        self.credentials[credential_id] = {k: body[k] for k in ("name", "type", "data")}
        return httpx.Response(200, json=self._credential_view(credential_id))

    def _credential(self, method: str, credential_id: str, body: Any) -> httpx.Response:
        found = self.credentials.get(credential_id)
        if found is None:
            return httpx.Response(404, json={"message": "Credential not found"})
        if method == "PATCH":
            if set(body.get("data", {})) - CREDENTIAL_FIELDS[found["type"]]:
                return httpx.Response(400, json={"message": "request.body.data does not match the type"})
            found.update(body)
        view = self._credential_view(credential_id)
        if method == "DELETE":
            del self.credentials[credential_id]
        return httpx.Response(200, json=view)

    def _credential_view(self, credential_id: str) -> dict[str, Any]:
        """What n8n answers about a credential: never its data."""
        found = self.credentials[credential_id]
        return {"id": credential_id, "name": found["name"], "type": found["type"]}

    def _webhook(self, request: httpx.Request) -> httpx.Response:
        """An active workflow's webhook: recorded as an execution, answered with its name.

        (It runs nothing: what a workflow computes is the real n8n's, in its own tests.)"""
        path = request.url.path.removeprefix("/webhook/")
        for workflow in self.workflows.values():
            if workflow["active"] and workflow["nodes"][0]["parameters"]["path"] == path:
                self.executions.append((path, json.loads(request.content or b"null")))
                return httpx.Response(200, json={"workflow": workflow["name"]})
        message = f'The requested webhook "{request.method} {path}" is not registered.'
        return httpx.Response(404, json={"code": 404, "message": message})

    def _one(self, method: str, parts: list[str], body: Any) -> httpx.Response:
        workflow = self.workflows.get(parts[1]) if len(parts) > 1 else None
        if workflow is None:
            return httpx.Response(404, json={"message": "Not Found"})
        match (method, parts[2:]):
            case ("GET", []):
                if self.inactive_reads > 0:
                    self.inactive_reads -= 1
                    return httpx.Response(200, json={**workflow, "active": False, "activeVersionId": None})
            case ("PUT", []):
                workflow.update(json.loads(json.dumps(body)), versionId=next(self._ids))
                if workflow["active"]:
                    workflow["activeVersionId"] = workflow["versionId"]
            case ("PUT", ["tags"]):
                workflow["tags"] = [{"id": t["id"], "name": self.tags[t["id"]]} for t in body]
                return httpx.Response(200, json=workflow["tags"])
            case ("POST", ["activate"]):
                path = workflow["nodes"][0]["parameters"]["path"]
                held = any(
                    w["active"] and w["nodes"][0]["parameters"]["path"] == path
                    for w in self.workflows.values()
                )
                if held and not workflow["active"]:
                    return httpx.Response(
                        409, json={"message": "There is a conflict with one of the webhooks."}
                    )
                workflow.update(active=True, activeVersionId=workflow["versionId"])
                if self.inactive_reads > 0:
                    self.inactive_reads -= 1
                    return httpx.Response(200, json={**workflow, "active": False, "activeVersionId": None})
            case ("POST", ["deactivate"]):
                workflow.update(active=False, activeVersionId=None)
            case ("DELETE", []):
                if self.unpublishing > 0:
                    self.unpublishing -= 1
                    return httpx.Response(409, json={"message": "Workflow is still being unpublished."})
                if workflow["active"]:
                    return httpx.Response(409, json={"message": "Workflow is active; deactivate it first"})
                del self.workflows[workflow["id"]]
            case _:
                return httpx.Response(405, json={"message": "Method Not Allowed"})
        return httpx.Response(200, json=workflow)

    def _filtered(self, params: httpx.QueryParams) -> list[dict[str, Any]]:
        found = list(self.workflows.values())
        if "name" in params:  # n8n matches a substring (SQL LIKE %name%)
            found = [w for w in found if params["name"] in w["name"]]
        if "tags" in params:
            found = [w for w in found if params["tags"] in {t["name"] for t in w["tags"]}]
        return sorted(found, key=lambda w: w["id"])

    def _page(self, items: list[dict[str, Any]], params: httpx.QueryParams) -> httpx.Response:
        start = int(params.get("cursor", "0"))
        end = start + self.page_size
        return httpx.Response(
            200, json={"data": items[start:end], "nextCursor": str(end) if end < len(items) else None}
        )


@contextmanager
def serving(fake: FakeN8n) -> Iterator[str]:
    """Serve `fake` over HTTP on a free loopback port; yields its base URL."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(
                self.command,
                f"http://n8n.test{self.path}",
                headers=dict(self.headers.items()),
                content=self.rfile.read(length),
            )
            with lock:
                response = fake.handler(request)
            self.send_response(response.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
