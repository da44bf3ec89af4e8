-- Disks on instances (see ARCHITECTURE.md, "Disks on instances"): the disk an instance boots
-- from, one of its attached disks; NULL: none.
ALTER TABLE instance ADD COLUMN IF NOT EXISTS boot_disk_id UUID;
