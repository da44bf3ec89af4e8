//! `omdb db instances|instance|vmms|sleds|reservations|migrations`: the records, as tables.

use crate::output::{indent, opt, opt_time, print_fields, print_json, print_rows, table, time};
use chrono::{DateTime, Utc};
use halyard_common::ids::{InstanceUuid, MigrationUuid, ProjectUuid, SledUuid, VmmUuid};
use halyard_common::{
    ByteCount, Generation, InstanceNexusState, InstanceState, MigrationState, SledBackend, VmmState,
};
use halyard_db_model::{Instance, Migration, Sled, SledReservation, Vmm};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tabled::Tabled;

use super::store::{Db, derived_state, instance_name, project_name};

// Instances

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct InstanceRow {
    id: InstanceUuid,
    name: String,
    project: String,
    nexus_state: InstanceNexusState,
    /// What users see (derived from the Nexus state and the active VMM's).
    state: InstanceState,
    #[tabled(display = "opt")]
    active_vmm: Option<VmmUuid>,
    #[tabled(display = "opt")]
    target_vmm: Option<VmmUuid>,
    #[tabled(display = "opt")]
    migration: Option<MigrationUuid>,
    /// The active VMM's sled.
    #[tabled(display = "opt")]
    sled: Option<SledUuid>,
    #[tabled(rename = "GEN")]
    generation: Generation,
    #[tabled(skip)]
    time_deleted: Option<DateTime<Utc>>,
}

pub(super) async fn cmd_instances(
    db: &Db,
    include_deleted: bool,
    json: bool,
) -> anyhow::Result<()> {
    let projects = db.projects().await?;
    let instances = db
        .datastore
        .instance_list_all(include_deleted)
        .await
        .map_err(|e| db.err(e))?;
    let vmms = all_vmms_by_id(db).await?;
    let mut rows = Vec::new();
    for instance in &instances {
        let active = instance.runtime.active_vmm().and_then(|id| vmms.get(&id));
        rows.push(InstanceRow {
            id: instance.id(),
            name: instance.name().to_string(),
            project: project_name(&projects, instance.project_id()),
            nexus_state: instance.runtime.nexus_state(),
            state: derived_state(instance, active),
            active_vmm: instance.runtime.active_vmm(),
            target_vmm: instance.runtime.target_vmm(),
            migration: instance.runtime.migration(),
            sled: active.map(Vmm::sled_id),
            generation: instance.runtime.generation(),
            time_deleted: instance.time_deleted,
        });
    }
    rows.sort_by(|a, b| (&a.project, &a.name).cmp(&(&b.project, &b.name)));
    print_rows(&rows, json, "no instances")
}

/// Every VMM record (retired ones too), by id.
async fn all_vmms_by_id(db: &Db) -> anyhow::Result<BTreeMap<VmmUuid, Vmm>> {
    let vmms = db
        .datastore
        .vmm_list(None, true)
        .await
        .map_err(|e| db.err(e))?;
    Ok(vmms.into_iter().map(|v| (v.id(), v)).collect())
}

