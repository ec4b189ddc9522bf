-- Department data model, template v2 (from v1): the email workflow sends its messages,
-- and the google_drive workflow keeps the files it is given. Mirrors
-- department_service/schema/v2.sql.

-- pending, sent, failed or unsent; rows from v1 were never sent, hence the default.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'unsent';
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS reply text;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS settled_at timestamptz;

ALTER TABLE files ADD COLUMN IF NOT EXISTS content_type text;
ALTER TABLE files ADD COLUMN IF NOT EXISTS size bigint;
ALTER TABLE files ADD COLUMN IF NOT EXISTS sha256 text;
ALTER TABLE files ADD COLUMN IF NOT EXISTS content bytea;
CREATE INDEX IF NOT EXISTS files_by_time ON files (created_at);
