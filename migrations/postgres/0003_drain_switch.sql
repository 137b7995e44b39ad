-- The drain switch (DESIGN §6): the desired consumer state every instance obeys, its
-- append-only audit trail, and each instance's heartbeat of what it actually does.

CREATE TABLE consumer_control (
    id             INTEGER     PRIMARY KEY CHECK (id = 1),
    desired        TEXT        NOT NULL CHECK (desired IN ('running', 'paused')),
    active_version TEXT,                      -- NULL: any version may consume
    reason         TEXT,
    changed_at     TIMESTAMPTZ NOT NULL,
    changed_by     TEXT        NOT NULL,
    until          TIMESTAMPTZ,               -- a pause that lifts itself
    revision       BIGINT      NOT NULL       -- +1 on every change
);
INSERT INTO consumer_control (id, desired, changed_at, changed_by, revision)
VALUES (1, 'running', now(), 'migration', 0);

CREATE TABLE consumer_control_history (
    id             BIGSERIAL   PRIMARY KEY,
    revision       BIGINT      NOT NULL,
    action         TEXT        NOT NULL,      -- pause, resume, expire
    desired        TEXT        NOT NULL,
    active_version TEXT,
    reason         TEXT,
    until          TIMESTAMPTZ,
    changed_at     TIMESTAMPTZ NOT NULL,
    changed_by     TEXT        NOT NULL
);

CREATE TABLE consumer_instances (
    instance       TEXT        PRIMARY KEY,
    version        TEXT        NOT NULL,
    schema_version BIGINT      NOT NULL,      -- newest migration this binary knows
    state          TEXT        NOT NULL,      -- running, pausing, paused, passive, fenced, stopped
    in_flight      INTEGER     NOT NULL,
    processed      BIGINT      NOT NULL,      -- deliveries settled since start
    accepted       BIGINT      NOT NULL,      -- carts queued by this instance since start
    seen_revision  BIGINT      NOT NULL,      -- the switch revision the state answers to
    started_at     TIMESTAMPTZ NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL
);
