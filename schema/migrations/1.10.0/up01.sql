-- A VPC: a project's private network. Its VNI tags its traffic between sleds, so VPCs never
-- see each other's packets, even with the same private addresses. Its mapping generation
-- orders the virtual-to-physical sets Nexus pushes to sleds: it is bumped each time a set is
-- read, so a newer set always comes from a later read.
CREATE TABLE IF NOT EXISTS vpc (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    dns_name TEXT NOT NULL,
    vni INT8 NOT NULL CHECK (vni BETWEEN 1024 AND 16777215),
    ipv6_prefix INET NOT NULL,
    v2p_generation INT8 NOT NULL CHECK (v2p_generation >= 1),
    -- Child resource generation: every subnet insert bumps it (subnets may not overlap).
    rcgen INT8 NOT NULL CHECK (rcgen >= 1)
);
