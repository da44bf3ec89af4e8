-- The region a region-replacement saga is replacing (one of the disk's regions, on an expunged
-- sled); NULL when none is. While set, the disk is not attached, detached, deleted or
-- snapshotted, and its instance is not started: the replacement copies a healthy replica that
-- nothing writes.
ALTER TABLE disk ADD COLUMN IF NOT EXISTS replacing_region_id UUID;
