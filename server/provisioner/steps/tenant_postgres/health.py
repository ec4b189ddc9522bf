"""The live check of one department's database: what the admin sees, then what the role can do.

Returns a reason code and a message instead of raising: a sick database is an answer
here, not an error. Reasons, in the order they are looked for:

- `UNREACHABLE`: the server cannot be reached (as the admin or as the role).
- `NOT_PROVISIONED`: the role, the schema or a template table is missing.
- `ROLE_PRIVILEGED`: the role is a superuser or may bypass row-level security, create
  roles or databases, so no policy binds it.
- `POLICY_MISSING`: a table has row-level security off or not forced, or lacks the policy.
- `POLICY_UNEXPECTED`: the policy was altered, or another permissive policy widens it.
- `ACCESS_DENIED`: the role cannot log in or cannot read its tables.
- `MISCONFIGURED`: the role's `app.department_id` is not its department.
- `TEMPLATE_OUTDATED`: the schema is not at the template version of this control plane.
- `READY`: none of the above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from provisioner.steps.tenant_postgres.errors import DRIVER_ERRORS, describe, is_transient
from provisioner.steps.tenant_postgres.naming import DepartmentNames, quote_ident
from provisioner.steps.tenant_postgres.templates import POLICY_NAME

#: How PostgreSQL prints the policy expression back (pg_policies.qual / with_check).
_EXPECTED_EXPRESSION = "(department_id = current_setting('app.department_id'::text, true))"

Finding = tuple[str, str]


async def inspect_department(
    dsn: str,
    names: DepartmentNames,
    *,
    password: str,
    tables: Sequence[str],
    template_version: int,
    seconds: float,
) -> Finding:
    """The first problem found with the department's database, or `("READY", ...)`.

    `seconds` bounds each connection attempt and each statement.
    """
    try:
        conn = await asyncpg.connect(dsn, timeout=seconds, command_timeout=seconds)
    except DRIVER_ERRORS as exc:
        return "UNREACHABLE", f"cannot reach the tenant database as the admin: {describe(exc)}"
    try:
        found = await _catalog_findings(conn, names, tables)
    except DRIVER_ERRORS as exc:
        return "UNREACHABLE", f"cannot read the catalog as the admin: {describe(exc)}"
    finally:
        await _close_quietly(conn)
    if found is not None:
        return found
    return await _role_findings(dsn, names, password, tables, template_version, seconds)


async def _catalog_findings(conn: Any, names: DepartmentNames, tables: Sequence[str]) -> Finding | None:
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication"
        " FROM pg_catalog.pg_roles WHERE rolname = $1",
        names.role,
    )
    if role is None:
        return "NOT_PROVISIONED", f"role {names.role} does not exist"
    if any(role.values()):
        granted = ", ".join(key.removeprefix("rol") for key, value in role.items() if value)
        return "ROLE_PRIVILEGED", f"role {names.role} has {granted}, so row-level security cannot bind it"
    rows = await conn.fetch(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        names.schema,
    )
    schema_exists = rows or await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", names.schema
    )
    if not schema_exists:
        return "NOT_PROVISIONED", f"schema {names.schema} does not exist"
    present = {str(row["relname"]) for row in rows}
    missing = [table for table in tables if table not in present]
    if missing:
        return "NOT_PROVISIONED", f"schema {names.schema} lacks table(s) {', '.join(missing)}"

    policies: dict[str, list[Any]] = {}
    for policy in await conn.fetch(
        "SELECT tablename, policyname, permissive, roles, cmd, qual, with_check"
        " FROM pg_catalog.pg_policies WHERE schemaname = $1",
        names.schema,
    ):
        policies.setdefault(str(policy["tablename"]), []).append(policy)

    problems: list[str] = []
    unexpected: list[str] = []
    for row in rows:
        table = str(row["relname"])
        if not row["relrowsecurity"]:
            problems.append(f"{table}: row-level security disabled")
        elif not row["relforcerowsecurity"]:
            problems.append(f"{table}: row-level security not forced")
        ours = [p for p in policies.get(table, []) if p["policyname"] == POLICY_NAME]
        if not ours:
            problems.append(f"{table}: policy {POLICY_NAME} missing")
        elif not _is_isolation_policy(ours[0]):
            unexpected.append(f"{table}: policy {POLICY_NAME} was altered")
        # A restrictive policy can only narrow access; another permissive one ORs in.
        unexpected += [
            f"{table}: extra permissive policy {p['policyname']}"
            for p in policies.get(table, [])
            if p["policyname"] != POLICY_NAME and p["permissive"] == "PERMISSIVE"
        ]
    if problems:
        return "POLICY_MISSING", "; ".join(problems)
    if unexpected:
        return "POLICY_UNEXPECTED", "; ".join(unexpected)
    return None


def _is_isolation_policy(policy: Any) -> bool:
    return bool(
        policy["permissive"] == "PERMISSIVE"
        and policy["cmd"] == "ALL"
        and list(policy["roles"]) == ["public"]
        and policy["qual"] == _EXPECTED_EXPRESSION
        and policy["with_check"] == _EXPECTED_EXPRESSION
    )


async def _role_findings(
    dsn: str,
    names: DepartmentNames,
    password: str,
    tables: Sequence[str],
    template_version: int,
    seconds: float,
) -> Finding:
    """Log in as the department role, as its service would, and read every table."""
    try:
        conn = await asyncpg.connect(
            dsn, user=names.role, password=password, timeout=seconds, command_timeout=seconds
        )
    except DRIVER_ERRORS as exc:
        reason = "UNREACHABLE" if is_transient(exc) else "ACCESS_DENIED"
        return reason, f"cannot log in as {names.role}: {describe(exc)}"
    # Identifiers come quoted from a validated id and the template (naming.py): S608 waived.
    schema = names.quoted_schema
    try:
        setting = await conn.fetchval("SELECT pg_catalog.current_setting('app.department_id', true)")
        for table in tables:
            await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.{quote_ident(table)})")  # noqa: S608
        version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version")  # noqa: S608
    except DRIVER_ERRORS as exc:
        reason = "UNREACHABLE" if is_transient(exc) else "ACCESS_DENIED"
        return reason, f"{names.role} cannot read its tables: {describe(exc)}"
    finally:
        await _close_quietly(conn)
    if setting != names.department_id:
        return "MISCONFIGURED", f"role {names.role} does not default app.department_id to its department"
    if version != template_version:
        return "TEMPLATE_OUTDATED", f"{names.schema} is at template v{version}, not v{template_version}"
    return "READY", f"{names.schema}: {len(tables)} tables under row-level security, template v{version}"


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close(timeout=1)
    except DRIVER_ERRORS:
        conn.terminate()  # the answer is already known; do not let a goodbye change it
