-- Smoke checkouts (issue 21): the last run of each version, for the deploy-window page.
-- A run keeps nothing else: this row is what it says about itself.
CREATE TABLE smoke_runs (
    version   TEXT        PRIMARY KEY,
    instance  TEXT        NOT NULL,
    at        TIMESTAMPTZ NOT NULL,
    ok        BOOLEAN     NOT NULL,
    summary   TEXT        NOT NULL   -- outcomes by count, or the failed step and why
);
