-- One region's point-in-time copy for a snapshot, on the region's sled: a storage reservation
-- (its size counts in the sled's reserved_storage) like a region's. A row exists exactly while
-- the space is held; releasing it deletes it. The region may be gone since (a disk deleted
-- after its snapshot was taken keeps its snapshots).
CREATE TABLE IF NOT EXISTS region_snapshot (
    snapshot_id UUID NOT NULL REFERENCES snapshot (id),
    region_id UUID NOT NULL,
    sled_id UUID NOT NULL REFERENCES sled (id),
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    time_created TIMESTAMPTZ NOT NULL,
    -- Where the sled serves it read-only over NBD (host:port; the export's name is
    -- `<region_id>.<snapshot_id>`), recorded once the sled agent made it; NULL for a simulated
    -- sled's and before then.
    export_address TEXT,
    PRIMARY KEY (snapshot_id, region_id)
);
