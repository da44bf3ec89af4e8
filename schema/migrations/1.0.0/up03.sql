CREATE UNIQUE INDEX IF NOT EXISTS lookup_project_by_name
    ON project (name) WHERE time_deleted IS NULL;
