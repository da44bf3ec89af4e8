-- A user of a silo, created by an operator (`omdb db users create`).
CREATE TABLE IF NOT EXISTS silo_user (
    id UUID NOT NULL PRIMARY KEY,
    silo_id UUID NOT NULL REFERENCES silo (id),
    name TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
