-- Dead letters as operators work them (issue 8): every action on one is kept, who and why.
CREATE TABLE dead_letter_audit (
    id             INTEGER PRIMARY KEY,
    dead_letter_id INTEGER NOT NULL REFERENCES dead_letters (id),
    action         TEXT    NOT NULL,        -- delete (resubmit to come)
    outcome        TEXT,
    order_id       BLOB,
    actor          TEXT    NOT NULL,
    reason         TEXT,
    at             TEXT    NOT NULL
) STRICT;
CREATE INDEX dead_letter_audit_by_letter ON dead_letter_audit (dead_letter_id, id);
CREATE INDEX dead_letters_by_source ON dead_letters (source, id);
CREATE INDEX dead_letters_by_last_seen ON dead_letters (last_seen, id);
