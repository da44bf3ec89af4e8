CREATE TABLE IF NOT EXISTS db_metadata (
    singleton BOOL NOT NULL PRIMARY KEY CHECK (singleton = TRUE),
    version TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL
);
