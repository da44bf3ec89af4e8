-- A subnet of a VPC: the IPv4 block its interfaces' private addresses come from (the first
-- five and the last address are reserved), and an IPv6 /64 of the VPC's prefix.
CREATE TABLE IF NOT EXISTS vpc_subnet (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    vpc_id UUID NOT NULL REFERENCES vpc (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    ipv4_block INET NOT NULL,
    ipv6_block INET NOT NULL
);
