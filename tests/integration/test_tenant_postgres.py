"""The PostgreSQL `database` step against the suite's throwaway PostgreSQL cluster.

Each test gets a fresh database, but roles belong to the whole cluster: every department
id here is unique (a uuid suffix) and the `departments` fixture compensates every
department a test made, so no role outlives its test.

The cluster trusts every local login (conftest), so a wrong password would still get in;
the password is proven instead by recomputing the stored SCRAM verifier from it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from department_service.schema import SCHEMA_VERSION
from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import StepName
from provisioner.steps.base import StepContext
from provisioner.steps.tenant_postgres import (
    PostgresTenantDatabase,
    department_names,
)
from provisioner.steps.tenant_postgres.naming import quote_ident, quote_literal, scram_sha256_verifier
from tests.postgres import PostgresServer

pytestmark = pytest.mark.postgres

ALL_VERSIONS = [(version,) for version in range(1, SCHEMA_VERSION + 1)]
TABLES = {"schema_version", "workflow_executions", "outbox", "files", "records"}
HOSTILE_IDS = [
    'x"; drop role postgres; --',
    "x'); drop role postgres; --",
    "a_b",  # underscores would break the injectivity of the name mapping
    "Sales",
    "a--b",
    "-ab",
    "ab-",
    "a",
    "a" * 33,
    "admin",  # reserved
    "ventes-é",
    "ab\x00cd",
    "",
]


def ctx(department_id: str) -> StepContext:
    return StepContext(job_id="job-1", spec=DepartmentSpec(department_id, "Department"), attempt=1)


def schema_of(department_id: str) -> str:
    return "dept_" + department_id.replace("-", "_")


class Departments:
    """Unique department ids for one test, all compensated when it ends."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def new(self, prefix: str = "d") -> str:
        department_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.ids.append(department_id)
        return department_id


async def unused_password(_: str) -> str:
    return "unused-password"


class Passwords(dict[str, str]):
    """A random password per department, kept for the test (the product keeps it in the vault)."""

    def of(self, department_id: str) -> str:
        return self.setdefault(department_id, secrets.token_urlsafe(32))

    async def __call__(self, department_id: str) -> str:
        return self.of(department_id)


@pytest.fixture
def password_for() -> Passwords:
    return Passwords()


@pytest.fixture
async def step(admin_url: str, password_for: Passwords) -> AsyncIterator[PostgresTenantDatabase]:
    adapter = PostgresTenantDatabase(admin_url, password_for)
    try:
        yield adapter
    finally:
        await adapter.close()


@pytest.fixture
async def departments(admin_url: str, password_for: Passwords) -> AsyncIterator[Departments]:
    made = Departments()
    yield made
    cleanup = PostgresTenantDatabase(admin_url, password_for)
    try:
        for department_id in made.ids:
            await cleanup.compensate(ctx(department_id))
    finally:
        await cleanup.close()


