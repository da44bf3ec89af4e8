CREATE UNIQUE INDEX IF NOT EXISTS lookup_network_interface_by_instance
    ON network_interface (instance_id, name) WHERE time_deleted IS NULL;
