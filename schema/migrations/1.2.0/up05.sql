CREATE UNIQUE INDEX IF NOT EXISTS lookup_user_by_silo
    ON silo_user (silo_id, name) WHERE time_deleted IS NULL;
