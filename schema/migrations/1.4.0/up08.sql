CREATE INDEX IF NOT EXISTS region_by_sled ON region (sled_id);
