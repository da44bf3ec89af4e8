//! The sled agent's TOML configuration.

use halyard_common::ids::SledUuid;
use halyard_common::net::Ipv4Net;
use halyard_common::{ByteCount, SledBackend};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything a sled agent needs to know at start.
///
/// ```toml
/// sled_id = "4a1b8f2e-8d7c-4a8e-9f0a-2b3c4d5e6f70"
/// listen_address = "127.0.0.1:12400"
/// nexus_address = "127.0.0.1:12221"
/// backend = "sim"
/// hardware_threads = 32
/// physical_ram = 68719476736            # bytes
/// registration_interval_ms = 10000     # optional
///
/// [tls]                                 # mutual TLS (see halyard_tls)
/// ca_cert = ".halyard-dev/pki/ca.pem"
/// cert = ".halyard-dev/pki/sled-4a1b8f2e-8d7c-4a8e-9f0a-2b3c4d5e6f70.pem"
/// key = ".halyard-dev/pki/sled-4a1b8f2e-8d7c-4a8e-9f0a-2b3c4d5e6f70-key.pem"
///
/// [sim]                                 # optional; all delays default to 0
/// start_delay_ms = 200
/// stop_delay_ms = 100
/// reboot_delay_ms = 100
/// migration_phase_delay_ms = 50
///
/// [qemu]                                # optional; used when backend = "qemu"
/// binary = "qemu-system-x86_64"         # looked up on PATH
/// guest_dir = "/var/cache/halyard/guest"  # built by dev-tools/guest-image.sh
/// state_dir = "/tmp/halyard-qemu"       # per-VMM sockets and pid files, under <sled_id>/;
///                                       # the [tls] files for QEMU in <sled_id>-tls/
/// accelerator = "auto"                  # "auto" (kvm if a probe guest boots), "kvm", "tcg"
/// stop_timeout_ms = 10000               # ACPI powerdown, then a hard stop
///
/// [qemu.underlay]                       # optional: without it, guests reach only guests
///                                       # of this sled (no VXLAN uplink)
/// bridge = "hlu0"                       # a bridge in the root namespace that the
///                                       # environment made, joining the sleds
/// address = "10.200.0.3/24"             # this sled's underlay address (reported to Nexus)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sled_id: SledUuid,
    /// Where the API listens (port 0: any free port; the real one is what gets registered).
    pub listen_address: SocketAddr,
    /// Nexus's internal API.
    pub nexus_address: SocketAddr,
    pub backend: SledBackend,
    /// Hardware threads offered to VMMs.
    pub hardware_threads: u32,
    /// Memory offered to VMMs, in bytes.
    pub physical_ram: ByteCount,
    /// How often the sled re-registers with Nexus, so a restarted Nexus learns it again.
    #[serde(default = "default_registration_interval_ms")]
    pub registration_interval_ms: u64,
    #[serde(default)]
    pub sim: SimConfig,
    #[serde(default)]
    pub qemu: QemuConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    /// This sled's certificate (its id in it: it serves its API with it and presents it to
    /// Nexus and to other sled agents) and the deployment's CA (the only issuer of callers it
    /// accepts).
    pub tls: halyard_tls::TlsFiles,
}

/// How the simulated backend behaves: the time each transition takes.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default)]
    pub start_delay_ms: u64,
    #[serde(default)]
    pub stop_delay_ms: u64,
    #[serde(default)]
    pub reboot_delay_ms: u64,
    #[serde(default)]
    pub migration_phase_delay_ms: u64,
}

/// How the QEMU backend runs its VMMs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// The QEMU binary (a bare name is looked up on PATH).
    #[serde(default = "default_qemu_binary")]
    pub binary: PathBuf,
    /// Where the guest image (`vmlinuz`, `initramfs.cpio.gz`) is: what
    /// `dev-tools/guest-image.sh` builds. Defaults to `$HALYARD_GUEST_DIR`, else
    /// `/var/cache/halyard/guest`.
    #[serde(default = "default_guest_dir")]
    pub guest_dir: PathBuf,
    /// Where each VMM's QMP and console sockets and pid file live, under `<sled_id>/`.
    /// What an earlier run of this sled agent left there is cleaned up at start. The `[tls]`
    /// files are copied into `<sled_id>-tls/` at start, for QEMU's migration stream.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub accelerator: AcceleratorChoice,
    /// How long a stop waits for the guest to power off after ACPI powerdown before the
    /// QEMU process is ended.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Where the sled's virtual switch reaches other sleds' (VXLAN over it); none: guests
    /// reach only guests of this sled.
    #[serde(default)]
    pub underlay: Option<UnderlayConfig>,
}

/// The sled's link to the underlay, the network joining the sleds: a veth pair from the
/// sled's network namespace to `bridge`, with `address` on the namespace's end.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayConfig {
    /// A bridge in the root network namespace, made by the environment (not the sled agent).
    pub bridge: String,
    /// This sled's underlay address and the underlay's prefix length, e.g. `10.200.0.3/24`:
    /// VXLAN frames leave from it, and it is the address the sled reports to Nexus.
    pub address: Ipv4Net,
}

impl Default for QemuConfig {
    fn default() -> QemuConfig {
        QemuConfig {
            binary: default_qemu_binary(),
            guest_dir: default_guest_dir(),
            state_dir: default_state_dir(),
            accelerator: AcceleratorChoice::default(),
            stop_timeout_ms: default_stop_timeout_ms(),
            underlay: None,
        }
    }
}

impl QemuConfig {
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }
}

