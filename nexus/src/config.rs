//! Nexus's TOML configuration.

use halyard_common::ids::NexusUuid;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// ```toml
/// id = "0b7e5a34-5c39-4b6c-9b0e-3a6c2d1f8e90"   # this Nexus, the owner of the sagas it runs
/// database_url = "postgresql://postgres@127.0.0.1:5432/halyard"
/// external_address = "127.0.0.1:12220"          # the /v1 API
/// internal_address = "127.0.0.1:12221"          # what sled agents call
/// retirement_interval_ms = 5000                  # optional
/// heartbeat_interval_ms = 1000                   # optional: how often it says it is alive
/// nexus_gone_after_ms = 10000                    # optional: silence before its sagas move
/// instance_watcher_interval_ms = 1000            # optional: how often sled agents are asked
/// instance_reincarnation_interval_ms = 1000      # optional: how often failed ones restart
/// sled_unresponsive_after_ms = 20000             # optional: silence before a sled's VMMs fail
/// auto_restart_cooldown_ms = 3600000             # optional: between two automatic restarts
/// v2p_reconciliation_interval_ms = 10000         # optional: how often sleds' VPC mappings
///                                                #   are compared with the database's
///
/// [tls]                                          # mutual TLS on the internal API
/// ca_cert = ".halyard-dev/pki/ca.pem"
/// cert = ".halyard-dev/pki/nexus.pem"
/// key = ".halyard-dev/pki/nexus-key.pem"
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub id: NexusUuid,
    pub database_url: String,
    pub external_address: SocketAddr,
    pub internal_address: SocketAddr,
    /// How often the background task looks for VMMs whose retirement a crash interrupted.
    #[serde(default = "default_retirement_interval_ms")]
    pub retirement_interval_ms: u64,
    /// How often this Nexus writes its heartbeat and looks for sagas of Nexus gone silent.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// How long a Nexus may go without a heartbeat before another adopts its sagas.
    #[serde(default = "default_nexus_gone_after_ms")]
    pub nexus_gone_after_ms: u64,
    /// How often the instance watcher asks every sled agent for its VMMs.
    #[serde(default = "default_instance_watcher_interval_ms")]
    pub instance_watcher_interval_ms: u64,
    /// How often the reincarnation task looks for failed instances to restart.
    #[serde(default = "default_instance_watcher_interval_ms")]
    pub instance_reincarnation_interval_ms: u64,
    /// How long a sled agent may go unheard before its VMMs are declared failed.
    #[serde(default = "default_sled_unresponsive_after_ms")]
    pub sled_unresponsive_after_ms: u64,
    /// How long after an automatic restart an instance that fails again waits before the
    /// next (Oxide's cooldown: one hour).
    #[serde(default = "default_auto_restart_cooldown_ms")]
    pub auto_restart_cooldown_ms: u64,
    /// How often every sled's VPC mappings are compared with the database's (and pushed
    /// where they differ).
    #[serde(default = "default_v2p_reconciliation_interval_ms")]
    pub v2p_reconciliation_interval_ms: u64,
    /// Nexus's certificate (it serves the internal API with it and presents it to sled
    /// agents) and the deployment's CA (the only issuer of callers it accepts).
    pub tls: halyard_tls::TlsFiles,
}

fn default_v2p_reconciliation_interval_ms() -> u64 {
    10_000
}

fn default_retirement_interval_ms() -> u64 {
    5_000
}

fn default_heartbeat_interval_ms() -> u64 {
    1_000
}

fn default_nexus_gone_after_ms() -> u64 {
    10_000
}

fn default_instance_watcher_interval_ms() -> u64 {
    1_000
}

fn default_sled_unresponsive_after_ms() -> u64 {
    20_000
}

fn default_auto_restart_cooldown_ms() -> u64 {
    3_600_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl Config {
    /// A configuration with every optional setting at its default (as a file that leaves
    /// them out gets).
    pub fn new(
        id: NexusUuid,
        database_url: impl Into<String>,
        external_address: SocketAddr,
        internal_address: SocketAddr,
        tls: halyard_tls::TlsFiles,
    ) -> Config {
        Config {
            id,
            database_url: database_url.into(),
            external_address,
            internal_address,
            retirement_interval_ms: default_retirement_interval_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            nexus_gone_after_ms: default_nexus_gone_after_ms(),
            instance_watcher_interval_ms: default_instance_watcher_interval_ms(),
            instance_reincarnation_interval_ms: default_instance_watcher_interval_ms(),
            sled_unresponsive_after_ms: default_sled_unresponsive_after_ms(),
            auto_restart_cooldown_ms: default_auto_restart_cooldown_ms(),
            v2p_reconciliation_interval_ms: default_v2p_reconciliation_interval_ms(),
            tls,
        }
    }

    /// The configuration as a TOML file says it (what `from_file` reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Nexus configuration is plain TOML")
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source,
        })
    }
}
