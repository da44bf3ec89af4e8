CREATE INDEX IF NOT EXISTS live_vmm_by_sled ON vmm (sled_id) WHERE time_deleted IS NULL;
