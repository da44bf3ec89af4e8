-- No two live interfaces share an address in a subnet: racing allocations that picked the
-- same address lose here, and the loser picks again.
CREATE UNIQUE INDEX IF NOT EXISTS network_interface_ip_in_subnet
    ON network_interface (subnet_id, ip) WHERE time_deleted IS NULL;
