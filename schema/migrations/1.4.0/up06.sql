-- One replica of a disk's data on one sled: a storage reservation (its size counts in the
-- sled's reserved_storage) and the name of the file the sled agent keeps. A row exists exactly
-- while the space is held; releasing a region deletes it.
CREATE TABLE IF NOT EXISTS region (
    id UUID NOT NULL PRIMARY KEY,
    disk_id UUID NOT NULL REFERENCES disk (id),
    sled_id UUID NOT NULL REFERENCES sled (id),
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    time_created TIMESTAMPTZ NOT NULL
);
