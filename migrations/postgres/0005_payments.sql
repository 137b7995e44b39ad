-- Payment capture, at most once (DESIGN §8). A row is written, and committed, with
-- `calling_payment` set before the payment endpoint is called; the result is written
-- after. A row with the flag set and no result (`payment_ok` NULL) means the call may or
-- may not have captured: never call again, a person resolves it.

CREATE TABLE payment_steps (
    cart_id         UUID        PRIMARY KEY,
    calling_payment BOOLEAN     NOT NULL,
    payment_ok      BOOLEAN,                  -- NULL: no result (unknown, or in flight)
    completed       BOOLEAN     NOT NULL DEFAULT false, -- a final result is recorded
    payment_id      TEXT,                     -- the payment service's id, when it gave one
    result_detail   TEXT,                     -- what came back, or why it is unknown
    amount          BIGINT      NOT NULL,     -- minor units
    currency        TEXT        NOT NULL,
    message_body    BYTEA       NOT NULL,     -- the cart message, to order it on resolution
    called_at       TIMESTAMPTZ NOT NULL,
    result_at       TIMESTAMPTZ,              -- when the result (or its absence) was known
    resolved_by     TEXT,                     -- an operator's resolution of an unknown
    resolved_reason TEXT,
    resolved_at     TIMESTAMPTZ
);

CREATE INDEX payment_steps_by_called_at ON payment_steps (called_at);
