-- One incarnation of an instance on one sled ("propolis" in the design we learn from).
CREATE TABLE IF NOT EXISTS vmm (
    id UUID NOT NULL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES instance (id),
    sled_id UUID NOT NULL REFERENCES sled (id),
    propolis_ip INET NOT NULL,
    propolis_port INT4 NOT NULL CHECK (propolis_port BETWEEN 0 AND 65535),
    state TEXT NOT NULL CHECK (state IN (
        'creating', 'starting', 'running', 'stopping', 'stopped', 'rebooting', 'migrating',
        'failed', 'destroyed', 'saga_unwound'
    )),
    generation INT8 NOT NULL CHECK (generation >= 1),
    time_state_updated TIMESTAMPTZ NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
