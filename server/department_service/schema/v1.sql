-- Department database, schema version 1.
-- Applied by department_service.schema.create inside one transaction: every statement must
-- be safe to run again (IF NOT EXISTS), because create() is idempotent.

CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);

-- One row per webhook call that reached a deployed workflow, whatever its outcome.
-- request and result are JSON; received_at is ISO-8601 UTC with a fixed width
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ), so text order is time order.
CREATE TABLE IF NOT EXISTS workflow_executions (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT NOT NULL
);

-- GET /executions lists newest first, for one workflow or for all.
CREATE INDEX IF NOT EXISTS workflow_executions_by_workflow
    ON workflow_executions (workflow, received_at);
CREATE INDEX IF NOT EXISTS workflow_executions_by_time
    ON workflow_executions (received_at);

-- email workflow: messages waiting to be sent.
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL REFERENCES workflow_executions (id),
    created_at TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_execution ON outbox (execution_id);

-- google_drive workflow: file entries.
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL REFERENCES workflow_executions (id),
    created_at TEXT NOT NULL,
    folder TEXT NOT NULL,
    name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_execution ON files (execution_id);

-- database workflow: the request objects themselves (JSON).
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL REFERENCES workflow_executions (id),
    created_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_execution ON records (execution_id);
