CREATE UNIQUE INDEX IF NOT EXISTS network_interface_slot_on_instance
    ON network_interface (instance_id, slot) WHERE time_deleted IS NULL;
