CREATE UNIQUE INDEX IF NOT EXISTS network_interface_mac_in_vpc
    ON network_interface (vpc_id, mac) WHERE time_deleted IS NULL;
