//! Nexus: the control plane's central service.
//!
//! - [`config`]: the TOML configuration.
//! - [`app`]: what each operation does; the sagas (`app::sagas`, one file each); the saga
//!   runner and recovery; VMM retirement.
//! - `external_api`: the Oxide-compatible `/v1` API users call; `authn`: where every external
//!   request is authenticated.
//! - `internal_api`: the internal API sled agents call (registration, VMM reports).
//!
//! Start-up order: check the database's schema version, register this process (its id and a
//! fresh incarnation), take over and resume this Nexus's unfinished sagas (one that cannot be
//! resumed is marked, never a reason not to start), serve the APIs, start the background
//! tasks (the heartbeat, which also adopts the sagas of Nexus gone silent, first).

pub mod app;
pub mod authn;
pub mod authz;
pub mod config;
mod console;
mod external_api;
mod internal_api;
pub mod metrics;

pub use app::Nexus;
pub use config::Config;

use anyhow::Context;
use halyard_db_queries::{DataStore, PoolConfig};
use slog::{Logger, info};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running Nexus: its servers and background tasks.
pub struct Server {
    nexus: Arc<Nexus>,
    internal: dropshot::HttpServer<Arc<Nexus>>,
    /// The internal API's address: TLS, client certificates required.
    internal_front: halyard_tls::front::Front,
    external: dropshot::HttpServer<Arc<Nexus>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: &Config, log: &Logger) -> anyhow::Result<Server> {
        let datastore = DataStore::new(log, &config.database_url, PoolConfig::default());
        datastore
            .check_schema_version()
            .await
            .context("refusing to start against this database")?;
        let tls = config
            .tls
            .load()
            .context("loading Nexus's TLS certificate")?;
        let sled_http = tls
            .http_client(halyard_tls::SLED_AGENT_NAME)
            .context("building the sled agents' HTTP client")?;
        let nexus = Nexus::new(config.id, datastore, sled_http, log);
        nexus.set_nexus_gone_after(Duration::from_millis(config.nexus_gone_after_ms));
        nexus.set_sled_unresponsive_after(Duration::from_millis(config.sled_unresponsive_after_ms));
        nexus.set_auto_restart_cooldown(Duration::from_millis(config.auto_restart_cooldown_ms));
        nexus
            .register()
            .await
            .context("registering this Nexus in the database")?;
        let resumed = nexus
            .resume_sagas()
            .await
            .context("resuming unfinished sagas")?;
        info!(log, "resumed unfinished sagas"; "count" => resumed);

        let internal_api = halyard_nexus_internal_api::nexus_internal_api_mod::api_description::<
            internal_api::NexusInternalImpl,
        >()
        .map_err(|e| anyhow::anyhow!("building the internal API: {e}"))?;
        let internal_log = observed_server_log(
            log,
            &nexus,
            "internal",
            &internal_api,
            // Sled agents register every few seconds and report every VMM state change.
            &["PUT /sled-agents/{sled_id}", "PUT /vmms/{propolis_id}"],
        )?;
        // The internal API's dropshot server listens on loopback; callers reach it through
        // its TLS front on `internal_address`, which requires a certificate from the CA and
        // tells the handlers whose it was (halyard_tls::front).
        let front_secret = halyard_tls::peer::FrontSecret::generate();
        nexus.set_internal_front_secret(front_secret.clone());
        let internal = dropshot::ServerBuilder::new(internal_api, Arc::clone(&nexus), internal_log)
            .config(dropshot::ConfigDropshot {
                bind_address: std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0),
                default_request_body_max_bytes: 1024 * 1024,
                ..Default::default()
            })
            .start()
            .context("starting the internal API's server on loopback")?;
        let internal_front = halyard_tls::front::Front::start(
            config.internal_address,
            internal.local_addr(),
            tls.server_config()
                .context("building the internal API's TLS configuration")?,
            front_secret,
            log,
        )
        .await
        .with_context(|| format!("starting the internal API on {}", config.internal_address))?;

        let external_api = halyard_nexus_external_api::nexus_external_api_mod::api_description::<
            external_api::NexusExternalImpl,
        >()
        .map_err(|e| anyhow::anyhow!("building the external API: {e}"))?;
        let external_log = observed_server_log(log, &nexus, "external", &external_api, &[])?;
        let external = dropshot::ServerBuilder::new(external_api, Arc::clone(&nexus), external_log)
            .config(dropshot::ConfigDropshot {
                bind_address: config.external_address,
                default_request_body_max_bytes: 1024 * 1024,
                ..Default::default()
            })
            .start()
            .with_context(|| format!("starting the external API on {}", config.external_address))?;

        let heartbeat =
            nexus.spawn_heartbeat_task(Duration::from_millis(config.heartbeat_interval_ms));
        let retirement =
            nexus.spawn_retirement_task(Duration::from_millis(config.retirement_interval_ms));
        let leftovers =
            nexus.spawn_leftover_task(Duration::from_millis(config.retirement_interval_ms));
        let region_replacement = nexus
            .spawn_region_replacement_task(Duration::from_millis(config.retirement_interval_ms));
        let instance_watcher = nexus.spawn_instance_watcher_task(Duration::from_millis(
            config.instance_watcher_interval_ms,
        ));
        let reincarnation = nexus.spawn_instance_reincarnation_task(Duration::from_millis(
            config.instance_reincarnation_interval_ms,
        ));
        let v2p = nexus.spawn_v2p_reconciliation_task(Duration::from_millis(
            config.v2p_reconciliation_interval_ms,
        ));
        Ok(Server {
            nexus,
            internal,
            internal_front,
            external,
            background: vec![
                heartbeat,
                retirement,
                leftovers,
                region_replacement,
                instance_watcher,
                reincarnation,
                v2p,
            ],
        })
    }

    pub fn nexus(&self) -> &Arc<Nexus> {
        &self.nexus
    }

    /// The internal API's address (TLS: see `halyard_tls`).
    pub fn internal_address(&self) -> SocketAddr {
        self.internal_front.local_addr()
    }

    pub fn external_address(&self) -> SocketAddr {
        self.external.local_addr()
    }

    /// Stops the background tasks (a saga one of them started runs on): what a test does to
    /// hold still a state a task would repair.
    pub fn stop_background_tasks(&self) {
        for task in &self.background {
            task.abort();
        }
    }

    pub async fn close(self) -> anyhow::Result<()> {
        for task in &self.background {
            task.abort();
        }
        self.internal_front.close();
        self.external
            .close()
            .await
            .map_err(|e| anyhow::anyhow!("stopping the external API: {e}"))?;
        self.internal
            .close()
            .await
            .map_err(|e| anyhow::anyhow!("stopping the internal API: {e}"))
    }
}

/// The logger for one of Nexus's servers: it counts every request in Nexus's metrics and logs
/// `routine` endpoints (and successful reads) at debug.
fn observed_server_log(
    log: &Logger,
    nexus: &Nexus,
    api: &'static str,
    description: &dropshot::ApiDescription<Arc<Nexus>>,
    routine: &[&str],
) -> anyhow::Result<Logger> {
    use halyard_observability::http::{Routes, ServerObservation, server_logger};
    Ok(server_logger(
        log,
        ServerObservation {
            api,
            routes: Routes::from_api(description)
                .with_context(|| format!("listing the {api} API's routes"))?,
            routine: routine.iter().map(|r| r.to_string()).collect(),
            metrics: nexus.metrics().http.clone(),
        },
    ))
}
