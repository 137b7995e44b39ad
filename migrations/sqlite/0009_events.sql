-- Order events for the storefront (issue 20): one row per change a storefront hears
-- about, written in the transaction of that change, so that none is lost and none
-- reports a change that rolled back. Delivery (webhooks) reads them in `seq` order.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,    -- the order they happened in
    -- evt_<uuid>: stable per change (the same change never gets a second event), the
    -- receiver's dedupe key (`webhook-id`).
    id         TEXT    NOT NULL UNIQUE,
    type       TEXT    NOT NULL,                     -- checkout.ordered, order.status_changed, …
    cart_id    BLOB    NOT NULL,
    order_id   BLOB,
    data       TEXT    NOT NULL,                     -- the event's JSON payload
    created_at TEXT    NOT NULL
);

CREATE INDEX events_by_cart ON events (cart_id, seq);
CREATE INDEX events_by_time ON events (created_at);
