CREATE INDEX IF NOT EXISTS disk_by_instance
    ON disk (attach_instance_id) WHERE attach_instance_id IS NOT NULL;
