"""In-tree steps that make real, checkable marker resources on local disk.

Each step's resource is the file `resources/<department>/<step>.json` under the state
directory, holding a fresh resource id. Every creation (logged just before it happens)
and removal is appended with that id to `resources/ledger.log`, so tests can prove from
the outside that no side effect ran twice and nothing was left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from pathlib import Path

from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle


class LocalMarkerStep:
    """Creates (or adopts) one marker file per department; compensation deletes it.

    Wrap it in `faults.SlowedStep` to kill a server while such a step is in flight.
    """

    def __init__(self, name: StepName, root: Path) -> None:
        self.name = name
        self._root = root

    def marker(self, department_id: str) -> Path:
        return self._root / department_id / f"{self.name}.json"

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        resource_id = await settle(asyncio.to_thread(self._create, ctx))
        return {"marker": str(self.marker(ctx.department_id)), "resource_id": resource_id}

    def _create(self, ctx: StepContext) -> str:
        path = self.marker(ctx.department_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return str(json.loads(path.read_text())["resource_id"])
        resource_id = uuid.uuid4().hex
        body = json.dumps({"resource_id": resource_id, "job_id": ctx.job_id, "step": self.name.value})
        # The ledger line goes first: a crash between it and the link leaves an intent whose
        # resource never appeared, never a resource nobody recorded.
        self._ledger("create", ctx.department_id, resource_id)
        tmp = path.with_suffix(f".{resource_id}.tmp")
        tmp.write_text(body)
        try:
            os.link(tmp, path)  # atomic create-if-absent: a racing twin gets FileExistsError
        except FileExistsError:
            return str(json.loads(path.read_text())["resource_id"])
        finally:
            tmp.unlink()
        return resource_id

    async def compensate(self, ctx: StepContext) -> None:
        await settle(asyncio.to_thread(self._remove, ctx))

    def _remove(self, ctx: StepContext) -> None:
        path = self.marker(ctx.department_id)
        try:
            resource_id = str(json.loads(path.read_text())["resource_id"])
            path.unlink()
        except FileNotFoundError:
            return
        self._ledger("remove", ctx.department_id, resource_id)
        with contextlib.suppress(OSError):  # other steps' markers are still there
            path.parent.rmdir()

    async def check(self, ctx: StepContext) -> Condition:
        exists = await asyncio.to_thread(self.marker(ctx.department_id).exists)
        if exists:
            return Condition(self.name, True, "PRESENT", "marker resource present")
        return Condition(self.name, False, "MISSING", "marker resource missing")

    def _ledger(self, action: str, department_id: str, resource_id: str) -> None:
        line = f"{action} {department_id} {self.name.value} {resource_id}\n"
        fd = os.open(self._root / "ledger.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