@pytest.fixture
async def admin(admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(admin_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def connect_as(
    postgres_server: PostgresServer, admin_url: str, password_for: Passwords
) -> Callable[[str], asyncpg.Connection]:
    """Log in to the test database as a department's role, with its password."""
    database = urlsplit(admin_url).path.lstrip("/")

    def connect(department_id: str) -> asyncpg.Connection:
        return asyncpg.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            database=database,
            user=schema_of(department_id),
            password=password_for.of(department_id),
        )

    return connect


async def role_count(admin: asyncpg.Connection, department_id: str) -> int:
    return int(
        await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", schema_of(department_id))
    )


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nowhere"


async def insert_execution(
    conn: asyncpg.Connection, execution_id: str, *, department_id: str | None = None
) -> None:
    columns, values = (
        "id, workflow, received_at, status, request, result",
        "$1, 'email', now(), 'ok', '{}', '{}'",
    )
    args: list[str] = [execution_id]
    if department_id is not None:
        columns, values = columns + ", department_id", values + ", $2"
        args.append(department_id)
    await conn.execute(f"INSERT INTO workflow_executions ({columns}) VALUES ({values})", *args)


# --- apply -----------------------------------------------------------------------------


async def test_apply_creates_the_department_and_is_idempotent(
    step: PostgresTenantDatabase, departments: Departments, admin: asyncpg.Connection
) -> None:
    department_id = departments.new()
    name = schema_of(department_id)

    first = await step.apply(ctx(department_id))
    second = await step.apply(ctx(department_id))

    assert first == second == {"schema": name, "role": name, "template_version": str(SCHEMA_VERSION)}
    role = await admin.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", name)
    assert role["rolcanlogin"] and role["rolconnlimit"] == 20
    assert not any(role[flag] for flag in ("rolsuper", "rolinherit", "rolcreaterole", "rolcreatedb"))
    assert not role["rolreplication"] and not role["rolbypassrls"]
    assert set(role["rolconfig"]) == {f"search_path={name}", f"app.department_id={department_id}"}
    owner = await admin.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", name)
    assert owner == "postgres"  # the admin, never the department role
    public_grants = await admin.fetchval(
        "SELECT count(*) FROM pg_namespace, aclexplode(nspacl) WHERE nspname = $1 AND grantee = 0", name
    )
    assert public_grants == 0
    tables = await admin.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity, relowner::regrole::text AS owner FROM pg_class"
        " WHERE relnamespace = $1::regnamespace AND relkind = 'r'",
        name,
    )
    assert {row["relname"] for row in tables} == TABLES
    assert all(row["relrowsecurity"] and row["relforcerowsecurity"] for row in tables)
    assert {row["owner"] for row in tables} == {"postgres"}
    policies = await admin.fetch(
        "SELECT tablename, policyname, qual, with_check FROM pg_policies WHERE schemaname = $1", name
    )
    assert sorted(p["tablename"] for p in policies) == sorted(TABLES)
    assert {p["policyname"] for p in policies} == {"department_isolation"}
    assert {p["qual"] for p in policies} == {p["with_check"] for p in policies}
    assert await admin.fetch(f'SELECT version FROM "{name}".schema_version') == ALL_VERSIONS
    privileges = await admin.fetch(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = $1 AND table_schema = $1",
        name,
    )
    granted: dict[str, set[str]] = {}
    for row in privileges:
        granted.setdefault(row["table_name"], set()).add(row["privilege_type"])
    data = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert granted == {table: {"SELECT"} if table == "schema_version" else data for table in TABLES}


async def test_the_password_is_stored_only_as_its_scram_verifier(
    step: PostgresTenantDatabase,
    departments: Departments,
    admin: asyncpg.Connection,
    password_for: Passwords,
) -> None:
    department_id = departments.new()
    await step.apply(ctx(department_id))

    stored = await admin.fetchval(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1", schema_of(department_id)
    )
    mechanism, _, rest = stored.partition("$")
    iterations, _, salt = rest.partition("$")[0].partition(":")
    assert mechanism == "SCRAM-SHA-256"
    expected = scram_sha256_verifier(
        password_for.of(department_id), salt=base64.b64decode(salt), iterations=int(iterations)
    )
    assert stored == expected
    assert password_for.of(department_id) not in stored


async def test_the_verifier_is_the_one_postgresql_computes(admin: asyncpg.Connection) -> None:
    role = f"verifier_{uuid.uuid4().hex}"
    password = "correct horse 'battery' \\ staple"
    await admin.execute("SET password_encryption = 'scram-sha-256'")
    await admin.execute(f"CREATE ROLE {role} PASSWORD {quote_literal(password)}")
    try:
        stored = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
    finally:
        await admin.execute(f"DROP ROLE {role}")
    iterations, salt = stored.split("$")[1].split(":")
    assert scram_sha256_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations)) == stored


async def test_quoting_round_trips_through_postgresql(admin: asyncpg.Connection) -> None:
    for value in ("plain", "it's", 'say "hi"', "back\\slash", "new\nline", "ünïcode", "'; --", '"; --'):
        assert await admin.fetchval(f"SELECT {quote_literal(value)}::text") == value
        row = await admin.fetchrow(f"SELECT 1 AS {quote_ident(value)}")
        assert list(row.keys()) == [value]


