CREATE INDEX IF NOT EXISTS network_interface_by_vpc
    ON network_interface (vpc_id) WHERE time_deleted IS NULL;
