-- Storage (see ARCHITECTURE.md, "Disks and regions"): what a sled offers for regions, and the
-- running total of its region rows' sizes, kept by a conditional UPDATE like the VMM
-- reservation totals. 0: the sled holds no regions.
ALTER TABLE sled ADD COLUMN IF NOT EXISTS usable_storage INT8 NOT NULL DEFAULT 0
    CHECK (usable_storage >= 0);