async def test_concurrent_applies_of_one_department_converge(
    admin_url: str,
    postgres_url: str,
    password_for: Passwords,
    departments: Departments,
    admin: asyncpg.Connection,
) -> None:
    department_id = departments.new()
    name = schema_of(department_id)
    # Three replicas, one of them given SQLAlchemy's URL form.
    replicas = [PostgresTenantDatabase(url, password_for) for url in (admin_url, admin_url, postgres_url)]
    try:
        results = await asyncio.gather(*(replica.apply(ctx(department_id)) for replica in replicas))
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))

    assert results[0] == results[1] == results[2]
    assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name) == 1
    assert await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", name) == 1
    assert await admin.fetch(f'SELECT version FROM "{name}".schema_version') == ALL_VERSIONS
    assert await admin.fetchval("SELECT count(*) FROM pg_policies WHERE schemaname = $1", name) == len(TABLES)


async def test_a_failed_apply_leaves_nothing_and_says_one_safe_line(
    step: PostgresTenantDatabase,
    departments: Departments,
    admin: asyncpg.Connection,
    password_for: Passwords,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    department_id = departments.new()
    name = schema_of(department_id)
    # A table of the template's name but not its shape: the template cannot index it.
    await admin.execute(f'CREATE SCHEMA "{name}"; CREATE TABLE "{name}".records (id text)')

    with pytest.raises(StepError) as raised:
        await step.apply(ctx(department_id))

    error = raised.value
    assert not error.retryable and not isinstance(error, TransientStepError)
    assert isinstance(error.__cause__, asyncpg.UndefinedColumnError)
    assert "\n" not in error.message and "42703" in error.message
    assert "CREATE" not in error.message and "INDEX" not in error.message
    # One transaction: the role created before the failure was rolled back with it.
    assert await role_count(admin, department_id) == 0
    password = password_for.of(department_id)
    for text in (str(error), repr(error), str(error.__cause__), repr(error.__cause__), caplog.text):
        assert password not in text
        assert "SCRAM-SHA-256" not in text


async def test_the_password_appears_in_no_resource_condition_or_log(
    step: PostgresTenantDatabase,
    departments: Departments,
    password_for: Passwords,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    department_id = departments.new()
    password = password_for.of(department_id)

    resources = await step.apply(ctx(department_id))
    condition = await step.check(ctx(department_id))
    await step.compensate(ctx(department_id))
    gone = await step.check(ctx(department_id))

    assert condition.healthy
    seen = [*resources.values(), condition.message, gone.message, caplog.text]
    assert not [text for text in seen if password in text or "SCRAM-SHA-256" in text]
    assert department_id in caplog.text  # the log does say what happened


async def test_a_non_ascii_password_is_refused_without_being_shown(
    admin_url: str, departments: Departments, admin: asyncpg.Connection
) -> None:
    department_id = departments.new()

    async def non_ascii(_: str) -> str:
        return "mot-de-passe-très-secret"

    step = PostgresTenantDatabase(admin_url, non_ascii)
    try:
        with pytest.raises(StepError) as raised:
            await step.apply(ctx(department_id))
    finally:
        await step.close()
    assert "secret" not in str(raised.value) and raised.value.__cause__ is None
    assert await role_count(admin, department_id) == 0


async def test_a_database_where_public_may_create_is_refused(
    step: PostgresTenantDatabase, departments: Departments, admin: asyncpg.Connection
) -> None:
    department_id = departments.new()
    await admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # this test's database only

    with pytest.raises(StepError, match="schema public") as raised:
        await step.apply(ctx(department_id))

    assert not raised.value.retryable
    assert await role_count(admin, department_id) == 0


async def test_a_schema_at_an_older_template_is_brought_up_to_date_keeping_its_rows(
    admin_url: str,
    password_for: Passwords,
    step: PostgresTenantDatabase,
    departments: Departments,
    admin: asyncpg.Connection,
    connect_as: Callable[[str], asyncpg.Connection],
) -> None:
    department_id = departments.new()
    name = schema_of(department_id)
    old = PostgresTenantDatabase(admin_url, password_for, template_version=1)
    try:
        await old.apply(ctx(department_id))
    finally:
        await old.close()
    conn = await connect_as(department_id)
    try:
        await insert_execution(conn, "e1")
        await conn.execute(
            "INSERT INTO outbox (id, execution_id, recipient, subject, body)"
            " VALUES ('o1', 'e1', 'a@b.c', 's', 'b')"
        )
    finally:
        await conn.close()

    await step.apply(ctx(department_id))

    assert await admin.fetch(f'SELECT version FROM "{name}".schema_version ORDER BY 1') == ALL_VERSIONS
    assert (await step.check(ctx(department_id))).healthy
    await admin.execute("SELECT set_config('app.department_id', $1, false)", department_id)
    assert await admin.fetch(f'SELECT id, status FROM "{name}".outbox') == [("o1", "unsent")]


async def test_a_schema_at_a_newer_template_is_refused(
    step: PostgresTenantDatabase, departments: Departments, admin: asyncpg.Connection
) -> None:
    department_id = departments.new()
    name = schema_of(department_id)
    await step.apply(ctx(department_id))
    await admin.execute(
        f'INSERT INTO "{name}".schema_version (version, department_id) VALUES ($2, $1)',
        department_id,
        SCHEMA_VERSION + 1,
    )

    with pytest.raises(StepError, match="newer"):
        await step.apply(ctx(department_id))
    condition = await step.check(ctx(department_id))
    assert (condition.healthy, condition.reason) == (False, "TEMPLATE_OUTDATED")


# --- what the department role can and cannot do ---------------------------------------


async def test_the_role_reads_and_writes_its_own_rows(
    step: PostgresTenantDatabase,
    departments: Departments,
    connect_as: Callable[[str], asyncpg.Connection],
) -> None:
    department_id = departments.new()
    await step.apply(ctx(department_id))

    conn = await connect_as(department_id)
    try:
        await insert_execution(conn, "e1")  # department_id comes from the role's default
        await conn.execute(
            "INSERT INTO outbox (id, execution_id, recipient, subject, body)"
            " VALUES ('o1', 'e1', 'a@b.c', 's', 'b')"
        )
        await conn.execute("INSERT INTO files (id, execution_id, folder, name) VALUES ('f1', 'e1', '/', 'x')")
        await conn.execute("INSERT INTO records (id, execution_id, data) VALUES ('r1', 'e1', '{\"k\": 1}')")
        assert await conn.fetch("SELECT id, department_id FROM workflow_executions") == [
            ("e1", department_id)
        ]
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE department_id = $1", department_id) == 1
        assert await conn.execute("UPDATE records SET data = '{\"k\": 2}'") == "UPDATE 1"
        assert await conn.execute("DELETE FROM files") == "DELETE 1"
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await insert_execution(conn, "e2", department_id="someone-else")
    finally:
        await conn.close()


async def test_another_department_is_walled_off_by_privileges_and_by_rls(
    step: PostgresTenantDatabase,
    departments: Departments,
    admin: asyncpg.Connection,
    connect_as: Callable[[str], asyncpg.Connection],
) -> None:
    a, b = departments.new("a"), departments.new("b")
    await step.apply(ctx(a))
    await step.apply(ctx(b))
    b_table = f'"{schema_of(b)}".workflow_executions'
    conn_b = await connect_as(b)
    conn_a = await connect_as(a)
    try:
        await insert_execution(conn_b, "b-secret")

        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema"):
            await conn_a.fetch(f"SELECT * FROM {b_table}")

        # Even a mistaken grant of B's schema and table to A shows A none of B's rows.
        await admin.execute(f'GRANT USAGE ON SCHEMA "{schema_of(b)}" TO "{schema_of(a)}"')
        await admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {b_table} TO "{schema_of(a)}"')
        assert await conn_a.fetch(f"SELECT * FROM {b_table}") == []
        assert await conn_a.execute(f"UPDATE {b_table} SET status = 'tampered'") == "UPDATE 0"
        assert await conn_a.execute(f"DELETE FROM {b_table}") == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn_a.execute(
                f"INSERT INTO {b_table} (id, department_id, workflow, received_at, status, request, result)"
                " VALUES ('forged', $1, 'email', now(), 'ok', '{}', '{}')",
                b,
            )
        assert await conn_b.fetch("SELECT id, status FROM workflow_executions") == [("b-secret", "ok")]
    finally:
        await conn_a.close()
        await conn_b.close()


async def test_rls_follows_the_sessions_department_setting(
    step: PostgresTenantDatabase,
    departments: Departments,
    connect_as: Callable[[str], asyncpg.Connection],
) -> None:
    department_id = departments.new()
    await step.apply(ctx(department_id))
    conn = await connect_as(department_id)
    try:
        await insert_execution(conn, "e1")

        await conn.execute("SET app.department_id = 'someone-else'")
        assert await conn.fetchval("SELECT count(*) FROM workflow_executions") == 0
        assert await conn.execute("UPDATE workflow_executions SET status = 'x'") == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await insert_execution(conn, "e2", department_id=department_id)

        await conn.execute("RESET app.department_id")  # back to the role's default
        assert await conn.fetchval("SELECT count(*) FROM workflow_executions") == 1
    finally:
        await conn.close()


#: What a department's own session might try in order to see or change more than its rows;
#: each must fail for want of privilege. One session runs them all (each statement is its
#: own transaction), since a database per statement would cost more than the test.
ESCAPES = [
    "ALTER TABLE workflow_executions DISABLE ROW LEVEL SECURITY",
    "ALTER TABLE outbox NO FORCE ROW LEVEL SECURITY",
    "DROP POLICY department_isolation ON files",
    "CREATE POLICY everything ON records USING (true)",
    "ALTER POLICY department_isolation ON records USING (true)",
    "CREATE TABLE public.planted (x int)",
    "CREATE TABLE planted (x int)",
    "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA planted",
    "TRUNCATE outbox",  # TRUNCATE ignores row-level security
    "INSERT INTO schema_version (version) VALUES (2)",
    "DROP TABLE records",
    "SET ROLE postgres",
    "ALTER ROLE {role} BYPASSRLS",
    "ALTER ROLE {role} SUPERUSER",
    "ALTER ROLE {role} CREATEDB",
]


async def test_the_role_cannot_weaken_or_leave_its_isolation(
    step: PostgresTenantDatabase,
    departments: Departments,
    admin: asyncpg.Connection,
    connect_as: Callable[[str], asyncpg.Connection],
) -> None:
    department_id = departments.new()
    role = schema_of(department_id)
    await step.apply(ctx(department_id))
    conn = await connect_as(department_id)
    allowed: list[str] = []
    try:
        for statement in ESCAPES:
            try:
                await conn.execute(statement.format(role=quote_ident(role)))
            except asyncpg.InsufficientPrivilegeError:
                continue
            allowed.append(statement)
    finally:
        await conn.close()
    assert allowed == []
    # PostgreSQL 15 revokes CREATE on schema public from PUBLIC; the role gets it nowhere.
    for schema in ("public", role):
        assert await admin.fetchval("SELECT has_schema_privilege($1, $2, 'CREATE')", role, schema) is False


# --- compensate ------------------------------------------------------------------------


async def test_compensate_removes_schema_and_role_and_is_idempotent(
    step: PostgresTenantDatabase,
    departments: Departments,
    admin: asyncpg.Connection,
    connect_as: Callable[[str], asyncpg.Connection],
) -> None:
    department_id = departments.new()
    name = schema_of(department_id)
    await step.apply(ctx(department_id))
    session = await connect_as(department_id)  # a department service still connected
    await insert_execution(session, "e1")

    await step.compensate(ctx(department_id))

    assert await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", name) == 0
    assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name) == 0
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.InterfaceError)):
        await session.fetchval("SELECT 1")
    session.terminate()
    await step.compensate(ctx(department_id))  # nothing left: still fine
    await step.compensate(ctx(departments.new()))  # never applied: fine too


