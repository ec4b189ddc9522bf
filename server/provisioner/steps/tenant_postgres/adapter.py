"""`PostgresTenantDatabase`: the `database` step on a shared PostgreSQL database.

Each department gets, in the database of the admin URL, a login role and a schema of the
same name (`dept_<id>`), the versioned data model in that schema, row-level security
enabled and forced on every table with one isolation policy, and privileges so narrow
that the role can read and write its rows and do nothing else: it owns nothing, so it
cannot drop a policy or turn row-level security off, and it cannot create objects
anywhere. Schema privileges are the wall between departments; row-level security is the
second one inside a schema, for a service that pools connections across sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from department_service import schema
from provisioner.core.errors import ConfigurationError, StepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext, settle
from provisioner.steps.tenant_postgres.errors import DRIVER_ERRORS, step_error
from provisioner.steps.tenant_postgres.health import inspect_department
from provisioner.steps.tenant_postgres.naming import (
    DepartmentNames,
    advisory_lock_key,
    department_names,
    quote_ident,
    quote_literal,
    scram_sha256_verifier,
)
from provisioner.steps.tenant_postgres.templates import ENFORCE_ISOLATION_SQL, load_templates

log = logging.getLogger(__name__)

_URL_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")
#: Each apply holds one admin connection for well under a second, so a few serve many
#: departments; the rest queue for at most `timeout`, then fail retryably.
_POOL_SIZE = 4
#: How long compensation waits for each of the role's sessions to end when terminated.
_TERMINATE_WAIT_MS = 5000


def asyncpg_dsn(url: str) -> str:
    """The DSN asyncpg takes for a `postgresql://` URL (SQLAlchemy's `+asyncpg` form too)."""
    for scheme in _URL_SCHEMES:
        if url.startswith(scheme):
            return "postgresql://" + url.removeprefix(scheme)
    # The URL is not echoed: it may hold the admin's password.
    raise ConfigurationError("the tenant database URL must start with postgresql:// or postgres://")


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    """Turn driver errors raised inside the block into step errors, chained."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise step_error(exc, doing) from exc


class PostgresTenantDatabase:
    """The production `database` step: schema + role + row-level security per department.

    `admin_url` connects as a superuser (or a role with CREATEROLE that owns what it
    makes) to the database the departments live in. `password_for(department_id)` gives
    the department role's password; it is recomputed on every apply (so re-applying
    rotates it) and only its SCRAM verifier is ever sent. Nothing here logs it or returns
    it.

    Concurrent applies and compensations of one department serialize on a transaction
    advisory lock keyed on the department. Advisory locks are per database while roles
    are per cluster, so two control planes must not provision the same department ids
    into two databases of one cluster.
    """

    name = StepName.DATABASE

    def __init__(
        self,
        admin_url: str,
        password_for: Callable[[str], Awaitable[str]],
        *,
        forget_password: Callable[[str], Awaitable[None]] | None = None,
        template_version: int = schema.SCHEMA_VERSION,
        connection_limit: int = 20,
        timeout: float = 10.0,
    ) -> None:
        if connection_limit < 1:
            raise ConfigurationError(
                f"tenant role connection limit must be 1 or more, not {connection_limit}"
            )
        if timeout <= 0:
            raise ConfigurationError(f"tenant database timeout must be positive, not {timeout}")
        self._dsn = asyncpg_dsn(admin_url)
        self._password_for = password_for
        self._forget_password = forget_password
        self._templates = load_templates(template_version)
        self._template_version = template_version
        self._tables = tuple(dict.fromkeys(t for template in self._templates for t in template.tables))
        self._connection_limit = connection_limit
        self._timeout = timeout
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def close(self) -> None:
        """Close the admin connections, after the operations using them have finished."""
        self._closed = True
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        """Create or adopt the department's role and schema and converge them to the template."""
        names = department_names(ctx.department_id)  # before any SQL: a bad id never reaches it
        verifier = self._verifier(await self._password_for(names.department_id))
        # settle: a cancelled caller still waits for COMMIT or ROLLBACK, so nothing this
        # transaction does can land after a rollback of the job has begun.
        await settle(self._provision(names, verifier))
        log.info(
            "database step: department %s provisioned (schema %s, template v%d)",
            names.department_id,
            names.schema,
            self._template_version,
        )
        return {
            "schema": names.schema,
            "role": names.role,
            "template_version": str(self._template_version),
        }

    async def compensate(self, ctx: StepContext) -> None:
        """Drop the department's schema (with its data) and its role; fine if already gone."""
        names = department_names(ctx.department_id)
        await settle(self._deprovision(names))
        if self._forget_password is not None:
            await self._forget_password(names.department_id)  # only once the role that used it is gone
        log.info("database step: department %s removed (schema and role %s)", names.department_id, names.role)

    async def check(self, ctx: StepContext) -> Condition:
        """Look at the department live; an unhealthy condition, never an exception, when sick."""
        try:
            names = department_names(ctx.department_id)
        except StepError as exc:
            return Condition(self.name, False, "INVALID_DEPARTMENT_ID", exc.message)
        if self._closed:
            return Condition(self.name, False, "UNREACHABLE", "the database step has been closed")
        reason, message = await inspect_department(
            self._dsn,
            names,
            password=await self._password_for(names.department_id),
            tables=self._tables,
            template_version=self._template_version,
            seconds=self._timeout,
        )
        return Condition(self.name, reason == "READY", reason, message)

    async def department_url(self, department_id: str) -> str:
        """The URL the department's service connects with: its own role, on the admin URL's server.

        Holds the role's password: pass it to the service in its environment, never log it.
        """
        names = department_names(department_id)
        url = make_url(self._dsn).set(username=names.role, password=await self._password_for(department_id))
        return url.render_as_string(hide_password=False)

    async def execution_status(self, department_id: str, execution_id: str) -> str | None:
        """The recorded status of a workflow execution, read as the department's own role."""
        names = department_names(department_id)
        with _translated(f"could not read the database of department {department_id}"):
            conn = await asyncpg.connect(
                self._dsn,
                user=names.role,
                password=await self._password_for(department_id),
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
            try:
                status = await conn.fetchval(
                    f"SELECT status FROM {names.quoted_schema}.workflow_executions WHERE id = $1",  # noqa: S608
                    execution_id,
                )
            finally:
                await conn.close()
        return None if status is None else str(status)

    @staticmethod
    def _verifier(password: str) -> str:
        try:
            return scram_sha256_verifier(password)
        except ValueError:
            # Not chained: nothing about the password belongs in an error.
            raise StepError("database step: the department role's password is not printable ASCII") from None

    async def _admin_pool(self) -> Any:
        if self._closed:
            raise StepError("database step: the tenant database adapter has been closed")
        async with self._pool_lock:
            if self._pool is None:
                # min_size=0: creating the pool connects nowhere, so it cannot fail on
                # the network; the first acquire does, inside an error translation.
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=_POOL_SIZE,
                    timeout=self._timeout,
                    command_timeout=self._statement_timeout + 1,
                    max_inactive_connection_lifetime=60,
                )
            return self._pool

    @property
    def _statement_timeout(self) -> float:
        # DDL on a busy schema may queue behind the lock timeout; leave it room.
        return self._timeout * 3

    async def _begin(self, conn: Any, names: DepartmentNames) -> None:
        """Bound the transaction's waits, then take the department's lock."""
        await conn.execute(
            "SELECT pg_catalog.set_config('lock_timeout', $1, true),"
            " pg_catalog.set_config('statement_timeout', $2, true),"
            " pg_catalog.set_config('app.department_id', $3, true)",
            f"{int(self._timeout * 1000)}ms",
            f"{int(self._statement_timeout * 1000)}ms",
            # Fills department_id when the admin writes schema_version, and satisfies the
            # policy if the admin is a non-superuser owner (FORCE binds owners too).
            names.department_id,
        )
        await conn.execute(
            "SELECT pg_catalog.pg_advisory_xact_lock($1)", advisory_lock_key(names.department_id)
        )

    async def _role_exists(self, conn: Any, names: DepartmentNames) -> bool:
        found = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", names.role
        )
        return bool(found)

    async def _provision(self, names: DepartmentNames, verifier: str) -> None:
        role, schema = names.quoted_role, names.quoted_schema
        with _translated(f"could not provision the database of department {names.department_id}"):
            pool = await self._admin_pool()
            async with pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await self._begin(conn, names)
                # CREATE ROLE has no IF NOT EXISTS, and roles are cluster-wide: look first,
                # under the lock. ALTER on an existing role converges its attributes and
                # password to what they must be, whoever changed them.
                verb = "ALTER" if await self._role_exists(conn, names) else "CREATE"
                await conn.execute(
                    f"{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                    f" NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {int(self._connection_limit)}"
                    f" PASSWORD {quote_literal(verifier)}"
                )
                await conn.execute(f"ALTER ROLE {role} SET search_path = {schema}")
                await conn.execute(
                    f"ALTER ROLE {role} SET app.department_id = {quote_literal(names.department_id)}"
                )
                # Owned by the admin, never by the role: an owner could drop the policies.
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                await conn.execute(f"ALTER SCHEMA {schema} OWNER TO CURRENT_USER")
                comment = f"department {names.department_id}, managed by provisioning-orchestrator"
                await conn.execute(f"COMMENT ON SCHEMA {schema} IS {quote_literal(comment)}")
                # pg_temp last: no temporary table of this session can stand in for ours.
                await conn.execute(
                    "SELECT pg_catalog.set_config('search_path', $1, true)", f"{schema}, pg_temp"
                )
                await self._migrate(conn, names)
                await conn.execute(ENFORCE_ISOLATION_SQL)
                await self._grant(conn, names)
                await self._refuse_broad_privileges(conn, names)

    async def _migrate(self, conn: Any, names: DepartmentNames) -> None:
        """Run the templates this schema has not been through yet, recording each."""
        # Identifiers here come quoted from a validated id (naming.py), hence the S608 waivers.
        schema = names.quoted_schema
        current = 0
        if await conn.fetchval("SELECT pg_catalog.to_regclass($1) IS NOT NULL", f"{schema}.schema_version"):
            current = int(
                await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version")  # noqa: S608
            )
        if current > self._template_version:
            raise StepError(
                f"database step: schema {names.schema} is at template v{current}, "
                f"newer than this control plane's v{self._template_version}"
            )
        for template in self._templates[current:]:
            await conn.execute(template.sql)
            await conn.execute(
                f"INSERT INTO {schema}.schema_version (version) VALUES ($1)"  # noqa: S608
                " ON CONFLICT (version) DO NOTHING",
                template.version,
            )

    async def _grant(self, conn: Any, names: DepartmentNames) -> None:
        role, schema = names.quoted_role, names.quoted_schema
        await conn.execute(
            ";\n".join(
                (
                    f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
                    f"GRANT USAGE ON SCHEMA {schema} TO {role}",
                    f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM PUBLIC",
                    f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM PUBLIC",
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
                    # TRUNCATE ignores row-level security; REFERENCES and TRIGGER are not data.
                    f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {schema} FROM {role}",
                    # The template history is the control plane's record, not the department's.
                    f"REVOKE INSERT, UPDATE, DELETE ON {schema}.schema_version FROM {role}",
                    f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
                )
            )
        )
        # PUBLIC normally has CONNECT; grant it to the role only where an operator revoked
        # that, so the database-wide decision stays theirs and the department still connects.
        if not await conn.fetchval(
            "SELECT pg_catalog.has_database_privilege($1, pg_catalog.current_database(), 'CONNECT')",
            names.role,
        ):
            database = str(await conn.fetchval("SELECT pg_catalog.current_database()"))
            await conn.execute(f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {role}")

    async def _refuse_broad_privileges(self, conn: Any, names: DepartmentNames) -> None:
        """Fail (and roll everything back) if the role could create objects anywhere.

        Revoking CREATE from PUBLIC is a database-wide decision (PostgreSQL 15 made it the
        default for schema public), so it is not taken here; a department is simply not
        provisioned into a database where its role could plant objects others would run.
        """
        schemas = await conn.fetch(
            "SELECT n.nspname FROM pg_catalog.pg_namespace n"
            " WHERE pg_catalog.has_schema_privilege($1, n.oid, 'CREATE') ORDER BY 1",
            names.role,
        )
        if schemas:
            listed = ", ".join(str(row["nspname"]) for row in schemas)
            raise StepError(
                f"database step: role {names.role} could create objects in schema {listed}; revoke "
                "that CREATE privilege (PostgreSQL 15 revokes it from PUBLIC on schema public by default)"
            )
        if await conn.fetchval(
            "SELECT pg_catalog.has_database_privilege($1, pg_catalog.current_database(), 'CREATE')",
            names.role,
        ):
            raise StepError(
                f"database step: role {names.role} could create schemas in this database; "
                "revoke CREATE on the database from PUBLIC before provisioning"
            )

    async def _deprovision(self, names: DepartmentNames) -> None:
        role, schema = names.quoted_role, names.quoted_schema
        with _translated(f"could not remove the database of department {names.department_id}"):
            pool = await self._admin_pool()
            async with pool.acquire(timeout=self._timeout) as conn:
                # First forbid new sessions and commit that, so none can start between the
                # terminations below and the drop: DROP ROLE does not end live sessions.
                async with conn.transaction():
                    await self._begin(conn, names)
                    role_exists = await self._role_exists(conn, names)
                    if role_exists:
                        await conn.execute(f"ALTER ROLE {role} NOLOGIN")
                if role_exists:
                    # Cluster-wide: the role's sessions in any database, waited for, so
                    # that none still holds a lock the drop would queue behind.
                    await conn.execute(
                        "SELECT count(pg_catalog.pg_terminate_backend(pid, $2))"
                        " FROM pg_catalog.pg_stat_activity"
                        " WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()",
                        names.role,
                        min(_TERMINATE_WAIT_MS, int(self._timeout * 1000)),
                    )
                async with conn.transaction():
                    await self._begin(conn, names)
                    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                    if await self._role_exists(conn, names):
                        # Whatever else the role holds in this database (privileges granted
                        # on other objects, a CONNECT grant); elsewhere DROP ROLE refuses.
                        await conn.execute(f"DROP OWNED BY {role}")
                        await conn.execute(f"DROP ROLE {role}")
