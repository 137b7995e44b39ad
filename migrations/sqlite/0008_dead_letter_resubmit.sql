-- Resubmitting dead letters (issue 8). A dead letter is resolved when a resubmit made or
-- found its order (or applied the reply); until then it stays on the open list. Each
-- resubmit is counted against a replay limit, so a poison message cannot be tried forever.
ALTER TABLE dead_letters ADD COLUMN resubmits  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN resolved_at TEXT;
ALTER TABLE dead_letters ADD COLUMN resolution  TEXT;
ALTER TABLE dead_letters ADD COLUMN order_id    BLOB;

ALTER TABLE dead_letter_audit ADD COLUMN detail TEXT;
ALTER TABLE dead_letter_audit ADD COLUMN job_id BLOB;
CREATE INDEX dead_letter_audit_by_job ON dead_letter_audit (job_id, dead_letter_id);

-- A bulk resubmit: which dead letters (filter), and how far it got. Each dead letter is
-- resubmitted and `last_id` advanced in one transaction, so a job that dies halfway is
-- resumed from `last_id` and never resubmits one twice.
CREATE TABLE dead_letter_jobs (
    id          BLOB    PRIMARY KEY,
    actor       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    filter      TEXT    NOT NULL,    -- JSON
    state       TEXT    NOT NULL,    -- running | stopped | done
    last_id     INTEGER NOT NULL DEFAULT 0,
    owner       TEXT    NOT NULL,    -- instance running it
    skipped     INTEGER NOT NULL DEFAULT 0, -- passed over: payment in flight
    error       TEXT,                -- why it stopped early
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,    -- a heartbeat: advanced with every dead letter
    finished_at TEXT
) STRICT;