async def test_compensate_also_drops_privileges_granted_elsewhere(
    step: PostgresTenantDatabase, departments: Departments, admin: asyncpg.Connection
) -> None:
    a, b = departments.new("a"), departments.new("b")
    await step.apply(ctx(a))
    await step.apply(ctx(b))
    await admin.execute(f'GRANT USAGE ON SCHEMA "{schema_of(b)}" TO "{schema_of(a)}"')

    await step.compensate(ctx(a))  # DROP ROLE alone would refuse: A holds a grant on B's schema

    assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", schema_of(a)) == 0
    assert (await step.check(ctx(b))).healthy


# --- check -----------------------------------------------------------------------------


async def test_check_reports_ready_then_each_weakness_and_apply_heals_it(
    step: PostgresTenantDatabase, departments: Departments, admin: asyncpg.Connection
) -> None:
    department_id = departments.new()
    name = schema_of(department_id)
    await step.apply(ctx(department_id))

    ready = await step.check(ctx(department_id))
    assert (ready.step, ready.healthy, ready.reason) == (StepName.DATABASE, True, "READY")

    breakages = [
        (f'ALTER TABLE "{name}".outbox DISABLE ROW LEVEL SECURITY', "POLICY_MISSING", "outbox"),
        (f'ALTER TABLE "{name}".files NO FORCE ROW LEVEL SECURITY', "POLICY_MISSING", "files"),
        (f'DROP POLICY department_isolation ON "{name}".records', "POLICY_MISSING", "records"),
        (f'ALTER ROLE "{name}" BYPASSRLS', "ROLE_PRIVILEGED", "bypassrls"),
        (f'REVOKE SELECT ON "{name}".records FROM "{name}"', "ACCESS_DENIED", "permission denied"),
        (f'ALTER ROLE "{name}" RESET app.department_id', "MISCONFIGURED", "app.department_id"),
    ]
    for statement, reason, mentioned in breakages:
        await admin.execute(statement)
        condition = await step.check(ctx(department_id))
        assert (condition.healthy, condition.reason) == (False, reason), statement
        assert mentioned in condition.message
        await step.apply(ctx(department_id))  # converges back
        assert (await step.check(ctx(department_id))).healthy, statement

    # A second permissive policy would OR in rows; apply leaves it for a human to judge.
    await admin.execute(f'CREATE POLICY leak ON "{name}".records USING (true)')
    leaking = await step.check(ctx(department_id))
    assert (leaking.healthy, leaking.reason) == (False, "POLICY_UNEXPECTED")
    assert "leak" in leaking.message


