-- An instance's network interface: a MAC and a private address in one subnet of one VPC,
-- allocated when it is made and given back when it is deleted. Added and removed only while
-- its instance is stopped. `slot` is its position on the instance (the primary is 0).
CREATE TABLE IF NOT EXISTS network_interface (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    instance_id UUID NOT NULL REFERENCES instance (id),
    vpc_id UUID NOT NULL REFERENCES vpc (id),
    subnet_id UUID NOT NULL REFERENCES vpc_subnet (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    mac INT8 NOT NULL CHECK (mac BETWEEN 0 AND 281474976710655),
    ip INET NOT NULL,
    ipv6 INET,
    is_primary BOOL NOT NULL,
    slot INT4 NOT NULL CHECK (slot BETWEEN 0 AND 7)
);
