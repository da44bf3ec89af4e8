CREATE UNIQUE INDEX IF NOT EXISTS lookup_instance_by_project
    ON instance (project_id, name) WHERE time_deleted IS NULL;
