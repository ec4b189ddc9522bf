-- Department data model, template version 1 (PostgreSQL).
--
-- Applied by provisioner.steps.tenant_postgres inside the transaction that provisions a
-- department, with search_path set to that department's schema (then pg_temp): names
-- here are unqualified and nothing is ever substituted into this file. Template vN
-- moves a schema from version N-1 to N and runs once, recorded in schema_version; still,
-- every statement is safe to run again (IF NOT EXISTS), in case a version is re-applied
-- by hand.
--
-- Every table carries department_id, filled from the session's app.department_id (the
-- department role's default), because the adapter enables and forces row-level security
-- on every table of the schema with the policy
--     department_id = current_setting('app.department_id', true)
-- and creates that policy after this file has run. A table without department_id would
-- make provisioning fail, which is the point.
--
-- The tables mirror the department service's SQLite model (department_service/schema/
-- v1.sql) with PostgreSQL types: timestamptz for times, jsonb for JSON.

-- Which template versions this schema has been through; written by the provisioner
-- only (the department role may read it, not change it).
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per webhook call that reached a deployed workflow, whatever its outcome.
CREATE TABLE IF NOT EXISTS workflow_executions (
    id text PRIMARY KEY,
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    workflow text NOT NULL,
    received_at timestamptz NOT NULL,
    status text NOT NULL,
    request jsonb NOT NULL,
    result jsonb NOT NULL
);

-- Listing executions newest first, for one workflow or for all.
CREATE INDEX IF NOT EXISTS workflow_executions_by_workflow
    ON workflow_executions (workflow, received_at);
CREATE INDEX IF NOT EXISTS workflow_executions_by_time
    ON workflow_executions (received_at);

-- email workflow: messages waiting to be sent.
CREATE TABLE IF NOT EXISTS outbox (
    id text PRIMARY KEY,
    execution_id text NOT NULL REFERENCES workflow_executions (id),
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    created_at timestamptz NOT NULL DEFAULT now(),
    recipient text NOT NULL,
    subject text NOT NULL,
    body text NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_execution ON outbox (execution_id);

-- google_drive workflow: file entries.
CREATE TABLE IF NOT EXISTS files (
    id text PRIMARY KEY,
    execution_id text NOT NULL REFERENCES workflow_executions (id),
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    created_at timestamptz NOT NULL DEFAULT now(),
    folder text NOT NULL,
    name text NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_execution ON files (execution_id);

-- database workflow: the request objects themselves.
CREATE TABLE IF NOT EXISTS records (
    id text PRIMARY KEY,
    execution_id text NOT NULL REFERENCES workflow_executions (id),
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    created_at timestamptz NOT NULL DEFAULT now(),
    data jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_execution ON records (execution_id);
