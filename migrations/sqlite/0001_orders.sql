-- Purchase orders, their lines and status history, and rejected checkouts (DESIGN §5).
-- Money is integer minor units; UUIDs are 16-byte BLOBs; times are RFC 3339 UTC text.

CREATE TABLE orders (
    id                BLOB    PRIMARY KEY NOT NULL,
    cart_id           BLOB    NOT NULL UNIQUE,
    customer_id       TEXT,
    customer_name     TEXT    NOT NULL,
    customer_email    TEXT    NOT NULL,
    customer_phone    TEXT,
    ship_line1        TEXT    NOT NULL,
    ship_line2        TEXT,
    ship_city         TEXT    NOT NULL,
    ship_region       TEXT,
    ship_postal_code  TEXT,
    ship_country      TEXT    NOT NULL CHECK (length(ship_country) = 2),
    currency          TEXT    NOT NULL CHECK (length(currency) = 3),
    total             INTEGER NOT NULL CHECK (total >= 0),
    source            TEXT    NOT NULL CHECK (source IN ('queue', 'direct')),
    payload_hash      TEXT    NOT NULL,
    created_at        TEXT    NOT NULL,
    transport_partner TEXT,
    tracking_id       TEXT
) STRICT;

CREATE TABLE order_lines (
    order_id   BLOB    NOT NULL REFERENCES orders (id),
    line_no    INTEGER NOT NULL,
    sku        TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    unit_price INTEGER NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, line_no)
) STRICT;

-- Append-only; (order_id, status) unique so that a repeated status is discarded.
CREATE TABLE order_status (
    seq      INTEGER PRIMARY KEY,
    order_id BLOB    NOT NULL REFERENCES orders (id),
    status   TEXT    NOT NULL,
    at       TEXT    NOT NULL,
    UNIQUE (order_id, status)
) STRICT;

-- What was dead-lettered, so that checkout status can say `rejected` and why.
CREATE TABLE rejected_checkouts (
    seq     INTEGER PRIMARY KEY,
    cart_id BLOB    NOT NULL,
    reason  TEXT    NOT NULL,
    detail  TEXT    NOT NULL,
    at      TEXT    NOT NULL
) STRICT;

CREATE INDEX rejected_checkouts_by_cart ON rejected_checkouts (cart_id);