async def test_check_reports_missing_and_unreachable_departments(
    step: PostgresTenantDatabase, departments: Departments
) -> None:
    never = await step.check(ctx(departments.new()))
    assert (never.healthy, never.reason) == (False, "NOT_PROVISIONED")

    offline = PostgresTenantDatabase(closed_port_url(), unused_password)
    try:
        condition = await offline.check(ctx(departments.new()))
    finally:
        await offline.close()
    assert (condition.healthy, condition.reason) == (False, "UNREACHABLE")


# --- errors and configuration ----------------------------------------------------------


async def test_an_unreachable_server_is_a_retryable_error() -> None:
    offline = PostgresTenantDatabase(closed_port_url(), unused_password)
    try:
        for operation in (offline.apply, offline.compensate):
            with pytest.raises(TransientStepError) as raised:
                await operation(ctx("sales"))
            assert raised.value.retryable
            assert isinstance(raised.value.__cause__, OSError)
    finally:
        await offline.close()


@pytest.mark.parametrize("department_id", HOSTILE_IDS)
async def test_hostile_ids_are_refused_before_any_sql(department_id: str) -> None:
    asked: list[str] = []

    async def password_for(department: str) -> str:
        asked.append(department)
        return "unused-password"

    # Any SQL would need a connection, and this server refuses them (a retryable error):
    # a plain StepError proves the id was refused first.
    step = PostgresTenantDatabase(closed_port_url(), password_for)
    try:
        for operation in (step.apply, step.compensate):
            with pytest.raises(StepError, match="breaks the spec rules") as raised:
                await operation(ctx(department_id))
            assert type(raised.value) is StepError  # not retryable, and not a refused connection
        condition = await step.check(ctx(department_id))
    finally:
        await step.close()
    assert (condition.healthy, condition.reason) == (False, "INVALID_DEPARTMENT_ID")
    assert asked == []
    with pytest.raises(StepError):
        department_names(department_id)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("mysql://root:hunter2@db/tenants", {}),
        ("postgresql://postgres@db/tenants", {"template_version": 0}),
        ("postgresql://postgres@db/tenants", {"template_version": 99}),
        ("postgresql://postgres@db/tenants", {"connection_limit": 0}),
        ("postgresql://postgres@db/tenants", {"timeout": 0}),
    ],
)
def test_bad_configuration_is_refused_when_built(url: str, options: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PostgresTenantDatabase(url, unused_password, **options)
    assert "hunter2" not in str(raised.value)
