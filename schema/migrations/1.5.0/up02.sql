-- A disk's position on its instance (0..7: at most 8 disks per instance), set exactly while
-- it names an instance.
ALTER TABLE disk ADD COLUMN IF NOT EXISTS slot INT4
    CONSTRAINT disk_slot_iff_attached CHECK (
        (slot IS NULL) = (attach_instance_id IS NULL) AND (slot IS NULL OR slot BETWEEN 0 AND 7)
    );
