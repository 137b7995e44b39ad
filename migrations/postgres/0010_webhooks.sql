-- Webhooks (issue 20): the storefront's receivers, and one delivery row per event and
-- receiver, so that each is retried, ordered per cart and replayed on its own.

-- The transaction that wrote each event. `seq` is write order, not commit order: a
-- transaction that commits late adds an event below a `seq` already read. Events are
-- fanned out to receivers only once every transaction older than theirs has ended
-- (`pg_snapshot_xmin`), in (txid, seq) order, so none is skipped. That is not a cart's
-- order (a reply batch can write a later event under an older transaction id than the
-- relay's earlier one): deliveries go per cart by `seq`, which is (a cart's later event is
-- written after its earlier one committed), and wait for a cart's earlier events still
-- to be fanned out. Events written before this migration keep NULL: never due.
ALTER TABLE events ADD COLUMN txid xid8;
ALTER TABLE events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX events_by_txid ON events (txid, seq);

CREATE TABLE webhook_endpoints (
    id            TEXT        PRIMARY KEY,   -- ep_<uuid>, or `config` for CARTBUS_WEBHOOK_URL
    url           TEXT        NOT NULL,
    description   TEXT        NOT NULL DEFAULT '',
    event_types   TEXT,                      -- comma-separated; NULL = every type
    -- whsec_… secrets, newest first, comma-separated: every one signs each call, so a
    -- receiver rotating its secret accepts calls throughout.
    secrets       TEXT        NOT NULL,
    old_secret_until TIMESTAMPTZ,            -- when the older secrets stop signing
    -- enabled; failing (a delivery ran out of retries: probed every retry cap, back to
    -- enabled on the first 2xx); disabled (by an operator, or the receiver answered 410).
    state         TEXT        NOT NULL DEFAULT 'enabled'
                  CHECK (state IN ('enabled', 'failing', 'disabled')),
    state_reason  TEXT,
    state_since   TIMESTAMPTZ NOT NULL,
    probe_at      TIMESTAMPTZ,               -- failing: the next probe
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE webhook_deliveries (
    id            BIGSERIAL   PRIMARY KEY,
    endpoint_id   TEXT        NOT NULL REFERENCES webhook_endpoints (id),
    event_seq     BIGINT      NOT NULL REFERENCES events (seq),
    cart_id       UUID        NOT NULL,
    -- pending (to send, or retrying) or delivered (a 2xx came back).
    state         TEXT        NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'delivered')),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    next_at       TIMESTAMPTZ NOT NULL,
    leased_by     TEXT,
    leased_until  TIMESTAMPTZ,
    last_status   INTEGER,                   -- HTTP status of the last attempt
    last_error    TEXT,
    last_attempt_at TIMESTAMPTZ,
    delivered_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL
);

-- What a deliverer claims: an endpoint's pending rows, oldest due first; and whether an
-- earlier row of the same cart is still pending (then a later one waits).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_at, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_cart ON webhook_deliveries (endpoint_id, cart_id, event_seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (endpoint_id, event_seq);

-- How far the fan-out has read events: every event at or below (txid, seq) has its rows.
CREATE TABLE webhook_fanout (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    txid  xid8    NOT NULL,
    seq   BIGINT  NOT NULL
);
INSERT INTO webhook_fanout (id, txid, seq) VALUES (1, '0', 0);
