-- A disk: a virtual block device a user creates in a project and attaches to an instance.
-- Its data lives on its regions (three, on three sleds).
CREATE TABLE IF NOT EXISTS disk (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    -- Runtime state, protected by state_generation: it changes iff one of these does.
    state TEXT NOT NULL CHECK (state IN (
        'creating', 'detached', 'attaching', 'attached', 'detaching', 'faulted', 'destroyed'
    )),
    attach_instance_id UUID,
    state_generation INT8 NOT NULL CHECK (state_generation >= 1),
    time_state_updated TIMESTAMPTZ NOT NULL,
    CONSTRAINT disk_size_whole_blocks CHECK (size_bytes % block_size = 0),
    -- A disk names an instance exactly while it is attaching, attached or detaching.
    CONSTRAINT disk_instance_iff_attached CHECK (
        (state IN ('attaching', 'attached', 'detaching')) = (attach_instance_id IS NOT NULL)
    )
);
