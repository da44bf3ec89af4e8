-- Halyard's whole database schema, at the version named at the end of this file.
--
-- This file creates a fresh database. An existing database is upgraded by the steps under
-- migrations/<version>/; a test proves both paths produce the same schema, so every change
-- here needs a matching migration step (see docs/schema-change.md).
--
-- The SQL stays within what both PostgreSQL and CockroachDB accept: UUID keys, no SERIAL, no
-- extensions, no ENUM types (states are TEXT with a CHECK), explicit transactions in the code.
-- Rows of user-visible objects are soft-deleted (`time_deleted`), so their history stays.

-- The schema version of this database: one row, forever.
CREATE TABLE IF NOT EXISTS db_metadata (
    singleton BOOL NOT NULL PRIMARY KEY CHECK (singleton = TRUE),
    version TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS project (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    -- Child resource generation: every instance insert bumps it, so a delete that found the
    -- project empty cannot race an insert (the delete is conditional on the rcgen it saw).
    rcgen INT8 NOT NULL CHECK (rcgen >= 1)
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_project_by_name
    ON project (name) WHERE time_deleted IS NULL;

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
    -- When an operator declared the sled gone for good (expunged): placement never picks it
    -- again, its registrations are refused, and its VMMs were failed and retired. NULL: in
    -- service.
    time_expunged TIMESTAMPTZ,
    -- What the sled offers for regions, and the running total of its region and region
    -- snapshot rows' sizes (kept like the reservation totals). 0: the sled holds no regions.
    usable_storage INT8 NOT NULL DEFAULT 0 CHECK (usable_storage >= 0),
    reserved_storage INT8 NOT NULL DEFAULT 0
        CHECK (reserved_storage >= 0 AND reserved_storage <= usable_storage),
    -- When the instance watcher declared this sled's VMMs failed because its agent stayed
    -- silent past the bound; NULL otherwise. While set, placement never picks the sled: when
    -- its agent answers again, Nexus first has it destroy those VMMs, then clears it.
    time_vmms_failed TIMESTAMPTZ,
    -- The sled's address on the underlay network (where other sleds tunnel its guests'
    -- traffic), as its agent reports it; NULL: none reported (mappings then name the agent's
    -- own IP).
    underlay_ip INET,
    CONSTRAINT reservations_within_capacity CHECK (
        reserved_hardware_threads <= usable_hardware_threads
        AND reserved_physical_ram <= usable_physical_ram
    )
);

-- The resources one non-terminal VMM holds on its sled. Exactly one row per such VMM.
CREATE TABLE IF NOT EXISTS sled_reservation (
    vmm_id UUID NOT NULL PRIMARY KEY,
    sled_id UUID NOT NULL REFERENCES sled (id),
    instance_id UUID NOT NULL,
    hardware_threads INT8 NOT NULL CHECK (hardware_threads >= 0),
    physical_ram INT8 NOT NULL CHECK (physical_ram >= 0),
    time_created TIMESTAMPTZ NOT NULL
);

CREATE INDEX IF NOT EXISTS sled_reservation_by_sled ON sled_reservation (sled_id);

