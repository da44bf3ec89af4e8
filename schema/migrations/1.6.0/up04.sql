CREATE INDEX IF NOT EXISTS region_snapshot_by_sled ON region_snapshot (sled_id);
