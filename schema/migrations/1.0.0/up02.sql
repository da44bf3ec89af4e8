CREATE TABLE IF NOT EXISTS project (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    -- Child resource generation: every instance insert bumps it, so a delete that found the
    -- project empty cannot race an insert (the delete is conditional on the rcgen it saw).
    rcgen INT8 NOT NULL CHECK (rcgen >= 1)
);
