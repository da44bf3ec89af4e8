-- The saga log: what steno's SecStore writes, so a restarted Nexus can resume its sagas.
CREATE TABLE IF NOT EXISTS saga (
    id UUID NOT NULL PRIMARY KEY,
    -- The Nexus (saga execution coordinator) that created the saga.
    creator UUID NOT NULL,
    -- The Nexus that currently owns it and must drive it to completion.
    current_sec UUID NOT NULL,
    name TEXT NOT NULL,
    -- The saga's DAG as steno serializes it, including the saga's parameters.
    dag JSONB NOT NULL,
    saga_state TEXT NOT NULL CHECK (saga_state IN ('running', 'unwinding', 'done')),
    -- Bumped whenever another Nexus adopts the saga.
    adopt_generation INT8 NOT NULL CHECK (adopt_generation >= 1),
    time_created TIMESTAMPTZ NOT NULL,
    adopt_time TIMESTAMPTZ NOT NULL
);
