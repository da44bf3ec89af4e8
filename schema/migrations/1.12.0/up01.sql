CREATE INDEX IF NOT EXISTS instance_with_vmm_by_time_state_updated
    ON instance (time_state_updated) WHERE nexus_state = 'vmm' AND time_deleted IS NULL;
