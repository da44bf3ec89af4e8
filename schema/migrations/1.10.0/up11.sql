CREATE UNIQUE INDEX IF NOT EXISTS network_interface_primary_on_instance
    ON network_interface (instance_id) WHERE is_primary AND time_deleted IS NULL;
