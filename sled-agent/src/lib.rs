//! The sled agent: runs the VMMs of one sled and reports their state to Nexus.
//!
//! - [`config`]: the TOML configuration.
//! - [`sled_agent`]: the table of VMMs and what each API call does to it.
//! - `sim`: the simulated backend (one task per VMM walking the VMM state machine).
//! - `qemu`: the QEMU backend (one `qemu-system-x86_64` per VMM, driven over QMP).
//! - `vmm_runtime`: a VMM's published state, numbered the same way by both backends.
//! - [`guest_console`]: what the guest image prints (banner, heartbeats).
//! - `console`: each VMM's serial console (a ring buffer of its output, live streams, input).
//! - `reporter`: one task per VMM pushing its newest state to Nexus, in order, with retries.
//! - `registration`: keeps the sled registered with Nexus.
//! - `metrics`: what `GET /metrics` shows (Prometheus text).
//! - `storage`: the regions (disk replicas) the sled holds: simulated, or qcow2 files served
//!   over NBD by a `qemu-storage-daemon` the sled agent supervises.
//! - `http_entrypoints`: the `SledAgentApi` implementation.

mod admission;
pub mod config;
mod console;
pub mod guest_console;
mod http_entrypoints;
mod metrics;
mod qemu;
mod registration;
mod reporter;
mod sim;
pub mod sled_agent;
mod storage;
mod v2p;
mod vmm_runtime;

pub use config::{AcceleratorChoice, Config, QemuConfig, SimConfig, StorageConfig, UnderlayConfig};
pub use qemu::build_guest_image;
pub use qemu::network::namespace_name as qemu_namespace_name;
pub use sled_agent::SledAgent;

use anyhow::Context;
use halyard_common::SledBackend;
use sled_agent::Backend;
use slog::Logger;
use std::net::SocketAddr;
use std::sync::Arc;

/// A running sled agent: its HTTP server and background tasks.
pub struct Server {
    http: dropshot::HttpServer<Arc<SledAgent>>,
    /// The API's address: TLS, client certificates required.
    front: halyard_tls::front::Front,
    agent: Arc<SledAgent>,
    registration: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts the API server, then begins registering with Nexus.
    pub async fn start(config: &Config, log: &Logger) -> anyhow::Result<Server> {
        config.validate()?;
        let backend = match config.backend {
            SledBackend::Sim => Backend::Sim(config.sim),
            SledBackend::Qemu => {
                let log = log.new(slog::o!("sled_id" => config.sled_id.to_string()));
                Backend::Qemu(
                    qemu::QemuBackend::start(&config.qemu, config.sled_id, &config.tls, &log)
                        .await?,
                )
            }
        };
        // A QEMU sled's switch (its network namespace) is removed if the rest cannot start.
        let switch = match &backend {
            Backend::Sim(_) => None,
            Backend::Qemu(qemu) => Some(qemu.switch_handle()),
        };
        let started = Server::serve(config, backend, log).await;
        if let (Err(_), Some(switch)) = (&started, switch) {
            switch.shut_down().await;
        }
        started
    }

    /// Starts serving with `backend`, then begins registering with Nexus.
    async fn serve(config: &Config, backend: Backend, log: &Logger) -> anyhow::Result<Server> {
        let tls = config
            .tls
            .load()
            .context("loading the sled's TLS certificate")?;
        let front_secret = halyard_tls::peer::FrontSecret::generate();
        let storage = match config.backend {
            SledBackend::Sim => storage::Storage::simulated(&config.storage, log),
            SledBackend::Qemu => {
                let directory = config.storage.directory.clone().unwrap_or_else(|| {
                    config
                        .qemu
                        .state_dir
                        .join(format!("{}-regions", config.sled_id))
                });
                storage::Storage::with_daemon(
                    &config.storage,
                    directory,
                    config.listen_address.ip(),
                    config.sled_id,
                    log,
                )
                .await
                .context("starting the sled's storage")?
            }
        };
        let agent = SledAgent::new(config, backend, storage, &tls, front_secret.clone(), log)
            .context("building the sled agent's HTTP clients")?;
        let api = halyard_sled_agent_api::sled_agent_api_mod::api_description::<
            http_entrypoints::SledAgentImpl,
        >()
        .map_err(|e| anyhow::anyhow!("building the sled agent API: {e}"))?;
        // The API's dropshot server listens on loopback; callers reach it through its TLS
        // front on `listen_address`, which requires a certificate from the CA and tells the
        // handlers whose it was (halyard_tls::front).
        let dropshot_config = dropshot::ConfigDropshot {
            bind_address: SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0),
            default_request_body_max_bytes: 1024 * 1024,
            // Every line of a call Nexus made for an external request names that request.
            log_headers: halyard_observability::request_id::log_headers(),
            ..Default::default()
        };
        let server_log = halyard_observability::http::server_logger(
            log,
            halyard_observability::http::ServerObservation {
                api: "sled-agent",
                routes: halyard_observability::http::Routes::from_api(&api)
                    .context("listing the sled agent API's routes")?,
                routine: Vec::new(),
                metrics: agent.metrics().http.clone(),
            },
        );
        let http = dropshot::ServerBuilder::new(api, Arc::clone(&agent), server_log)
            .config(dropshot_config)
            .start()
            .context("starting the sled agent API's server on loopback")?;
        let front = halyard_tls::front::Front::start(
            config.listen_address,
            http.local_addr(),
            tls.server_config()
                .context("building the sled agent API's TLS configuration")?,
            front_secret,
            log,
        )
        .await
        .with_context(|| format!("starting the sled agent API on {}", config.listen_address))?;
        agent.set_address(front.local_addr());
        let registration = registration::spawn(Arc::clone(&agent), config.registration_interval());
        Ok(Server {
            http,
            front,
            agent,
            registration,
        })
    }

    /// The API's address (TLS: see `halyard_tls`).
    pub fn local_addr(&self) -> SocketAddr {
        self.front.local_addr()
    }

    pub fn agent(&self) -> &Arc<SledAgent> {
        &self.agent
    }

    /// Stops registering with Nexus (serving goes on): the sled agent neither re-registers
    /// nor refreshes its address in Nexus's records. For tests that make a sled agent look
    /// out of reach by changing its address there, which a periodic registration would
    /// otherwise put back.
    pub fn stop_registering(&self) {
        self.registration.abort();
    }

    /// Stops serving and registering. Simulated VMMs end with the runtime; QEMU processes
    /// are ended here, so none outlives a sled agent that shut down.
    pub async fn close(self) -> anyhow::Result<()> {
        self.registration.abort();
        // Still serving while the QEMU VMMs end: Nexus may ask about them as their last
        // reports arrive.
        self.agent.end_qemu_vmms().await;
        self.agent.remove_switch().await;
        self.agent.storage().stop().await;
        self.front.close();
        self.http
            .close()
            .await
            .map_err(|e| anyhow::anyhow!("stopping the API server: {e}"))
    }
}
