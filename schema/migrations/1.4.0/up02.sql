ALTER TABLE sled ADD COLUMN IF NOT EXISTS reserved_storage INT8 NOT NULL DEFAULT 0
    CHECK (reserved_storage >= 0 AND reserved_storage <= usable_storage);
