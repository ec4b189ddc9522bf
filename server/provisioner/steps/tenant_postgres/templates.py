"""The versioned department data model and the isolation every department schema gets.

Templates are `provisioner/steps/templates/postgres/v<N>.sql`, shipped as package data.
Template v1 creates the data model; v<N> moves a schema from N-1 to N. They run with
`search_path` set to the department's schema, so they never name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from provisioner.core.errors import ConfigurationError

#: The isolation policy every department table gets (see `ENFORCE_ISOLATION_SQL`).
POLICY_NAME = "department_isolation"

_CREATED_TABLE = re.compile(r"^\s*CREATE TABLE IF NOT EXISTS\s+([a-z_][a-z0-9_]*)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Template:
    """One version of the department data model."""

    version: int
    sql: str
    #: Tables this version creates, read from its `CREATE TABLE IF NOT EXISTS` lines.
    tables: tuple[str, ...]


def load_templates(version: int) -> tuple[Template, ...]:
    """Templates v1..v`version`, in order; `ConfigurationError` when one is missing."""
    if version < 1:
        raise ConfigurationError(f"tenant database template version must be 1 or more, not {version}")
    folder = resources.files("provisioner.steps") / "templates" / "postgres"
    found: list[Template] = []
    for number in range(1, version + 1):
        try:
            sql = (folder / f"v{number}.sql").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                f"tenant database template v{number} is missing (templates/postgres/v{number}.sql)"
            ) from None
        found.append(Template(number, sql, tuple(_CREATED_TABLE.findall(sql))))
    return tuple(found)


#: Enables and forces row-level security on every table of the current schema and gives
#: each the isolation policy, touching only what is missing: ALTER TABLE takes an ACCESS
#: EXCLUSIVE lock, which a re-apply should not take on a live department's tables.
#: FORCE makes the policy bind the tables' owner too (the admin, when not a superuser);
#: superusers and BYPASSRLS roles are never bound, which is why the department role is
#: neither. Fixed text: it reads the schema from `current_schema()`, the first entry of
#: the search_path the adapter set. The policy's `missing_ok` (true) makes an unset
#: setting NULL, so a session that never set `app.department_id` sees and writes nothing.
ENFORCE_ISOLATION_SQL = """
DO $isolation$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relrowsecurity, c.relforcerowsecurity
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = pg_catalog.current_schema() AND c.relkind IN ('r', 'p')
    LOOP
        IF NOT t.relrowsecurity THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        END IF;
        IF NOT t.relforcerowsecurity THEN
            EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        END IF;
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_policy p
            WHERE p.polrelid = t.rel AND p.polname = 'department_isolation'
        ) THEN
            EXECUTE format(
                'CREATE POLICY department_isolation ON %s'
                ' USING (department_id = current_setting(''app.department_id'', true))'
                ' WITH CHECK (department_id = current_setting(''app.department_id'', true))',
                t.rel
            );
        END IF;
    END LOOP;
END
$isolation$
"""
