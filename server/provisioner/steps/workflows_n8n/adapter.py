"""`N8nWorkflows`: the `workflows` step on an n8n instance, through its public REST API.

A department's credentials in n8n (`dept-<id>-smtp`, `dept-<id>-google-drive`) have ids
derived from the department (see `convert.credential`): a re-run, a rollback or a check
on any replica finds them by id, with nothing kept elsewhere. The SMTP one is written
from PROVISIONER_SMTP_URL on every apply when that is set; otherwise, like the Google
Drive one always, it is made empty once and left for an operator to fill in.

A department's workflows are the n8n workflows named `dept-<id>-<kind>` or tagged
`department:<id>`; both mark them as the provisioner's, so a re-run adopts them (a crash
between creating a workflow and tagging it leaves one found by its name) and a rollback
finds every one. Each is active on its webhook, `<n8n>/webhook/<id>/<kind>`.

n8n 2 publishes workflows in the background unless `N8N_USE_WORKFLOW_PUBLICATION_SERVICE`
is false: its API then reports an activation at once while the webhook is registered a
moment later (about 0.15 s on n8n 2.41), an update goes live a moment after it is saved,
and a workflow just deactivated cannot be deleted (409) for a moment. The 409s are waited
out here; the rest cannot be seen through the public API, so with that service on, a
webhook may answer 404 (or its previous version) for a moment after `apply` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from department_service import mail
from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.spec import WORKFLOW_KINDS
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext
from provisioner.steps.workflows_n8n.client import N8nApi, N8nConflict
from provisioner.steps.workflows_n8n.convert import (
    SETTINGS,
    Credential,
    credential,
    department_tag,
    smtp_data,
    to_n8n,
    webhook_path,
    workflow_name,
)

log = logging.getLogger(__name__)

#: How often to look again while n8n (un)publishes a workflow in the background (seconds).
POLL_INTERVAL = 0.2
#: How long a 409 may last while n8n (un)publishes in the background before it stands:
#: a workflow just deactivated cannot be deleted, nor its webhook path taken, for a
#: moment (about 0.2 s on n8n 2.41 with its publication service on).
SETTLE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class RemoteWorkflow:
    """What the provisioner reads of an n8n workflow."""

    id: str
    name: str
    active: bool
    archived: bool
    version_id: str | None
    active_version_id: str | None
    created_at: str
    tags: dict[str, str]  # name -> id
    nodes: Any
    connections: Any
    settings: dict[str, Any]

    @classmethod
    def parse(cls, data: Any, doing: str) -> RemoteWorkflow:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise StepError(f"n8n answered {doing} without a workflow")
        tags = data.get("tags")
        if not isinstance(tags, list):
            tags = []
        settings = data.get("settings")
        return cls(
            id=data["id"],
            name=str(data.get("name", "")),
            active=data.get("active") is True,
            archived=data.get("isArchived") is True,
            version_id=data.get("versionId"),
            # n8n before 2.0 has no published version: an active workflow runs its only one.
            active_version_id=data.get("activeVersionId", data.get("versionId")),
            created_at=str(data.get("createdAt", "")),
            tags={t["name"]: t["id"] for t in tags if isinstance(t, dict) and {"name", "id"} <= t.keys()},
            nodes=data.get("nodes"),
            connections=data.get("connections"),
            settings=settings if isinstance(settings, dict) else {},
        )

    @property
    def live(self) -> bool:
        """Active, and running its latest version (n8n 2 publishes versions)."""
        return self.active and self.active_version_id == self.version_id

    def matches(self, body: dict[str, Any]) -> bool:
        """Whether the workflow already is `body` (n8n adds settings of its own; ours must hold)."""
        return (
            self.name == body["name"]
            and self.nodes == body["nodes"]
            and self.connections == body["connections"]
            and all(self.settings.get(key) == value for key, value in SETTINGS.items())
        )


def _preferred(candidates: Iterable[RemoteWorkflow]) -> RemoteWorkflow | None:
    """The one to adopt among same-named workflows: a running one, else the oldest."""
    usable = [w for w in candidates if not w.archived]
    return min(usable, key=lambda w: (not w.live, not w.active, w.created_at, w.id), default=None)


async def _settling(call: Callable[[], Awaitable[Any]]) -> Any:
    """`call`'s answer, asked again while n8n answers 409, for up to `SETTLE_TIMEOUT`."""
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
    while True:
        try:
            return await call()
        except N8nConflict:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(POLL_INTERVAL)


