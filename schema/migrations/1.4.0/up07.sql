-- Never two regions of one disk on one sled: losing a sled loses at most one replica.
CREATE UNIQUE INDEX IF NOT EXISTS region_one_per_sled_per_disk ON region (disk_id, sled_id);
