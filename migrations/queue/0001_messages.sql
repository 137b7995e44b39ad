-- The embedded durable queue. Lives in its own SQLite file, apart from the orders
-- database, so that carts keep queuing while the orders database migrates.
-- Times are unix milliseconds (UTC).

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,        -- FIFO order
    address      TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    properties   TEXT    NOT NULL,           -- JSON object of typed properties
    body         BLOB    NOT NULL,
    enqueued_at  INTEGER NOT NULL,
    visible_at   INTEGER NOT NULL,           -- not handed out before this: lease or backoff
    attempts     INTEGER NOT NULL DEFAULT 0, -- failed attempts (release does not count)
    deliveries   INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    lease_owner  TEXT,
    lease_token  INTEGER
);

-- Covers "next visible messages of this address in FIFO order" without a sort.
CREATE INDEX messages_ready ON messages (address, id, visible_at);
CREATE INDEX messages_by_message_id ON messages (message_id);
CREATE INDEX messages_leased ON messages (lease_owner) WHERE lease_owner IS NOT NULL;

-- Dead letters are kept, never dropped.
CREATE TABLE dead_letters (
    id               INTEGER PRIMARY KEY,
    address          TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    properties       TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    reason           TEXT    NOT NULL,
    detail           TEXT    NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);

CREATE INDEX dead_letters_by_message_id ON dead_letters (message_id);