CREATE TABLE IF NOT EXISTS instance (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    ncpus INT8 NOT NULL CHECK (ncpus >= 1),
    memory INT8 NOT NULL CHECK (memory >= 1),
    hostname TEXT NOT NULL,

    -- Runtime state, all protected by state_generation: it changes iff one of these does.
    nexus_state TEXT NOT NULL
        CHECK (nexus_state IN ('creating', 'no_vmm', 'vmm', 'failed', 'destroyed')),
    active_propolis_id UUID,
    target_propolis_id UUID,
    migration_id UUID,
    state_generation INT8 NOT NULL CHECK (state_generation >= 1),
    time_state_updated TIMESTAMPTZ NOT NULL,
    -- The disk the instance boots from, one of its attached disks; NULL: none.
    boot_disk_id UUID,
    -- The auto-restart policy its owner set; NULL: the control plane's default (best effort).
    auto_restart_policy TEXT CHECK (auto_restart_policy IN ('never', 'best_effort')),
    -- When the control plane last restarted it on its own after it failed (the cooldown
    -- counts from then); NULL: never.
    time_last_auto_restarted TIMESTAMPTZ,

    -- Nexus says "vmm" exactly when there is an active VMM.
    CONSTRAINT vmm_state_iff_active_vmm CHECK (
        (nexus_state = 'vmm') = (active_propolis_id IS NOT NULL)
    ),
    -- A migration has both a target VMM and a migration record, and needs a source.
    CONSTRAINT migration_needs_target_and_source CHECK (
        (migration_id IS NULL) = (target_propolis_id IS NULL)
        AND (target_propolis_id IS NULL OR active_propolis_id IS NOT NULL)
    ),
    CONSTRAINT target_differs_from_active CHECK (
        target_propolis_id IS NULL OR target_propolis_id != active_propolis_id
    )
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_instance_by_project
    ON instance (project_id, name) WHERE time_deleted IS NULL;

-- One incarnation of an instance on one sled ("propolis" in the design we learn from).
CREATE TABLE IF NOT EXISTS vmm (
    id UUID NOT NULL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES instance (id),
    sled_id UUID NOT NULL REFERENCES sled (id),
    propolis_ip INET NOT NULL,
    propolis_port INT4 NOT NULL CHECK (propolis_port BETWEEN 0 AND 65535),
    state TEXT NOT NULL CHECK (state IN (
        'creating', 'starting', 'running', 'stopping', 'stopped', 'rebooting', 'migrating',
        'failed', 'destroyed', 'saga_unwound'
    )),
    generation INT8 NOT NULL CHECK (generation >= 1),
    time_state_updated TIMESTAMPTZ NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS vmm_history_by_instance ON vmm (instance_id, time_created);
CREATE INDEX IF NOT EXISTS live_vmm_by_sled ON vmm (sled_id) WHERE time_deleted IS NULL;

CREATE TABLE IF NOT EXISTS migration (
    id UUID NOT NULL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES instance (id),
    source_propolis_id UUID NOT NULL,
    target_propolis_id UUID NOT NULL,
    source_state TEXT NOT NULL
        CHECK (source_state IN ('pending', 'in_progress', 'completed', 'failed')),
    source_generation INT8 NOT NULL CHECK (source_generation >= 1),
    time_source_updated TIMESTAMPTZ,
    target_state TEXT NOT NULL
        CHECK (target_state IN ('pending', 'in_progress', 'completed', 'failed')),
    target_generation INT8 NOT NULL CHECK (target_generation >= 1),
    time_target_updated TIMESTAMPTZ,
    time_created TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    CONSTRAINT source_differs_from_target CHECK (source_propolis_id != target_propolis_id)
);

CREATE INDEX IF NOT EXISTS migration_by_instance ON migration (instance_id, time_created);

-- The saga log: what steno's SecStore writes, so a restarted Nexus can resume its sagas.
CREATE TABLE IF NOT EXISTS saga (
    id UUID NOT NULL PRIMARY KEY,
    -- The Nexus (saga execution coordinator) that created the saga.
    creator UUID NOT NULL,
    -- The Nexus that currently owns it and must drive it to completion.
    current_sec UUID NOT NULL,
    name TEXT NOT NULL,
    -- The saga's DAG as steno serializes it, including the saga's parameters.
    dag JSONB NOT NULL,
    saga_state TEXT NOT NULL CHECK (saga_state IN ('running', 'unwinding', 'done')),
    -- Bumped whenever another Nexus adopts the saga.
    adopt_generation INT8 NOT NULL CHECK (adopt_generation >= 1),
    time_created TIMESTAMPTZ NOT NULL,
    adopt_time TIMESTAMPTZ NOT NULL,
    -- Why the saga could not be resumed (its DAG or log unreadable, an action no longer
    -- known); NULL for every saga that could. Reported, never a reason to refuse to start.
    resume_failure TEXT
);

CREATE INDEX IF NOT EXISTS unfinished_saga_by_sec
    ON saga (current_sec, id) WHERE saga_state != 'done';

CREATE TABLE IF NOT EXISTS saga_node_event (
    saga_id UUID NOT NULL REFERENCES saga (id),
    node_id INT8 NOT NULL CHECK (node_id >= 0),
    event_type TEXT NOT NULL CHECK (event_type IN (
        'started', 'succeeded', 'failed', 'undo_started', 'undo_finished', 'undo_failed'
    )),
    -- The action's output (succeeded) or error (failed, undo_failed).
    data JSONB,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    -- The owner's adoption generation when the event was written: a write is accepted only
    -- from the saga's current owner at its current generation, so no (saga, generation) has
    -- events from two writers.
    adopt_generation INT8 NOT NULL DEFAULT 1,
    -- One event of each type per node: recording an event twice is a no-op.
    PRIMARY KEY (saga_id, node_id, event_type)
);

-- Every Nexus that has run against this database, and when it last said it was alive (the
-- database's clock, so Nexus hosts' clocks never matter). A Nexus whose heartbeat is older
-- than the bound is gone: a live one adopts its unfinished sagas.
CREATE TABLE IF NOT EXISTS nexus (
    id UUID NOT NULL PRIMARY KEY,
    -- Random per process start: a second process started with the same id takes the row,
    -- and the first learns at its next heartbeat that it was superseded.
    incarnation UUID NOT NULL,
    time_started TIMESTAMPTZ NOT NULL,
    time_heartbeat TIMESTAMPTZ NOT NULL
);

-- Identity (see ARCHITECTURE.md, "Authentication"). A silo holds users; one default silo
-- exists from the start (its id is fixed: DEFAULT_SILO_ID in db-model).
CREATE TABLE IF NOT EXISTS silo (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_silo_by_name ON silo (name) WHERE time_deleted IS NULL;

INSERT INTO silo (id, name, time_created, time_modified)
    VALUES ('001de000-5110-4000-8000-000000000000', 'default-silo', now(), now())
    ON CONFLICT (id) DO NOTHING;

-- A user of a silo, created by an operator (`omdb db users create`).
CREATE TABLE IF NOT EXISTS silo_user (
    id UUID NOT NULL PRIMARY KEY,
    silo_id UUID NOT NULL REFERENCES silo (id),
    name TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_user_by_silo
    ON silo_user (silo_id, name) WHERE time_deleted IS NULL;

-- An API token: only the SHA-256 of the secret is kept (hex), never the secret itself.
CREATE TABLE IF NOT EXISTS api_token (
    id UUID NOT NULL PRIMARY KEY,
    token_hash TEXT NOT NULL,
    user_id UUID NOT NULL REFERENCES silo_user (id),
    time_created TIMESTAMPTZ NOT NULL,
    -- No expiry when NULL.
    time_expires TIMESTAMPTZ,
    time_revoked TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_api_token_by_hash ON api_token (token_hash);
CREATE INDEX IF NOT EXISTS api_token_by_user ON api_token (user_id);

-- An OAuth 2.0 device authorization grant in progress (POST /device/auth): the device code
-- is a secret kept as its SHA-256 like a token; the user code is what the user confirms.
CREATE TABLE IF NOT EXISTS device_auth_request (
    id UUID NOT NULL PRIMARY KEY,
    client_id UUID NOT NULL,
    device_code_hash TEXT NOT NULL,
    user_code TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_expires TIMESTAMPTZ NOT NULL,
    -- The lifetime asked for the token; NULL: the default.
    token_ttl_seconds INT8 CHECK (token_ttl_seconds > 0),
    -- Set by POST /device/confirm.
    user_id UUID REFERENCES silo_user (id),
    time_confirmed TIMESTAMPTZ,
    -- Set once the token was handed out (POST /device/token), so it is handed out once.
    token_id UUID REFERENCES api_token (id)
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_device_auth_by_device_code
    ON device_auth_request (device_code_hash);
CREATE UNIQUE INDEX IF NOT EXISTS lookup_device_auth_by_user_code
    ON device_auth_request (user_code);

-- Every mutating external request (POST, PUT, DELETE), authenticated or not: written when it
-- starts, completed (status) when it ends. `actor_id` is NULL when authentication failed.
CREATE TABLE IF NOT EXISTS audit_log (
    id UUID NOT NULL PRIMARY KEY,
    time_started TIMESTAMPTZ NOT NULL,
    time_completed TIMESTAMPTZ,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    actor_kind TEXT NOT NULL CHECK (actor_kind IN ('user', 'unauthenticated')),
    actor_id UUID,
    actor_silo_id UUID,
    http_status INT4,
    error_code TEXT
);

CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (time_started, id);

-- Authorization (see ARCHITECTURE.md, "Authorization"): who holds which role on what. A role
-- is held on the fleet (resource_id: FLEET_ID in db-model; roles admin, viewer) or on one
-- project (admin, collaborator, viewer). A project's rows are its policy.
CREATE TABLE IF NOT EXISTS role_assignment (
    resource_type TEXT NOT NULL CHECK (resource_type IN ('fleet', 'project')),
    resource_id UUID NOT NULL,
    identity_type TEXT NOT NULL CHECK (identity_type IN ('silo_user')),
    identity_id UUID NOT NULL,
    role_name TEXT NOT NULL CHECK (
        (resource_type = 'fleet' AND role_name IN ('admin', 'viewer'))
        OR (resource_type = 'project' AND role_name IN ('admin', 'collaborator', 'viewer'))
    ),
    PRIMARY KEY (resource_type, resource_id, identity_type, identity_id, role_name)
);

CREATE INDEX IF NOT EXISTS role_assignment_by_identity
    ON role_assignment (identity_type, identity_id);

-- A disk: a virtual block device a user creates in a project and attaches to an instance.
-- Its data lives on its regions (three, on three sleds).
CREATE TABLE IF NOT EXISTS disk (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    -- Runtime state, protected by state_generation: it changes iff one of these does.
    state TEXT NOT NULL CHECK (state IN (
        'creating', 'detached', 'attaching', 'attached', 'detaching', 'faulted', 'destroyed'
    )),
    attach_instance_id UUID,
    state_generation INT8 NOT NULL CHECK (state_generation >= 1),
    time_state_updated TIMESTAMPTZ NOT NULL,
    -- The disk's position on its instance (0..7: at most 8 disks per instance), set exactly
    -- while it names an instance.
    slot INT4 CONSTRAINT disk_slot_iff_attached CHECK (
        (slot IS NULL) = (attach_instance_id IS NULL) AND (slot IS NULL OR slot BETWEEN 0 AND 7)
    ),
    -- The instance whose create made this disk (deleted with it); NULL: made by a disk create.
    created_by_instance_id UUID,
    -- The region a region-replacement saga is replacing (one of the disk's regions, on an
    -- expunged sled); NULL when none is. While set, the disk is not attached, detached,
    -- deleted or snapshotted, and its instance is not started.
    replacing_region_id UUID,
    -- The region that replacement creates (its saga's new region), set and cleared with
    -- `replacing_region_id`: the mark names the replacement, so two replacements of the same
    -- lost region cannot both pass it.
    replacement_region_id UUID,
    CONSTRAINT disk_size_whole_blocks CHECK (size_bytes % block_size = 0),
    -- A disk names an instance exactly while it is attaching, attached or detaching.
    CONSTRAINT disk_instance_iff_attached CHECK (
        (state IN ('attaching', 'attached', 'detaching')) = (attach_instance_id IS NOT NULL)
    )
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_disk_by_project
    ON disk (project_id, name) WHERE time_deleted IS NULL;

CREATE INDEX IF NOT EXISTS disk_by_instance
    ON disk (attach_instance_id) WHERE attach_instance_id IS NOT NULL;

-- One disk per slot of an instance: with the slot's range, at most 8 disks per instance.
CREATE UNIQUE INDEX IF NOT EXISTS disk_one_per_slot
    ON disk (attach_instance_id, slot) WHERE attach_instance_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS disk_by_creating_instance
    ON disk (created_by_instance_id) WHERE created_by_instance_id IS NOT NULL;

-- One replica of a disk's data on one sled: a storage reservation (its size counts in the
-- sled's reserved_storage) and the name of the file the sled agent keeps. A row exists exactly
-- while the space is held; releasing a region deletes it.
CREATE TABLE IF NOT EXISTS region (
    id UUID NOT NULL PRIMARY KEY,
    disk_id UUID NOT NULL REFERENCES disk (id),
    sled_id UUID NOT NULL REFERENCES sled (id),
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    time_created TIMESTAMPTZ NOT NULL,
    -- Where the region's sled serves it over NBD (host:port), recorded once the sled agent
    -- made it; NULL for a simulated sled's regions and before then. The export's name is the
    -- region's id.
    export_address TEXT
);

-- Never two regions of one disk on one sled: losing a sled loses at most one replica.
CREATE UNIQUE INDEX IF NOT EXISTS region_one_per_sled_per_disk ON region (disk_id, sled_id);

CREATE INDEX IF NOT EXISTS region_by_sled ON region (sled_id);

-- A snapshot: a point-in-time, read-only copy of a disk, kept as one region snapshot on each
-- of the disk's regions' sleds (see ARCHITECTURE.md, "Snapshots").
CREATE TABLE IF NOT EXISTS snapshot (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    disk_id UUID NOT NULL REFERENCES disk (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'faulted', 'destroyed')),
    -- Deleted exactly when destroyed.
    CONSTRAINT snapshot_deleted_iff_destroyed CHECK (
        (state = 'destroyed') = (time_deleted IS NOT NULL)
    )
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_snapshot_by_project
    ON snapshot (project_id, name) WHERE time_deleted IS NULL;

-- One region's point-in-time copy for a snapshot, on the region's sled: a storage reservation
-- (its size counts in the sled's reserved_storage) like a region's. A row exists exactly while
-- the space is held; releasing it deletes it. The region may be gone since (a disk deleted
-- after its snapshot was taken keeps its snapshots).
CREATE TABLE IF NOT EXISTS region_snapshot (
    snapshot_id UUID NOT NULL REFERENCES snapshot (id),
    region_id UUID NOT NULL,
    sled_id UUID NOT NULL REFERENCES sled (id),
    size_bytes INT8 NOT NULL CHECK (size_bytes > 0),
    block_size INT8 NOT NULL CHECK (block_size IN (512, 2048, 4096)),
    time_created TIMESTAMPTZ NOT NULL,
    -- Where the sled serves it read-only over NBD (host:port; the export's name is
    -- `<region_id>.<snapshot_id>`), recorded once the sled agent made it; NULL for a simulated
    -- sled's and before then.
    export_address TEXT,
    PRIMARY KEY (snapshot_id, region_id)
);

CREATE INDEX IF NOT EXISTS region_snapshot_by_sled ON region_snapshot (sled_id);

-- A VPC: a project's private network. Its VNI tags its traffic between sleds, so VPCs never
-- see each other's packets, even with the same private addresses. Its mapping generation
-- orders the virtual-to-physical sets Nexus pushes to sleds: it is bumped each time a set is
-- read, so a newer set always comes from a later read.
CREATE TABLE IF NOT EXISTS vpc (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    project_id UUID NOT NULL REFERENCES project (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    dns_name TEXT NOT NULL,
    vni INT8 NOT NULL CHECK (vni BETWEEN 1024 AND 16777215),
    ipv6_prefix INET NOT NULL,
    v2p_generation INT8 NOT NULL CHECK (v2p_generation >= 1),
    -- Child resource generation: every subnet insert bumps it (subnets may not overlap).
    rcgen INT8 NOT NULL CHECK (rcgen >= 1)
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_vpc_by_project
    ON vpc (project_id, name) WHERE time_deleted IS NULL;

CREATE UNIQUE INDEX IF NOT EXISTS vpc_by_vni ON vpc (vni) WHERE time_deleted IS NULL;

-- A subnet of a VPC: the IPv4 block its interfaces' private addresses come from (the first
-- five and the last address are reserved), and an IPv6 /64 of the VPC's prefix.
CREATE TABLE IF NOT EXISTS vpc_subnet (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    vpc_id UUID NOT NULL REFERENCES vpc (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    ipv4_block INET NOT NULL,
    ipv6_block INET NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_vpc_subnet_by_vpc
    ON vpc_subnet (vpc_id, name) WHERE time_deleted IS NULL;

-- An instance's network interface: a MAC and a private address in one subnet of one VPC,
-- allocated when it is made and given back when it is deleted. Added and removed only while
-- its instance is stopped. `slot` is its position on the instance (the primary is 0).
CREATE TABLE IF NOT EXISTS network_interface (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    instance_id UUID NOT NULL REFERENCES instance (id),
    vpc_id UUID NOT NULL REFERENCES vpc (id),
    subnet_id UUID NOT NULL REFERENCES vpc_subnet (id),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    mac INT8 NOT NULL CHECK (mac BETWEEN 0 AND 281474976710655),
    ip INET NOT NULL,
    ipv6 INET,
    is_primary BOOL NOT NULL,
    slot INT4 NOT NULL CHECK (slot BETWEEN 0 AND 7)
);

CREATE UNIQUE INDEX IF NOT EXISTS lookup_network_interface_by_instance
    ON network_interface (instance_id, name) WHERE time_deleted IS NULL;

-- No two live interfaces share an address in a subnet: racing allocations that picked the
-- same address lose here, and the loser picks again.
CREATE UNIQUE INDEX IF NOT EXISTS network_interface_ip_in_subnet
    ON network_interface (subnet_id, ip) WHERE time_deleted IS NULL;

CREATE UNIQUE INDEX IF NOT EXISTS network_interface_mac_in_vpc
    ON network_interface (vpc_id, mac) WHERE time_deleted IS NULL;

CREATE UNIQUE INDEX IF NOT EXISTS network_interface_slot_on_instance
    ON network_interface (instance_id, slot) WHERE time_deleted IS NULL;

CREATE UNIQUE INDEX IF NOT EXISTS network_interface_primary_on_instance
    ON network_interface (instance_id) WHERE is_primary AND time_deleted IS NULL;

CREATE INDEX IF NOT EXISTS network_interface_by_vpc
    ON network_interface (vpc_id) WHERE time_deleted IS NULL;

-- The instance a VMM incarnates, or migrates into: the retirement and leftover passes ask
-- it of every VMM (`NOT EXISTS (... active_propolis_id = vmm.id OR target_propolis_id = ...)`),
-- which without these scanned every instance.
CREATE INDEX IF NOT EXISTS instance_by_active_vmm
    ON instance (active_propolis_id) WHERE active_propolis_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS instance_by_target_vmm
    ON instance (target_propolis_id) WHERE target_propolis_id IS NOT NULL;

-- The leftover pass looks, every few seconds, for instances claimed for a VMM and for VMMs
-- still `creating`, both older than its grace period: a few rows among all instances (most
-- stopped) and all VMMs ever made (history is kept), so each has a partial index.
CREATE INDEX IF NOT EXISTS instance_with_vmm_by_time_state_updated
    ON instance (time_state_updated) WHERE nexus_state = 'vmm' AND time_deleted IS NULL;

CREATE INDEX IF NOT EXISTS creating_vmm_by_time_state_updated
    ON vmm (time_state_updated) WHERE state = 'creating' AND time_deleted IS NULL;

INSERT INTO db_metadata (singleton, version, time_created, time_modified)
    VALUES (TRUE, '1.12.0', now(), now())
    ON CONFLICT (singleton) DO NOTHING;
