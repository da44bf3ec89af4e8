-- A host that runs VMMs. Its agent registers it (and re-registers periodically).
CREATE TABLE IF NOT EXISTS sled (
    id UUID NOT NULL PRIMARY KEY,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    -- When the sled agent last registered.
    time_last_seen TIMESTAMPTZ NOT NULL,
    ip INET NOT NULL,
    port INT4 NOT NULL CHECK (port BETWEEN 0 AND 65535),
    backend TEXT NOT NULL CHECK (backend IN ('sim', 'qemu')),
    usable_hardware_threads INT8 NOT NULL CHECK (usable_hardware_threads >= 0),
    usable_physical_ram INT8 NOT NULL CHECK (usable_physical_ram >= 0),
    -- Running totals of the sled_reservation rows on this sled. Reservations update these
    -- with a conditional UPDATE, which is what stops racing reservations over-committing.
    reserved_hardware_threads INT8 NOT NULL CHECK (reserved_hardware_threads >= 0),
    reserved_physical_ram INT8 NOT NULL CHECK (reserved_physical_ram >= 0),
    CONSTRAINT reservations_within_capacity CHECK (
        reserved_hardware_threads <= usable_hardware_threads
        AND reserved_physical_ram <= usable_physical_ram
    )
);