class N8nWorkflows:
    """The production `workflows` step: each workflow kind of the spec as an active n8n
    workflow, answering `POST <n8n>/webhook/<department_id>/<kind>`, with the
    credentials its node needs (see `convert`).

    `apply` adopts and updates what exists, creates what is missing, removes what the
    spec no longer asks for and activates the rest; `compensate` deactivates and deletes
    every workflow of the department, its tag and its credentials; `check` observes each
    one, never raising. `smtp_url` (PROVISIONER_SMTP_URL, already validated) fills the
    SMTP credentials. `timeout` bounds each request; `activation_timeout` bounds the wait
    for a workflow to read as active after its activation. `transport` replaces the
    network in tests. Call `close` when done.
    """

    name = StepName.WORKFLOWS

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        smtp_url: str = "",
        timeout: float = 10.0,
        activation_timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = N8nApi(base_url, api_key, timeout=timeout, transport=transport)
        self._activation_timeout = activation_timeout
        self._smtp_url = smtp_url

    def __repr__(self) -> str:
        return f"N8nWorkflows({self._api.base_url!r})"

    async def close(self) -> None:
        await self._api.close()

    def webhook_url(self, department_id: str, kind: str) -> str:
        """Where n8n runs the department's workflow of `kind` once it is active."""
        return f"{self._api.base_url}/webhook/{webhook_path(department_id, kind)}"

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        department_id = ctx.department_id
        kinds = sorted(set(ctx.spec.workflows))
        relay = mail.parse_url(self._smtp_url, department_id) if self._smtp_url else None
        # Converted before any call, so a template problem changes nothing in n8n.
        sender = relay.sender if relay else None
        desired = {kind: to_n8n(kind, ctx.spec, sender=sender) for kind in kinds}
        found = await self._find(department_id)
        adopted = {
            kind: _preferred(w for w in found if w.name == workflow_name(department_id, kind))
            for kind in kinds
        }
        keep = {w.id for w in adopted.values() if w is not None}
        # Stale ones go first: a duplicate may hold the webhook path the kept one needs.
        for stale in found:
            if stale.id not in keep:
                await self._remove(stale)
        for kind in kinds:
            needed = credential(department_id, kind)
            if needed is not None:
                managed = smtp_data(relay) if kind == "email" and relay is not None else None
                await self._ensure_credential(needed, managed)
        tag = department_tag(department_id)
        tag_id = next((w.tags[tag] for w in found if tag in w.tags), None) or await self._ensure_tag(tag)
        ids: list[str] = []
        for kind in kinds:
            ids.append(await self._deploy(desired[kind], adopted[kind], tag, tag_id))
        # Only now: until the workflows above were updated, an old one may still use it.
        for kind in sorted(set(WORKFLOW_KINDS) - set(kinds)):
            unused = credential(department_id, kind)
            if unused is not None and await self._read_credential(unused) is not None:
                await self._remove_credential(unused)
        return {
            "workflows": ",".join(kinds),
            "n8n_ids": ",".join(ids),
            "webhooks": ",".join(f"/webhook/{webhook_path(department_id, kind)}" for kind in kinds),
        }

    async def compensate(self, ctx: StepContext) -> None:
        department_id = ctx.department_id
        found = await self._find(department_id)
        for workflow in found:
            await self._remove(workflow)
        tag = department_tag(department_id)
        tag_id = next((w.tags[tag] for w in found if tag in w.tags), None)
        if tag_id is None:
            tags = await self._api.pages("/tags", doing="listing tags")
            tag_id = next((t["id"] for t in tags if t.get("name") == tag), None)
        if tag_id is not None:
            await self._api.call("DELETE", f"/tags/{tag_id}", doing=f"deleting tag {tag}", tolerate=(404,))
        for kind in WORKFLOW_KINDS:
            await self._remove_credential(credential(department_id, kind))

    async def check(self, ctx: StepContext) -> Condition:
        department_id = ctx.department_id
        kinds = sorted(set(ctx.spec.workflows))
        needed = [c for c in (credential(department_id, kind) for kind in kinds) if c is not None]
        try:
            named = await self._find_named(department_id)
            held = [await self._read_credential(c) for c in needed]
        except TransientStepError as exc:
            return Condition(self.name, False, "UNREACHABLE", exc.message)
        except StepError as exc:
            return Condition(self.name, False, "REJECTED", exc.message)
        missing = [f"credential {c.name}" for c, found in zip(needed, held, strict=True) if found is None]
        inactive: list[str] = []
        for kind in kinds:
            workflow = _preferred(w for w in named if w.name == workflow_name(department_id, kind))
            if workflow is None:
                missing.append(kind)
            elif not workflow.active:
                inactive.append(kind)
        if missing:
            also = f"; not active: {', '.join(inactive)}" if inactive else ""
            return Condition(self.name, False, "MISSING", f"not in n8n: {', '.join(missing)}{also}")
        if inactive:
            return Condition(self.name, False, "INACTIVE", f"not active in n8n: {', '.join(inactive)}")
        return Condition(self.name, True, "ACTIVE", f"active in n8n: {', '.join(kinds)}")

    async def _read_credential(self, wanted: Credential) -> dict[str, Any] | None:
        """n8n's view of the credential (never its data), None if there is none; a
        credential of another type under its id is fatal."""
        found = await self._api.call(
            "GET", f"/credentials/{wanted.id}", doing=f"reading credential {wanted.name}", tolerate=(404,)
        )
        if found is None:
            return None
        if not isinstance(found, dict) or found.get("type") != wanted.type:
            raise StepError(f"n8n credential {wanted.id} is not the {wanted.type} credential {wanted.name}")
        return found

    async def _ensure_credential(self, wanted: Credential, data: dict[str, Any] | None) -> None:
        """Adopt the credential, or make it; `data` (None: left to an operator) is written
        either way, so a changed relay reaches the department on its next apply."""
        if await self._read_credential(wanted) is None:
            body = {"id": wanted.id, "name": wanted.name, "type": wanted.type, "data": data or {}}
            doing = f"creating credential {wanted.name}"
            # 409: another attempt made it meanwhile; it is adopted like one found.
            if await self._api.call("POST", "/credentials", json=body, doing=doing, tolerate=(409,)):
                log.info("n8n credential %s created (id %s)", wanted.name, wanted.id)
                return
        if data is not None:
            doing = f"updating credential {wanted.name}"
            await self._api.call("PATCH", f"/credentials/{wanted.id}", json={"data": data}, doing=doing)

    async def _remove_credential(self, wanted: Credential | None) -> None:
        if wanted is not None:
            doing = f"deleting credential {wanted.name}"
            await self._api.call("DELETE", f"/credentials/{wanted.id}", doing=doing, tolerate=(404,))

    async def _find_named(self, department_id: str) -> list[RemoteWorkflow]:
        """The department's workflows by name. n8n matches `name` as a substring, so the
        exact names are picked here; kinds have no hyphen, so no other department's match."""
        names = {workflow_name(department_id, kind) for kind in WORKFLOW_KINDS}
        doing = f"listing the workflows of {department_id}"
        listed = await self._api.pages(
            "/workflows", doing=doing, params={"name": f"dept-{department_id}-", "excludePinnedData": "true"}
        )
        found = [RemoteWorkflow.parse(item, doing) for item in listed]
        return [w for w in found if w.name in names]

    async def _find(self, department_id: str) -> list[RemoteWorkflow]:
        """Every workflow of the department: named for it or tagged for it."""
        doing = f"listing the workflows tagged for {department_id}"
        tagged = await self._api.pages(
            "/workflows",
            doing=doing,
            params={"tags": department_tag(department_id), "excludePinnedData": "true"},
        )
        found = {w.id: w for w in (RemoteWorkflow.parse(item, doing) for item in tagged)}
        for workflow in await self._find_named(department_id):
            found.setdefault(workflow.id, workflow)
        return sorted(found.values(), key=lambda w: (w.name, w.created_at, w.id))

    async def _ensure_tag(self, tag: str) -> str:
        """The id of the tag named `tag`, made if missing (409: someone made it meanwhile)."""
        made = await self._api.call(
            "POST", "/tags", json={"name": tag}, doing=f"creating tag {tag}", tolerate=(409,)
        )
        if isinstance(made, dict) and isinstance(made.get("id"), str):
            return str(made["id"])
        tags = await self._api.pages("/tags", doing="listing tags")
        found = next(
            (str(t["id"]) for t in tags if t.get("name") == tag and isinstance(t.get("id"), str)), None
        )
        if found is None:
            raise TransientStepError(f"n8n reports tag {tag} exists but does not list it")
        return found

    async def _deploy(
        self, body: dict[str, Any], current: RemoteWorkflow | None, tag: str, tag_id: str
    ) -> str:
        """Create or update one workflow, tag it and make it live; its n8n id."""
        name = body["name"]
        if current is None:
            doing = f"creating workflow {name}"
            current = RemoteWorkflow.parse(
                await self._api.call("POST", "/workflows", json=body, doing=doing), doing
            )
            log.info("n8n workflow %s created (id %s)", name, current.id)
        elif not current.matches(body):
            doing = f"updating workflow {name}"
            reply = await self._api.call("PUT", f"/workflows/{current.id}", json=body, doing=doing)
            current = RemoteWorkflow.parse(reply, doing)
            log.info("n8n workflow %s updated (id %s)", name, current.id)
        if tag not in current.tags:
            # Replace the tag list with itself plus ours: tags others put there stay.
            await self._api.call(
                "PUT",
                f"/workflows/{current.id}/tags",
                json=[{"id": each} for each in [*current.tags.values(), tag_id]],
                doing=f"tagging workflow {name}",
            )
        if not current.live:
            await self._activate(current)
        return current.id

    async def _activate(self, workflow: RemoteWorkflow) -> None:
        doing = f"activating workflow {workflow.name}"
        # A conflict that outlasts the wait is real (another workflow has the path): fatal.
        reply = await _settling(
            lambda: self._api.call("POST", f"/workflows/{workflow.id}/activate", doing=doing)
        )
        current = RemoteWorkflow.parse(reply, doing)
        # n8n may answer an activation before it has taken: wait until it reads as live.
        deadline = asyncio.get_running_loop().time() + self._activation_timeout
        while not current.live:
            if asyncio.get_running_loop().time() >= deadline:
                waited = f"{self._activation_timeout:g} s"
                raise TransientStepError(
                    f"n8n workflow {workflow.name} is not active {waited} after activation"
                )
            await asyncio.sleep(POLL_INTERVAL)
            doing = f"reading workflow {workflow.name}"
            current = RemoteWorkflow.parse(
                await self._api.call("GET", f"/workflows/{workflow.id}", doing=doing), doing
            )
        log.info("n8n workflow %s active (id %s)", workflow.name, workflow.id)

    async def _remove(self, workflow: RemoteWorkflow) -> None:
        """Deactivate (n8n refuses to delete an active workflow), then delete; gone is fine."""
        if workflow.active:
            await self._api.call(
                "POST",
                f"/workflows/{workflow.id}/deactivate",
                doing=f"deactivating workflow {workflow.name}",
                tolerate=(404,),
            )
        doing = f"deleting workflow {workflow.name}"
        try:
            await _settling(
                lambda: self._api.call("DELETE", f"/workflows/{workflow.id}", doing=doing, tolerate=(404,))
            )
        except N8nConflict as exc:
            # Deactivated, so n8n will let it go: a retry of the step will find it deletable.
            raise TransientStepError(exc.message) from exc
        log.info("n8n workflow %s removed (id %s)", workflow.name, workflow.id)
