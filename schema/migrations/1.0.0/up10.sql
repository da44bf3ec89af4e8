CREATE INDEX IF NOT EXISTS vmm_history_by_instance ON vmm (instance_id, time_created);
