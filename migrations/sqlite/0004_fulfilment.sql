-- The fulfilment outbox (DESIGN §7): one row per order, written in the order's own
-- transaction, handed to the transport partner by a relay on any instance.

CREATE TABLE order_dispatch (
    order_id        BLOB        PRIMARY KEY REFERENCES orders (id),
    -- pending: not sent yet; error: a send failed, retried at next_attempt_at;
    -- processed: sent; critical_error: gave up after the retry limit, needs a person.
    process_status  TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (process_status IN ('pending', 'processed', 'error', 'critical_error')),
    locked_by       TEXT,
    locked_until    TEXT,
    batch_id        BLOB,
    retry_count     INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TEXT        NOT NULL,
    last_error      TEXT,
    partner         TEXT,
    created_at      TEXT        NOT NULL,
    processed_at    TEXT,
    version         INTEGER     NOT NULL DEFAULT 0
);

CREATE INDEX order_dispatch_due ON order_dispatch (next_attempt_at)
    WHERE process_status IN ('pending', 'error');
CREATE INDEX order_dispatch_by_status ON order_dispatch (process_status);
