CREATE UNIQUE INDEX IF NOT EXISTS lookup_disk_by_project
    ON disk (project_id, name) WHERE time_deleted IS NULL;