#[derive(Debug, Serialize)]
struct InstanceDetail {
    id: InstanceUuid,
    name: String,
    project_id: ProjectUuid,
    project: String,
    description: String,
    hostname: String,
    ncpus: i64,
    memory: ByteCount,
    nexus_state: InstanceNexusState,
    state: InstanceState,
    active_vmm: Option<VmmUuid>,
    target_vmm: Option<VmmUuid>,
    migration: Option<MigrationUuid>,
    generation: Generation,
    time_created: DateTime<Utc>,
    time_state_updated: DateTime<Utc>,
    time_deleted: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct InstanceReport {
    instance: InstanceDetail,
    vmms: Vec<VmmRow>,
    migrations: Vec<MigrationRow>,
}

pub(super) async fn cmd_instance(
    db: &Db,
    which: &str,
    project: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let instance = db.lookup_instance(which, project).await?;
    let projects = db.projects().await?;
    let history = db
        .datastore
        .instance_vmm_history(instance.id())
        .await
        .map_err(|e| db.err(e))?;
    let active = instance
        .runtime
        .active_vmm()
        .and_then(|id| history.iter().find(|v| v.id() == id));
    let migrations = db
        .datastore
        .migration_list(Some(instance.id()))
        .await
        .map_err(|e| db.err(e))?;
    let instances = BTreeMap::from([(instance.id(), instance.clone())]);
    let report = InstanceReport {
        instance: InstanceDetail {
            id: instance.id(),
            name: instance.name().to_string(),
            project_id: instance.project_id(),
            project: project_name(&projects, instance.project_id()),
            description: instance.description.clone(),
            hostname: instance.hostname.clone(),
            ncpus: instance.ncpus,
            memory: instance.memory.0,
            nexus_state: instance.runtime.nexus_state(),
            state: derived_state(&instance, active),
            active_vmm: instance.runtime.active_vmm(),
            target_vmm: instance.runtime.target_vmm(),
            migration: instance.runtime.migration(),
            generation: instance.runtime.generation(),
            time_created: instance.time_created,
            time_state_updated: instance.runtime.time_state_updated,
            time_deleted: instance.time_deleted,
        },
        vmms: history.iter().map(|v| vmm_row(v, &instances)).collect(),
        migrations: migrations
            .iter()
            .map(|m| migration_row(m, &instances))
            .collect(),
    };
    if json {
        return print_json(&report);
    }
    let i = &report.instance;
    let fields: Vec<(&str, String)> = vec![
        ("name", i.name.clone()),
        ("project", i.project.clone()),
        ("description", i.description.clone()),
        ("hostname", i.hostname.clone()),
        ("ncpus", i.ncpus.to_string()),
        ("memory", i.memory.to_string()),
        ("nexus state", i.nexus_state.to_string()),
        ("state", i.state.to_string()),
        ("generation", i.generation.to_string()),
        ("created", time(&i.time_created)),
        ("state updated", time(&i.time_state_updated)),
        ("deleted", opt_time(&i.time_deleted)),
        ("id", i.id.to_string()),
        ("project id", i.project_id.to_string()),
        ("active VMM", opt(&i.active_vmm)),
        ("target VMM", opt(&i.target_vmm)),
        ("migration", opt(&i.migration)),
    ];
    print_fields(&fields);
    println!();
    println!("VMMs, oldest first:");
    if report.vmms.is_empty() {
        println!("  none: the instance never ran");
    } else {
        println!("{}", indent(&table(&report.vmms)));
    }
    if !report.migrations.is_empty() {
        println!();
        println!("Migrations, oldest first:");
        println!("{}", indent(&table(&report.migrations)));
    }
    Ok(())
}

// VMMs

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct VmmRow {
    id: VmmUuid,
    #[tabled(skip)]
    instance_id: InstanceUuid,
    /// The instance's name.
    instance: String,
    /// `active` or `target` while the instance points at it, else `-`.
    role: &'static str,
    sled: SledUuid,
    address: SocketAddr,
    state: VmmState,
    #[tabled(rename = "GEN")]
    generation: Generation,
    #[tabled(display = "time")]
    created: DateTime<Utc>,
    #[tabled(display = "opt_time")]
    deleted: Option<DateTime<Utc>>,
}

fn vmm_row(vmm: &Vmm, instances: &BTreeMap<InstanceUuid, Instance>) -> VmmRow {
    let instance = instances.get(&vmm.instance_id());
    let role = match instance {
        Some(i) if i.runtime.active_vmm() == Some(vmm.id()) => "active",
        Some(i) if i.runtime.target_vmm() == Some(vmm.id()) => "target",
        _ => "-",
    };
    VmmRow {
        id: vmm.id(),
        instance_id: vmm.instance_id(),
        instance: instance_name(instances, vmm.instance_id()),
        role,
        sled: vmm.sled_id(),
        address: vmm.address(),
        state: vmm.state(),
        generation: vmm.runtime.generation(),
        created: vmm.time_created,
        deleted: vmm.time_deleted,
    }
}

pub(super) async fn cmd_vmms(
    db: &Db,
    instance: Option<&str>,
    project: Option<&str>,
    sled: Option<&str>,
    include_deleted: bool,
    json: bool,
) -> anyhow::Result<()> {
    let sled = match sled {
        Some(which) => Some(db.lookup_sled(which).await?),
        None => None,
    };
    let mut vmms = match instance {
        Some(which) => {
            let instance = db.lookup_instance(which, project).await?;
            db.datastore
                .instance_vmm_history(instance.id())
                .await
                .map_err(|e| db.err(e))?
        }
        None => db
            .datastore
            .vmm_list(sled.as_ref().map(Sled::id), include_deleted)
            .await
            .map_err(|e| db.err(e))?,
    };
    vmms.retain(|v| include_deleted || v.time_deleted.is_none());
    if let Some(sled) = &sled {
        vmms.retain(|v| v.sled_id() == sled.id());
    }
    let instances = db.instances().await?;
    let rows: Vec<VmmRow> = vmms.iter().map(|v| vmm_row(v, &instances)).collect();
    let empty = if include_deleted {
        "no VMMs"
    } else {
        "no live VMMs (--include-deleted shows retired ones)"
    };
    print_rows(&rows, json, empty)
}

// Sleds

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct SledRow {
    id: SledUuid,
    address: SocketAddr,
    backend: SledBackend,
    /// Hardware threads available to VMMs.
    threads: i64,
    ram: ByteCount,
    reserved_threads: i64,
    reserved_ram: ByteCount,
    /// Live (not retired) VMMs on the sled.
    vmms: usize,
    #[tabled(display = "time")]
    last_seen: DateTime<Utc>,
    /// When an operator declared the sled gone (`omdb nexus sled-expunge`); `-`: in service.
    #[tabled(display = "opt_time")]
    expunged: Option<DateTime<Utc>>,
    /// When the instance watcher failed its VMMs because its agent went silent; placement
    /// skips it until its agent answers and destroys them. `-`: not.
    #[tabled(display = "opt_time")]
    vmms_failed: Option<DateTime<Utc>>,
}

pub(super) async fn cmd_sleds(db: &Db, json: bool) -> anyhow::Result<()> {
    let sleds = db.sleds().await?;
    let vmms = db
        .datastore
        .vmm_list(None, false)
        .await
        .map_err(|e| db.err(e))?;
    let rows: Vec<SledRow> = sleds
        .iter()
        .map(|s| SledRow {
            id: s.id(),
            address: s.address(),
            backend: s.backend.0,
            threads: s.usable_hardware_threads,
            ram: s.usable_physical_ram.0,
            reserved_threads: s.reserved_hardware_threads,
            reserved_ram: s.reserved_physical_ram.0,
            vmms: vmms.iter().filter(|v| v.sled_id() == s.id()).count(),
            last_seen: s.time_last_seen,
            expunged: s.time_expunged,
            vmms_failed: s.time_vmms_failed,
        })
        .collect();
    print_rows(&rows, json, "no sleds (no sled agent has registered)")
}

// Reservations

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct ReservationRow {
    vmm: VmmUuid,
    sled: SledUuid,
    #[tabled(skip)]
    instance_id: InstanceUuid,
    /// The instance's name.
    instance: String,
    threads: i64,
    ram: ByteCount,
    #[tabled(display = "time")]
    created: DateTime<Utc>,
}

pub(super) async fn cmd_reservations(db: &Db, json: bool) -> anyhow::Result<()> {
    let reservations: Vec<SledReservation> = db
        .datastore
        .sled_reservation_list(None)
        .await
        .map_err(|e| db.err(e))?;
    let instances = db.instances().await?;
    let rows: Vec<ReservationRow> = reservations
        .iter()
        .map(|r| ReservationRow {
            vmm: r.vmm_id(),
            sled: r.sled_id(),
            instance_id: r.instance_id.0,
            instance: instance_name(&instances, r.instance_id.0),
            threads: r.hardware_threads,
            ram: r.physical_ram.0,
            created: r.time_created,
        })
        .collect();
    print_rows(&rows, json, "no reservations")
}

// Migrations

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct MigrationRow {
    id: MigrationUuid,
    #[tabled(skip)]
    instance_id: InstanceUuid,
    /// The instance's name.
    instance: String,
    source_vmm: VmmUuid,
    source_state: MigrationState,
    #[tabled(rename = "SRC_GEN")]
    source_generation: Generation,
    target_vmm: VmmUuid,
    target_state: MigrationState,
    #[tabled(rename = "TGT_GEN")]
    target_generation: Generation,
    #[tabled(display = "time")]
    created: DateTime<Utc>,
    #[tabled(display = "opt_time")]
    deleted: Option<DateTime<Utc>>,
}

fn migration_row(m: &Migration, instances: &BTreeMap<InstanceUuid, Instance>) -> MigrationRow {
    MigrationRow {
        id: m.id(),
        instance_id: m.instance_id.0,
        instance: instance_name(instances, m.instance_id.0),
        source_vmm: m.source_propolis_id.0,
        source_state: m.source_state(),
        source_generation: m.source_generation.0,
        target_vmm: m.target_propolis_id.0,
        target_state: m.target_state(),
        target_generation: m.target_generation.0,
        created: m.time_created,
        deleted: m.time_deleted,
    }
}

pub(super) async fn cmd_migrations(db: &Db, json: bool) -> anyhow::Result<()> {
    let migrations = db
        .datastore
        .migration_list(None)
        .await
        .map_err(|e| db.err(e))?;
    let instances = db.instances().await?;
    let rows: Vec<MigrationRow> = migrations
        .iter()
        .map(|m| migration_row(m, &instances))
        .collect();
    print_rows(&rows, json, "no migrations")
}
