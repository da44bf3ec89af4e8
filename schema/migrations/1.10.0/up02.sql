CREATE UNIQUE INDEX IF NOT EXISTS lookup_vpc_by_project
    ON vpc (project_id, name) WHERE time_deleted IS NULL;
