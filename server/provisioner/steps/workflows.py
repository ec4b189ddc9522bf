"""The workflows step on the embedded default: the seed's workflow kinds, rendered per
department from the templates in `templates/workflows/` and deployed into the
department's service, which serves each one's webhook and records every execution in
the department's database.

Rendering substitutes `${...}` inside the parsed template's strings, never in raw JSON
text, so no value can change the document's structure.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from string import Template
from typing import Any

from provisioner.core.errors import StepError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.container import Placement
from provisioner.steps.departments import DepartmentDirs, get, remove, write_json

WORKFLOWS_DIR = "workflows"
KINDS = ("email", "google_drive", "database")


def template(kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise StepError(f"no template for workflow {kind!r}")
    text = resources.files("provisioner.steps").joinpath(f"templates/workflows/{kind}.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def render(kind: str, spec: DepartmentSpec) -> dict[str, Any]:
    """The workflow definition of `kind` for the department of `spec`."""
    values = {
        "department_id": spec.department_id,
        "department_name": spec.department_name,
        "admin_email": spec.admin_email,
        "region": spec.region,
        "data_retention": spec.data_retention,
    }

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            return Template(node).substitute(values)
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(item) for item in node]
        return node

    rendered: dict[str, Any] = fill(template(kind))
    return rendered


class EmbeddedWorkflows:
    name = StepName.WORKFLOWS

    def __init__(self, dirs: DepartmentDirs) -> None:
        self._dirs = dirs

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        return await settle(asyncio.to_thread(self._deploy, ctx))

    def _deploy(self, ctx: StepContext) -> dict[str, str]:
        folder = self._dirs.ensure(ctx.department_id) / WORKFLOWS_DIR
        wanted = set(ctx.spec.workflows)
        for kind in sorted(wanted):
            write_json(folder / f"{kind}.json", render(kind, ctx.spec))
        # A re-run for a changed spec must not leave workflows it no longer asks for.
        for stale in folder.glob("*.json"):
            if stale.stem not in wanted:
                stale.unlink()
        return {
            "workflows": ",".join(sorted(wanted)),
            "webhooks": ",".join(f"/departments/{ctx.department_id}/workflows/{k}" for k in sorted(wanted)),
        }

    async def compensate(self, ctx: StepContext) -> None:
        await settle(asyncio.to_thread(self._undeploy, ctx))

    def _undeploy(self, ctx: StepContext) -> None:
        folder = self._dirs.path(ctx.department_id) / WORKFLOWS_DIR
        if folder.exists():
            remove(*folder.glob("*.json"))
            folder.rmdir()
        self._dirs.tidy(ctx.department_id)

    async def check(self, ctx: StepContext) -> Condition:
        desired = Placement.read(self._dirs.path(ctx.department_id))
        if desired is None:
            return Condition(self.name, False, "NO_SERVICE", "no department service to run the workflows")
        try:
            reply = await get(desired.url("healthz"), "the department service")
            states = reply.json().get("workflows", {})
        except (StepError, ValueError) as exc:
            return Condition(self.name, False, "UNREACHABLE", str(exc))
        inactive = sorted(k for k in ctx.spec.workflows if states.get(k) != "active")
        if inactive:
            return Condition(self.name, False, "INACTIVE", f"not active: {', '.join(inactive)}")
        return Condition(self.name, True, "ACTIVE", f"active: {', '.join(sorted(ctx.spec.workflows))}")
