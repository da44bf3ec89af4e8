CREATE UNIQUE INDEX IF NOT EXISTS vpc_by_vni ON vpc (vni) WHERE time_deleted IS NULL;
