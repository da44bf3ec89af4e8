CREATE UNIQUE INDEX IF NOT EXISTS lookup_silo_by_name ON silo (name) WHERE time_deleted IS NULL;
