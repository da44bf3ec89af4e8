CREATE INDEX IF NOT EXISTS disk_by_creating_instance
    ON disk (created_by_instance_id) WHERE created_by_instance_id IS NOT NULL;