/// Which accelerator QEMU uses.
/// The storage a sled offers for regions (replicas of disks).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes offered for regions; 0 (the default): the sled holds none.
    #[serde(default = "no_storage")]
    pub capacity: ByteCount,
    /// QEMU sleds: the directory of region files (default `<qemu.state_dir>/<sled_id>/regions`).
    /// It must outlive the sled agent: the data is there.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// QEMU sleds: the daemon that serves regions over NBD.
    #[serde(default = "default_storage_daemon")]
    pub daemon_binary: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            capacity: no_storage(),
            directory: None,
            daemon_binary: default_storage_daemon(),
        }
    }
}

fn no_storage() -> ByteCount {
    ByteCount::from_mebibytes_u32(0)
}

fn default_storage_daemon() -> PathBuf {
    PathBuf::from("qemu-storage-daemon")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceleratorChoice {
    /// KVM if /dev/kvm opens and a probe guest really boots under it, otherwise TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

fn default_qemu_binary() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

/// The guest image's default home, shared with `dev-tools/guest-image.sh`.
pub fn default_guest_dir() -> PathBuf {
    std::env::var_os("HALYARD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/halyard/guest"))
}

fn default_state_dir() -> PathBuf {
    std::env::temp_dir().join("halyard-qemu")
}

fn default_stop_timeout_ms() -> u64 {
    10_000
}

fn default_registration_interval_ms() -> u64 {
    10_000
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
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == SledBackend::Qemu && self.qemu.stop_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "qemu.stop_timeout_ms must be positive".into(),
            ));
        }
        if let Some(underlay) = &self.qemu.underlay {
            // An interface name: at most 15 bytes (IFNAMSIZ with its NUL), no '/' or space.
            let bridge = &underlay.bridge;
            if bridge.is_empty()
                || bridge.len() > 15
                || bridge.contains(|c: char| c == '/' || c.is_whitespace())
            {
                return Err(ConfigError::Invalid(format!(
                    "qemu.underlay.bridge {bridge:?} is not an interface name (1 to 15 \
                     bytes, no '/' or white space)"
                )));
            }
            if underlay.address.prefix_len() >= 31 {
                return Err(ConfigError::Invalid(format!(
                    "qemu.underlay.address {} needs a prefix shorter than /31 (the underlay \
                     joins several sleds)",
                    underlay.address
                )));
            }
        }
        if self.registration_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "registration_interval_ms must be positive".into(),
            ));
        }
        if self.listen_address.ip().is_unspecified() {
            // The sled registers this address with Nexus, and a QEMU sled serves its regions
            // on it to other sleds' VMMs: it must be one they can reach.
            return Err(ConfigError::Invalid(format!(
                "listen_address {} is unspecified; give the address Nexus and other sleds \
                 reach this sled at (it is registered with Nexus and serves the sled's disk \
                 regions)",
                self.listen_address
            )));
        }
        Ok(())
    }

    pub fn registration_interval(&self) -> Duration {
        Duration::from_millis(self.registration_interval_ms)
    }
}

impl SimConfig {
    pub fn start_delay(&self) -> Duration {
        Duration::from_millis(self.start_delay_ms)
    }
    pub fn stop_delay(&self) -> Duration {
        Duration::from_millis(self.stop_delay_ms)
    }
    pub fn reboot_delay(&self) -> Duration {
        Duration::from_millis(self.reboot_delay_ms)
    }
    pub fn migration_phase_delay(&self) -> Duration {
        Duration::from_millis(self.migration_phase_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = "sled_id = \"4a1b8f2e-8d7c-4a8e-9f0a-2b3c4d5e6f70\"\n\
            listen_address = \"127.0.0.1:0\"\nnexus_address = \"127.0.0.1:12221\"\n\
            backend = \"sim\"\nhardware_threads = 32\nphysical_ram = 68719476736\n\
            [tls]\nca_cert = \"ca.pem\"\ncert = \"sled.pem\"\nkey = \"sled-key.pem\"\n\
            [sim]\nstart_delay_ms = 200\n";
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.sim.start_delay(), Duration::from_millis(200));
        assert_eq!(config.registration_interval(), Duration::from_secs(10));
        assert!(toml::from_str::<Config>(&format!("{text}bogus = 1\n")).is_err());
        assert_eq!(config.qemu, QemuConfig::default());
        let qemu: Config = toml::from_str(&format!(
            "{}[qemu]\naccelerator = \"tcg\"\nstop_timeout_ms = 0\n",
            text.replace("\"sim\"", "\"qemu\"")
        ))
        .unwrap();
        assert_eq!(qemu.qemu.accelerator, AcceleratorChoice::Tcg);
        assert_eq!(qemu.qemu.underlay, None);
        let with_underlay: Config = toml::from_str(&format!(
            "{}[qemu]\n[qemu.underlay]\nbridge = \"hlu0\"\naddress = \"10.200.0.3/24\"\n",
            text.replace("\"sim\"", "\"qemu\"")
        ))
        .unwrap();
        with_underlay.validate().unwrap();
        let underlay = with_underlay.qemu.underlay.clone().unwrap();
        assert_eq!(underlay.bridge, "hlu0");
        assert_eq!(underlay.address.to_string(), "10.200.0.3/24");
        let mut long_name = with_underlay.clone();
        long_name.qemu.underlay.as_mut().unwrap().bridge = "a-very-long-bridge".into();
        assert!(long_name.validate().is_err());
        assert!(
            qemu.validate()
                .unwrap_err()
                .to_string()
                .contains("stop_timeout_ms")
        );
        // An unspecified address cannot be registered with Nexus nor serve regions.
        let anywhere: Config =
            toml::from_str(&text.replace("127.0.0.1:0", "0.0.0.0:12400")).unwrap();
        assert!(
            anywhere
                .validate()
                .unwrap_err()
                .to_string()
                .contains("unspecified")
        );
    }
}
