-- cartbus's own record of every dead-lettered message, whichever queue backend it came
-- from: a broker without a dead-letter exchange drops rejected messages, so the record is
-- committed before the message is rejected.
CREATE TABLE dead_letters (
    id             BIGSERIAL   PRIMARY KEY,
    source         TEXT        NOT NULL,            -- queue address it came from
    message_id     TEXT        NOT NULL,
    body_hash      TEXT        NOT NULL,            -- SHA-256 of body: the same message seen again
    reason         TEXT        NOT NULL,
    detail         TEXT        NOT NULL,
    attempts       INTEGER     NOT NULL,
    content_type   TEXT        NOT NULL,
    properties     JSONB       NOT NULL,
    body           BYTEA       NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL,
    times_seen     INTEGER     NOT NULL DEFAULT 1,
    resubmitted_at TIMESTAMPTZ,
    deleted_at     TIMESTAMPTZ,
    deleted_by     TEXT,
    deleted_why    TEXT,
    UNIQUE (source, message_id, body_hash)
);
CREATE INDEX dead_letters_by_reason ON dead_letters (reason, id);

-- Failed attempts per message, for brokers whose delivery count cannot be trusted.
CREATE TABLE delivery_attempts (
    source     TEXT        NOT NULL,
    message_id TEXT        NOT NULL,
    attempts   INTEGER     NOT NULL,
    last_error TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, message_id)
);
