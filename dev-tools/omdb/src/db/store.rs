//! The database omdb reads: the connection, and the lookups and names every `omdb db`
//! command (and `omdb sled-agent`, to find a sled) shares.

use crate::output::redact_url;
use anyhow::{anyhow, bail};
use halyard_common::ids::{GenericUuid, InstanceUuid, ProjectUuid, SledUuid};
use halyard_common::{Error, InstanceState, Name, NameOrId, VmmState};
use halyard_db_model::{Instance, Project, Sled, Vmm};
use halyard_db_queries::{DataStore, PoolConfig, SchemaVersionError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the development environment (`dev-tools/run-all`) keeps its database.
pub const DEFAULT_DB_URL: &str = "postgresql://postgres@127.0.0.1:32221/halyard";
/// The environment variable that names the database when `--db-url` is not given.
pub const DB_URL_ENV: &str = "HALYARD_DB_URL";
/// How long omdb waits for the database before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
