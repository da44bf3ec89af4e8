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
        usable_storage -> Int8,
        reserved_storage -> Int8,
        time_vmms_failed -> Nullable<Timestamptz>,
        underlay_ip -> Nullable<Inet>,
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
        boot_disk_id -> Nullable<Uuid>,
        auto_restart_policy -> Nullable<Text>,
        time_last_auto_restarted -> Nullable<Timestamptz>,
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
        resume_failure -> Nullable<Text>,
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
        adopt_generation -> Int8,
    }
}

diesel::table! {
    nexus (id) {
        id -> Uuid,
        incarnation -> Uuid,
        time_started -> Timestamptz,
        time_heartbeat -> Timestamptz,
    }
}

diesel::table! {
    silo (id) {
        id -> Uuid,
        name -> Text,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    silo_user (id) {
        id -> Uuid,
        silo_id -> Uuid,
        name -> Text,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_token (id) {
        id -> Uuid,
        token_hash -> Text,
        user_id -> Uuid,
        time_created -> Timestamptz,
        time_expires -> Nullable<Timestamptz>,
        time_revoked -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    device_auth_request (id) {
        id -> Uuid,
        client_id -> Uuid,
        device_code_hash -> Text,
        user_code -> Text,
        time_created -> Timestamptz,
        time_expires -> Timestamptz,
        token_ttl_seconds -> Nullable<Int8>,
        user_id -> Nullable<Uuid>,
        time_confirmed -> Nullable<Timestamptz>,
        token_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Uuid,
        time_started -> Timestamptz,
        time_completed -> Nullable<Timestamptz>,
        request_id -> Text,
        method -> Text,
        path -> Text,
        operation_id -> Text,
        actor_kind -> Text,
        actor_id -> Nullable<Uuid>,
        actor_silo_id -> Nullable<Uuid>,
        http_status -> Nullable<Int4>,
        error_code -> Nullable<Text>,
    }
}

diesel::table! {
    role_assignment (resource_type, resource_id, identity_type, identity_id, role_name) {
        resource_type -> Text,
        resource_id -> Uuid,
        identity_type -> Text,
        identity_id -> Uuid,
        role_name -> Text,
    }
}

diesel::table! {
    disk (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        project_id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        size_bytes -> Int8,
        block_size -> Int8,
        state -> Text,
        attach_instance_id -> Nullable<Uuid>,
        state_generation -> Int8,
        time_state_updated -> Timestamptz,
        slot -> Nullable<Int4>,
        created_by_instance_id -> Nullable<Uuid>,
        replacing_region_id -> Nullable<Uuid>,
        replacement_region_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    region (id) {
        id -> Uuid,
        disk_id -> Uuid,
        sled_id -> Uuid,
        size_bytes -> Int8,
        block_size -> Int8,
        time_created -> Timestamptz,
        export_address -> Nullable<Text>,
    }
}

diesel::table! {
    snapshot (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        project_id -> Uuid,
        disk_id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        size_bytes -> Int8,
        block_size -> Int8,
        state -> Text,
    }
}

diesel::table! {
    region_snapshot (snapshot_id, region_id) {
        snapshot_id -> Uuid,
        region_id -> Uuid,
        sled_id -> Uuid,
        size_bytes -> Int8,
        block_size -> Int8,
        time_created -> Timestamptz,
        export_address -> Nullable<Text>,
    }
}

diesel::table! {
    vpc (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        project_id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        dns_name -> Text,
        vni -> Int8,
        ipv6_prefix -> Inet,
        v2p_generation -> Int8,
        rcgen -> Int8,
    }
}

diesel::table! {
    vpc_subnet (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        vpc_id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        ipv4_block -> Inet,
        ipv6_block -> Inet,
    }
}

diesel::table! {
    network_interface (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        instance_id -> Uuid,
        vpc_id -> Uuid,
        subnet_id -> Uuid,
        time_created -> Timestamptz,
        time_modified -> Timestamptz,
        time_deleted -> Nullable<Timestamptz>,
        mac -> Int8,
        ip -> Inet,
        ipv6 -> Nullable<Inet>,
        is_primary -> Bool,
        slot -> Int4,
    }
}

diesel::joinable!(instance -> project (project_id));
diesel::joinable!(vpc -> project (project_id));
diesel::joinable!(vpc_subnet -> vpc (vpc_id));
diesel::joinable!(network_interface -> instance (instance_id));
diesel::joinable!(network_interface -> vpc (vpc_id));
diesel::joinable!(network_interface -> vpc_subnet (subnet_id));
diesel::joinable!(snapshot -> project (project_id));
diesel::joinable!(region_snapshot -> snapshot (snapshot_id));
diesel::joinable!(region_snapshot -> sled (sled_id));
diesel::joinable!(disk -> project (project_id));
diesel::joinable!(region -> disk (disk_id));
diesel::joinable!(region -> sled (sled_id));
diesel::joinable!(vmm -> instance (instance_id));
diesel::joinable!(vmm -> sled (sled_id));
diesel::joinable!(sled_reservation -> sled (sled_id));
diesel::joinable!(migration -> instance (instance_id));
diesel::joinable!(saga_node_event -> saga (saga_id));
diesel::joinable!(silo_user -> silo (silo_id));
diesel::joinable!(api_token -> silo_user (user_id));

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
    silo,
    silo_user,
    api_token,
    device_auth_request,
    audit_log,
    role_assignment,
    disk,
    region,
    snapshot,
    region_snapshot,
    nexus,
    vpc,
    vpc_subnet,
    network_interface,
);

// Metrics count VMMs by state and their sled's backend.
diesel::allow_columns_to_appear_in_same_group_by_clause!(vmm::state, sled::backend);
