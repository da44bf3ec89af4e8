CREATE INDEX IF NOT EXISTS instance_by_target_vmm
    ON instance (target_propolis_id) WHERE target_propolis_id IS NOT NULL;
