CREATE TABLE IF NOT EXISTS saga_node_event (
    saga_id UUID NOT NULL REFERENCES saga (id),
    node_id INT8 NOT NULL CHECK (node_id >= 0),
    event_type TEXT NOT NULL CHECK (event_type IN (
        'started', 'succeeded', 'failed', 'undo_started', 'undo_finished', 'undo_failed'
    )),
    -- The action's output (succeeded) or error (failed, undo_failed).
    data JSONB,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    -- One event of each type per node: recording an event twice is a no-op.
    PRIMARY KEY (saga_id, node_id, event_type)
);
