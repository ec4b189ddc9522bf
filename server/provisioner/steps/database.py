"""The database step on the embedded default: a SQLite database of the department's own.

Its tables come from the department data model's versioned template, which the
department service ships (`department_service.schema`); the service opens this file and
no other. The PostgreSQL adapter (`tenant_postgres`) does the same job with a schema, a
login role and row-level security.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from department_service import schema
from provisioner.core.errors import StepError, TransientStepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.departments import DepartmentDirs, remove

DATABASE_FILE = "data.db"


class SqliteTenantDatabase:
    name = StepName.DATABASE

    def __init__(self, dirs: DepartmentDirs) -> None:
        self._dirs = dirs

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        path = self._dirs.ensure(ctx.department_id) / DATABASE_FILE
        try:
            version = await settle(asyncio.to_thread(schema.create, path))
        except schema.SchemaError as exc:
            raise (TransientStepError if exc.retryable else StepError)(f"database: {exc}") from exc
        return {"database": str(path), "template_version": str(version)}

    async def compensate(self, ctx: StepContext) -> None:
        path = self._dirs.path(ctx.department_id) / DATABASE_FILE
        remove(path, path.with_name(f"{DATABASE_FILE}-wal"), path.with_name(f"{DATABASE_FILE}-shm"))
        self._dirs.tidy(ctx.department_id)

    async def execution_status(self, department_id: str, execution_id: str) -> str | None:
        """The recorded status of a workflow execution, read straight from the department's file."""
        path = self._dirs.path(department_id) / DATABASE_FILE
        return await asyncio.to_thread(_execution_status, path, execution_id)

    async def check(self, ctx: StepContext) -> Condition:
        path = self._dirs.path(ctx.department_id) / DATABASE_FILE
        if not path.exists():
            return Condition(self.name, False, "MISSING", f"the department's {DATABASE_FILE} does not exist")
        problem = await asyncio.to_thread(schema.check, path)
        if problem is not None:
            return Condition(self.name, False, "UNREACHABLE", problem)
        return Condition(self.name, True, "READY", "reachable, at the expected template version")


def _execution_status(database: Path, execution_id: str) -> str | None:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        row = connection.execute(
            "SELECT status FROM workflow_executions WHERE id = ?", (execution_id,)
        ).fetchone()
    return None if row is None else str(row[0])
