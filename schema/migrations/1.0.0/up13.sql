CREATE INDEX IF NOT EXISTS migration_by_instance ON migration (instance_id, time_created);
