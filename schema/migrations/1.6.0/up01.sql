-- A snapshot: a point-in-time, read-only copy of a disk, kept as one region snapshot on each
-- of the disk's regions' sleds (see ARCHITECTURE.md, "Snapshots").
CREATE TABLE IF NOT EXISTS snapshot (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    disk_id UUID NOT NULL REFERENCES disk (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'faulted', 'destroyed')),
    -- Deleted exactly when destroyed.
    CONSTRAINT snapshot_deleted_iff_destroyed CHECK (
        (state = 'destroyed') = (time_deleted IS NOT NULL)
    )
);
