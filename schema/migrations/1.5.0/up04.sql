-- One disk per slot of an instance: with the slot's range, at most 8 disks per instance.
CREATE UNIQUE INDEX IF NOT EXISTS disk_one_per_slot
    ON disk (attach_instance_id, slot) WHERE attach_instance_id IS NOT NULL;
