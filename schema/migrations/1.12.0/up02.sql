CREATE INDEX IF NOT EXISTS creating_vmm_by_time_state_updated
    ON vmm (time_state_updated) WHERE state = 'creating' AND time_deleted IS NULL;
