-- The fulfilment outbox (DESIGN §7): one row per order, written in the order's own
-- transaction, handed to the transport partner by a relay on any instance.

CREATE TABLE order_dispatch (
    order_id        UUID        PRIMARY KEY REFERENCES orders (id),
    -- pending: not sent yet; error: a send failed, retried at next_attempt_at;
    -- processed: sent; critical_error: gave up after the retry limit, needs a person.
    process_status  TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (process_status IN ('pending', 'processed', 'error', 'critical_error')),
    locked_by       TEXT,                   -- instance holding the lease
    locked_until    TIMESTAMPTZ,            -- lease end; a lapsed lease frees the row
    batch_id        UUID,                   -- the relay batch that holds it
    retry_count     INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    partner         TEXT,                   -- who it was sent to
    created_at      TIMESTAMPTZ NOT NULL,
    processed_at    TIMESTAMPTZ,
    version         INTEGER     NOT NULL DEFAULT 0  -- +1 on every change
);

-- What the relay looks for: rows still to send, oldest due first.
CREATE INDEX order_dispatch_due ON order_dispatch (next_attempt_at)
    WHERE process_status IN ('pending', 'error');
CREATE INDEX order_dispatch_by_status ON order_dispatch (process_status);
