-- Webhooks (issue 20): the storefront's receivers, and one delivery row per event and
-- receiver, so that each is retried, ordered per cart and replayed on its own. On SQLite
-- one writer at a time commits in `seq` order, so the fan-out reads events by `seq`.

CREATE TABLE webhook_endpoints (
    id            TEXT    PRIMARY KEY,       -- ep_<uuid>, or `config` for CARTBUS_WEBHOOK_URL
    url           TEXT    NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    event_types   TEXT,                      -- comma-separated; NULL = every type
    secrets       TEXT    NOT NULL,          -- whsec_… newest first, comma-separated
    old_secret_until TEXT,
    state         TEXT    NOT NULL DEFAULT 'enabled'
                  CHECK (state IN ('enabled', 'failing', 'disabled')),
    state_reason  TEXT,
    state_since   TEXT    NOT NULL,
    probe_at      TEXT,
    created_at    TEXT    NOT NULL
);

CREATE TABLE webhook_deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id   TEXT    NOT NULL REFERENCES webhook_endpoints (id),
    event_seq     INTEGER NOT NULL REFERENCES events (seq),
    cart_id       BLOB    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'delivered')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       TEXT    NOT NULL,
    leased_by     TEXT,
    leased_until  TEXT,
    last_status   INTEGER,
    last_error    TEXT,
    last_attempt_at TEXT,
    delivered_at  TEXT,
    created_at    TEXT    NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_at, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_cart ON webhook_deliveries (endpoint_id, cart_id, event_seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (endpoint_id, event_seq);

CREATE TABLE webhook_fanout (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL
);
-- Events written before this migration were never due to a receiver.
INSERT INTO webhook_fanout (id, seq) VALUES (1, (SELECT COALESCE(MAX(seq), 0) FROM events));
