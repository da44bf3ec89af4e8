CREATE INDEX IF NOT EXISTS instance_by_active_vmm
    ON instance (active_propolis_id) WHERE active_propolis_id IS NOT NULL;
