-- Department database, schema version 2: the email workflow sends its messages, and the
-- google_drive workflow keeps the files it is given.
-- Applied once, on a database at version 1, inside create()'s transaction.

-- What became of each message: pending (recorded, not yet handed to the relay), sent,
-- failed, or unsent (no relay configured). Rows from version 1 were never sent: unsent.
-- reply is the relay's answer ("250 2.0.0 Ok: queued as ...") or what went wrong first.
ALTER TABLE outbox ADD COLUMN status TEXT NOT NULL DEFAULT 'unsent';
ALTER TABLE outbox ADD COLUMN reply TEXT;
ALTER TABLE outbox ADD COLUMN settled_at TEXT;

-- The file itself, in the department's own database: stored with its execution in one
-- transaction, so a file is never listed without its bytes (or the reverse).
ALTER TABLE files ADD COLUMN content_type TEXT;
ALTER TABLE files ADD COLUMN size INTEGER;
ALTER TABLE files ADD COLUMN sha256 TEXT;
ALTER TABLE files ADD COLUMN content BLOB;
CREATE INDEX IF NOT EXISTS files_by_time ON files (created_at);
