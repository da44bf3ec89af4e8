-- The resources one non-terminal VMM holds on its sled. Exactly one row per such VMM.
CREATE TABLE IF NOT EXISTS sled_reservation (
    vmm_id UUID NOT NULL PRIMARY KEY,
    sled_id UUID NOT NULL REFERENCES sled (id),
    instance_id UUID NOT NULL,
    hardware_threads INT8 NOT NULL CHECK (hardware_threads >= 0),
    physical_ram INT8 NOT NULL CHECK (physical_ram >= 0),
    time_created TIMESTAMPTZ NOT NULL
);
