CREATE UNIQUE INDEX IF NOT EXISTS lookup_vpc_subnet_by_vpc
    ON vpc_subnet (vpc_id, name) WHERE time_deleted IS NULL;
