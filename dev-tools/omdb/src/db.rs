//! `omdb db ...`: the database, read through `DataStore`.

use crate::Outcome;
use crate::output::{opt, opt_time, print_json, print_rows, redact_url, table, time};
use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use halyard_common::ids::{
    GenericUuid, InstanceUuid, MigrationUuid, ProjectUuid, SagaUuid, SledUuid, VmmUuid,
};
use halyard_common::{
    ByteCount, Error, Generation, InstanceNexusState, InstanceState, MigrationState, Name,
    NameOrId, SledBackend, VmmState,
};
use halyard_db_model::{Instance, Migration, Project, Saga, Sled, SledReservation, Vmm};
use halyard_db_queries::{DataStore, PoolConfig, SchemaVersionError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tabled::Tabled;

/// Where the development environment (`dev-tools/run-all`) keeps its database.
pub const DEFAULT_DB_URL: &str = "postgresql://postgres@127.0.0.1:32221/halyard";
/// The environment variable that names the database when `--db-url` is not given.
pub const DB_URL_ENV: &str = "HALYARD_DB_URL";
/// How long omdb waits for the database before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Every live instance: its state as Nexus records it and as users see it, its VMMs,
    /// its sled.
    Instances {
        /// Deleted instances too.
        #[arg(long)]
        include_deleted: bool,
    },
    /// One instance: its record, and every VMM that ever incarnated it (oldest first) and
    /// its migrations.
    Instance {
        /// The instance's id, or its name (unique within a project).
        instance: String,
        /// The project (name or id), when the name is used in several projects.
        #[arg(long)]
        project: Option<String>,
    },
    /// VMMs: live ones (not retired), or all with --include-deleted; oldest first.
    Vmms {
        /// Only this instance's VMMs (id or name; see `omdb db instance`).
        #[arg(long)]
        instance: Option<String>,
        /// The project of --instance, when given by a name used in several projects.
        #[arg(long, requires = "instance")]
        project: Option<String>,
        /// Only VMMs on this sled (its id, or its sled agent's address).
        #[arg(long)]
        sled: Option<String>,
        /// Retired VMMs too.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Sleds: capacity, what is reserved, how many live VMMs, when last seen, whether expunged.
    Sleds,
    /// Sled reservations: what each non-terminal VMM holds on its sled.
    Reservations,
    /// Live migrations, oldest first, with each side's state.
    Migrations,
    /// Sagas in the log: unfinished and stuck ones, or all with --all; oldest first, with
    /// how each ended and the node in progress.
    Sagas {
        /// Finished sagas too.
        #[arg(long)]
        all: bool,
    },
    /// One saga: its DAG with the state of every node, from the saga log.
    Saga {
        /// The saga's id.
        saga: String,
        /// Print the DAG in Graphviz's dot language (pipe it to `dot -Tsvg`).
        #[arg(long)]
        dot: bool,
    },
    /// Compare the database with what every sled agent reports; list the disagreements.
    /// Exits 2 if there are any.
    Check,
}

pub async fn run(args: &DbArgs, db_url: Option<&str>, json: bool) -> anyhow::Result<Outcome> {
    let db = Db::connect(db_url).await?;
    match &args.command {
        DbCommand::Instances { include_deleted } => {
            cmd_instances(&db, *include_deleted, json).await?
        }
        DbCommand::Instance { instance, project } => {
            cmd_instance(&db, instance, project.as_deref(), json).await?
        }
        DbCommand::Vmms {
            instance,
            project,
            sled,
            include_deleted,
        } => {
            cmd_vmms(
                &db,
                instance.as_deref(),
                project.as_deref(),
                sled.as_deref(),
                *include_deleted,
                json,
            )
            .await?
        }
        DbCommand::Sleds => cmd_sleds(&db, json).await?,
        DbCommand::Reservations => cmd_reservations(&db, json).await?,
        DbCommand::Migrations => cmd_migrations(&db, json).await?,
        DbCommand::Sagas { all } => crate::saga::cmd_sagas(&db, *all, json).await?,
        DbCommand::Saga { saga, dot } => crate::saga::cmd_saga(&db, saga, *dot, json).await?,
        DbCommand::Check => return crate::check::cmd_check(&db, json).await,
    }
    Ok(Outcome::Ok)
}

/// The database URL: the flag, else the environment variable, else the dev default.
pub fn db_url(flag: Option<&str>) -> String {
    if let Some(url) = flag {
        return url.to_string();
    }
    match std::env::var(DB_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => DEFAULT_DB_URL.to_string(),
    }
}

/// A connected datastore, and where it is (for messages).
pub struct Db {
    pub datastore: DataStore,
    /// The URL, without its password.
    pub url: String,
}

impl Db {
    /// Connects (and says why not, in one line, within a few seconds), and checks the schema
    /// version: a different one is a warning (omdb may misread it), none is an error.
    pub async fn connect(flag: Option<&str>) -> anyhow::Result<Db> {
        let url = db_url(flag);
        let shown = redact_url(&url);
        DataStore::probe_connection(&url, CONNECT_TIMEOUT)
            .await
            .map_err(|e| anyhow!("cannot reach the database at {shown}: {}", message(&e)))?;
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let datastore = DataStore::new(
            &log,
            &url,
            PoolConfig {
                max_connections: 4,
                connection_timeout: CONNECT_TIMEOUT,
            },
        );
        match datastore.check_schema_version().await {
            Ok(()) => {}
            Err(e @ SchemaVersionError::Mismatch { .. }) => {
                eprintln!("omdb: warning: {e}; what follows may be incomplete or wrong");
            }
            Err(SchemaVersionError::NotInitialized) => bail!(
                "the database at {shown} has no Halyard schema (no db_metadata); is this \
                 the right database?"
            ),
            Err(SchemaVersionError::Database(e)) => return Err(db_error(&shown, e)),
            Err(e) => bail!("the database at {shown}: {e}"),
        }
        Ok(Db {
            datastore,
            url: shown,
        })
    }

    /// A query's error as omdb reports it.
    pub fn err(&self, e: Error) -> anyhow::Error {
        db_error(&self.url, e)
    }

    /// Every project by id (deleted ones too), to name the project of any instance.
    pub async fn projects(&self) -> anyhow::Result<BTreeMap<ProjectUuid, Project>> {
        let projects = self
            .datastore
            .project_list_all()
            .await
            .map_err(|e| self.err(e))?;
        Ok(projects.into_iter().map(|p| (p.id(), p)).collect())
    }

    /// Every instance by id (deleted ones too), to name the instance of any VMM.
    pub async fn instances(&self) -> anyhow::Result<BTreeMap<InstanceUuid, Instance>> {
        let instances = self
            .datastore
            .instance_list_all(true)
            .await
            .map_err(|e| self.err(e))?;
        Ok(instances.into_iter().map(|i| (i.id(), i)).collect())
    }

    pub async fn sleds(&self) -> anyhow::Result<Vec<Sled>> {
        self.datastore
            .sled_list_all()
            .await
            .map_err(|e| self.err(e))
    }

    /// Finds an instance by id (deleted or not) or by name (live, within `project` if
    /// given, else the only one with that name).
    pub async fn lookup_instance(
        &self,
        which: &str,
        project: Option<&str>,
    ) -> anyhow::Result<Instance> {
        if let Ok(id) = which.trim().parse::<uuid::Uuid>() {
            let id = InstanceUuid::from_untyped_uuid(id);
            return match self.datastore.instance_fetch_including_deleted(id).await {
                Ok(instance) => Ok(instance),
                Err(Error::ObjectNotFound { .. }) => bail!("no instance with id {id}"),
                Err(e) => Err(self.err(e)),
            };
        }
        let name: Name = which.parse().map_err(|e| {
            anyhow!("{which:?} is neither an instance id nor a valid instance name: {e}")
        })?;
        if let Some(project) = project {
            let which_project: NameOrId = project.parse().map_err(|e| {
                anyhow!("{project:?} is neither a project id nor a valid project name: {e}")
            })?;
            let found = match self.datastore.project_fetch(&which_project).await {
                Ok(found) => found,
                Err(Error::ObjectNotFound { .. }) => bail!("no project {project:?}"),
                Err(e) => return Err(self.err(e)),
            };
            return match self
                .datastore
                .instance_fetch_by_name(found.id(), &name)
                .await
            {
                Ok(instance) => Ok(instance),
                Err(Error::ObjectNotFound { .. }) => {
                    bail!(
                        "no instance named {name:?} in project {:?}",
                        found.name().to_string()
                    )
                }
                Err(e) => Err(self.err(e)),
            };
        }
        let mut named = self
            .datastore
            .instance_list_by_name(&name)
            .await
            .map_err(|e| self.err(e))?;
        match named.len() {
            0 => bail!("no instance named {:?}", name.to_string()),
            1 => Ok(named.remove(0)),
            n => {
                let projects = self.projects().await?;
                let mut names: Vec<String> = named
                    .iter()
                    .map(|i| project_name(&projects, i.project_id()))
                    .collect();
                names.sort();
                bail!(
                    "{n} instances are named {:?} (in projects {}); choose one with --project",
                    name.to_string(),
                    names.join(", ")
                )
            }
        }
    }

    /// Finds a sled by id or by its sled agent's address.
    pub async fn lookup_sled(&self, which: &str) -> anyhow::Result<Sled> {
        let sleds = self.sleds().await?;
        let which = which.trim();
        if let Ok(id) = which.parse::<uuid::Uuid>() {
            let id = SledUuid::from_untyped_uuid(id);
            return sleds
                .into_iter()
                .find(|s| s.id() == id)
                .ok_or_else(|| anyhow!("no sled with id {id}"));
        }
        let address = parse_address(which).ok_or_else(|| {
            anyhow!("{which:?} is neither a sled id nor a sled agent's address (IP:PORT)")
        })?;
        sleds
            .into_iter()
            .find(|s| s.address() == address)
            .ok_or_else(|| anyhow!("no sled registered at {address}"))
    }
}

/// `IP:PORT`, optionally written as a URL (`http://IP:PORT/`).
pub fn parse_address(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .unwrap_or(text);
    text.trim_end_matches('/').parse().ok()
}

/// The text of an API error without its category prefix where that adds nothing.
pub fn message(e: &Error) -> String {
    match e {
        Error::ServiceUnavailable { message } => message.clone(),
        Error::InternalError { internal_message } => internal_message.clone(),
        other => other.to_string(),
    }
}

fn db_error(url: &str, e: Error) -> anyhow::Error {
    match &e {
        Error::ServiceUnavailable { message } => {
            anyhow!("cannot reach the database at {url}: {message}")
        }
        _ => anyhow!("reading the database at {url}: {}", message(&e)),
    }
}

pub fn project_name(projects: &BTreeMap<ProjectUuid, Project>, id: ProjectUuid) -> String {
    projects
        .get(&id)
        .map_or_else(|| format!("? ({id})"), |p| p.name().to_string())
}

pub fn instance_name(instances: &BTreeMap<InstanceUuid, Instance>, id: InstanceUuid) -> String {
    instances
        .get(&id)
        .map_or_else(|| "?".to_string(), |i| i.name().to_string())
}

/// The state users see, as Nexus derives it: from Nexus's own state and the active VMM's; an
/// active VMM whose record is not written yet (a start saga is creating it) is starting.
pub fn derived_state(instance: &Instance, active: Option<&Vmm>) -> InstanceState {
    let vmm_state = match (active, instance.runtime.active_vmm()) {
        (Some(vmm), _) => Some(vmm.state()),
        (None, Some(_)) => Some(VmmState::Starting),
        (None, None) => None,
    };
    InstanceState::derive(instance.runtime.nexus_state(), vmm_state)
}

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

async fn cmd_instances(db: &Db, include_deleted: bool, json: bool) -> anyhow::Result<()> {
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

async fn cmd_instance(
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

/// `key:  value` lines, values aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in fields {
        let line = format!("{:<width$} {value}", format!("{key}:"), width = width);
        println!("{}", line.trim_end());
    }
}

pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
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

async fn cmd_vmms(
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
}

async fn cmd_sleds(db: &Db, json: bool) -> anyhow::Result<()> {
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

async fn cmd_reservations(db: &Db, json: bool) -> anyhow::Result<()> {
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

async fn cmd_migrations(db: &Db, json: bool) -> anyhow::Result<()> {
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

/// A saga id from the command line.
pub fn parse_saga_id(text: &str) -> anyhow::Result<SagaUuid> {
    text.trim()
        .parse::<uuid::Uuid>()
        .map(SagaUuid::from_untyped_uuid)
        .with_context(|| format!("{text:?} is not a saga id (a UUID)"))
}

/// A saga by id, or "no saga with id".
pub async fn fetch_saga(db: &Db, id: SagaUuid) -> anyhow::Result<Saga> {
    match db.datastore.saga_fetch(id).await {
        Ok(saga) => Ok(saga),
        Err(Error::ObjectNotFound { .. }) => bail!("no saga with id {id}"),
        Err(e) => Err(db.err(e)),
    }
}
