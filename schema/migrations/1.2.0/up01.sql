-- Identity (see ARCHITECTURE.md, "Authentication"). A silo holds users; one default silo
-- exists from the start (its id is fixed: DEFAULT_SILO_ID in db-model).
CREATE TABLE IF NOT EXISTS silo (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
