//! `table!` definitions, one per table of `schema/dbinit.sql`.

diesel::table! {
    db_metadata (singleton) {
        singleton -> Bool,
        version -> Text,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
    }
}

diesel::table! {
    project (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        rcgen -> Int8,
    }
}

diesel::table! {
    sled (id) {
        id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_last_seen -> Timestamptz,
        ip -> Inet,
        port -> Int4,
        backend -> Text,
        usable_hardware_threads -> Int8,
        usable_physical_ram -> Int8,
        reserved_hardware_threads -> Int8,
        reserved_physical_ram -> Int8,
        time_expunged -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    sled_reservation (vmm_id) {
        vmm_id -> Uuid,
        sled_id -> Uuid,
        instance_id -> Uuid,
        hardware_threads -> Int8,
        physical_ram -> Int8,
        time_created -> Timestamptz,
    }
}

diesel::table! {
    instance (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        project_id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        ncpus -> Int8,
        memory -> Int8,
        hostname -> Text,
        nexus_state -> Text,
        active_propolis_id -> Nullable<Uuid>,
        target_propolis_id -> Nullable<Uuid>,
        migration_id -> Nullable<Uuid>,
        state_generation -> Int8,
        time_state_updated -> Timestamptz,
    }
}

diesel::table! {
    vmm (id) {
        id -> Uuid,
        instance_id -> Uuid,
        sled_id -> Uuid,
        propolis_ip -> Inet,
        propolis_port -> Int4,
        state -> Text,
        generation -> Int8,
        time_state_updated -> Timestamptz,
        time_created -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    migration (id) {
        id -> Uuid,
        instance_id -> Uuid,
        source_propolis_id -> Uuid,
        target_propolis_id -> Uuid,
        source_state -> Text,
        source_generation -> Int8,
        time_source_updated -> Nullable<Timestamptz>,
        target_state -> Text,
        target_generation -> Int8,
        time_target_updated -> Nullable<Timestamptz>,
        time_created -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    saga (id) {
        id -> Uuid,
        creator -> Uuid,
        current_sec -> Uuid,
        name -> Text,
        dag -> Jsonb,
        saga_state -> Text,
        adopt_generation -> Int8,
        time_created -> Timestamptz,
        adopt_time -> Timestamptz,
    }
}

diesel::table! {
    saga_node_event (saga_id, node_id, event_type) {
        saga_id -> Uuid,
        node_id -> Int8,
        event_type -> Text,
        data -> Nullable<Jsonb>,
        event_time -> Timestamptz,
        creator -> Uuid,
    }
}

diesel::joinable!(instance -> project (project_id));
diesel::joinable!(vmm -> instance (instance_id));
diesel::joinable!(vmm -> sled (sled_id));
diesel::joinable!(sled_reservation -> sled (sled_id));
diesel::joinable!(migration -> instance (instance_id));
diesel::joinable!(saga_node_event -> saga (saga_id));

diesel::allow_tables_to_appear_in_same_query!(
    db_metadata,
    project,
    sled,
    sled_reservation,
    instance,
    vmm,
    migration,
    saga,
    saga_node_event,
);

// Metrics count VMMs by state and their sled's backend.
diesel::allow_columns_to_appear_in_same_group_by_clause!(vmm::state, sled::backend);
