CREATE UNIQUE INDEX IF NOT EXISTS lookup_snapshot_by_project
    ON snapshot (project_id, name) WHERE time_deleted IS NULL;
