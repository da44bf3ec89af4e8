CREATE TABLE IF NOT EXISTS instance (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    ncpus INT8 NOT NULL CHECK (ncpus >= 1),
    memory INT8 NOT NULL CHECK (memory >= 1),
    hostname TEXT NOT NULL,

    -- Runtime state, all protected by state_generation: it changes iff one of these does.
    nexus_state TEXT NOT NULL
        CHECK (nexus_state IN ('creating', 'no_vmm', 'vmm', 'failed', 'destroyed')),
    active_propolis_id UUID,
    target_propolis_id UUID,
    migration_id UUID,
    state_generation INT8 NOT NULL CHECK (state_generation >= 1),
    time_state_updated TIMESTAMPTZ NOT NULL,

    -- Nexus says "vmm" exactly when there is an active VMM.
    CONSTRAINT vmm_state_iff_active_vmm CHECK (
        (nexus_state = 'vmm') = (active_propolis_id IS NOT NULL)
    ),
    -- A migration has both a target VMM and a migration record, and needs a source.
    CONSTRAINT migration_needs_target_and_source CHECK (
        (migration_id IS NULL) = (target_propolis_id IS NULL)
        AND (target_propolis_id IS NULL OR active_propolis_id IS NOT NULL)
    ),
    CONSTRAINT target_differs_from_active CHECK (
        target_propolis_id IS NULL OR target_propolis_id != active_propolis_id
    )
);
