CREATE TABLE IF NOT EXISTS migration (
    id UUID NOT NULL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES instance (id),
    source_propolis_id UUID NOT NULL,
    target_propolis_id UUID NOT NULL,
    source_state TEXT NOT NULL
        CHECK (source_state IN ('pending', 'in_progress', 'completed', 'failed')),
    source_generation INT8 NOT NULL CHECK (source_generation >= 1),
    time_source_updated TIMESTAMPTZ,
    target_state TEXT NOT NULL
        CHECK (target_state IN ('pending', 'in_progress', 'completed', 'failed')),
    target_generation INT8 NOT NULL CHECK (target_generation >= 1),
    time_target_updated TIMESTAMPTZ,
    time_created TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    CONSTRAINT source_differs_from_target CHECK (source_propolis_id != target_propolis_id)
);
