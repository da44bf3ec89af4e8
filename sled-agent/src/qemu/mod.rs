//! The QEMU backend: one `qemu-system-x86_64` process per VMM, driven over QMP.
//!
//! - [`QemuBackend`]: what all VMMs of this sled share: the configuration, the accelerator
//!   decided once at start ([`accelerator`]), and the directory of per-VMM runtime files,
//!   where whatever an earlier run of this sled agent left is cleaned up at start
//!   ([`leftovers`]).
//! - [`vmm`]: one VMM's task: the process, its QMP connection and its serial console.
//! - [`disks`]: a VMM's disks on QEMU's command line: virtio block devices over `quorum`
//!   of the replicas' NBD exports.
//! - [`migration`]: an outbound live migration, carried out by QEMU itself.
//! - [`tls`]: the migration stream over mutual TLS: this sled's certificate in QEMU's
//!   `tls-creds-x509` layout, and a target admitting only the source sled Nexus named.
//! - [`network`]: the sled's virtual switch: a network namespace of its own, a bridge (and a
//!   VXLAN device over the underlay) per VPC, a tap per NIC, forwarding from the V2P table.
//!
//! Each VMM has a directory `<state_dir>/<sled_id>/<vmm_id>/` holding its QMP socket, its
//! console socket, its pid file and QEMU's own log. The directory exists exactly as long as
//! the process may: it is removed after the process has been reaped, and only then is the
//! VMM reported destroyed or failed.

mod accelerator;
pub(crate) mod disks;
mod leftovers;
mod migration;
pub(crate) mod network;
pub(crate) mod qmp;
mod tls;
pub(crate) mod vmm;

use crate::config::QemuConfig;
use halyard_common::Error;
use halyard_common::ids::{GenericUuid, SledUuid, VmmUuid};
use halyard_sled_agent_api::Accelerator;
use network::Switch;
use slog::{Logger, info};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files the guest boots from, as `dev-tools/guest-image.sh` builds them.
#[derive(Debug, Clone)]
pub(crate) struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// The command that builds the guest image (named in every error about a missing image).
pub(crate) const GUEST_IMAGE_COMMAND: &str = "bash dev-tools/guest-image.sh";

impl GuestImage {
    /// The image in `dir`, or an error naming the command that builds it.
    pub(crate) fn find(dir: &Path) -> Result<GuestImage, Error> {
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio.gz"),
        };
        for file in [&image.kernel, &image.initramfs] {
            if !file.is_file() {
                return Err(Error::unavailable(format!(
                    "the guest image is missing ({} not found); build it with \
                     `{GUEST_IMAGE_COMMAND}` (or set HALYARD_GUEST_DIR / qemu.guest_dir to \
                     where it was built)",
                    file.display()
                )));
            }
        }
        Ok(image)
    }
}

/// Builds the guest image into the default directory unless it is already there (the
/// script caches it per machine), for tests and development tools running from this
/// repository. Returns the directory.
pub async fn build_guest_image() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev-tools/guest-image.sh");
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
    anyhow::ensure!(
        status.success(),
        "`{GUEST_IMAGE_COMMAND}` failed ({status})"
    );
    Ok(crate::config::default_guest_dir())
}

/// The least memory the guest image boots in (measured: below ~72 MiB the kernel resets in a
/// loop, silently), with a margin.
pub(crate) const MIN_GUEST_MEMORY_MIB: u64 = 96;

/// What every QEMU VMM of this sled shares.
pub(crate) struct QemuBackend {
    config: QemuConfig,
    accelerator: Accelerator,
    /// `<state_dir>/<sled_id>`: one directory per VMM below it.
    vmm_root: PathBuf,
    /// This sled's certificate, key and CA in QEMU's layout ([`tls::credentials_dir`]).
    credentials: PathBuf,
    /// The sled's virtual switch, shared with each VMM's task (which connects its NICs).
    switch: Arc<Switch>,
}

/// The longest path a unix socket can have (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl QemuBackend {
    /// Cleans up after an earlier run of this sled agent, checks the guest image, writes
    /// this sled's certificate (`tls`) where its QEMUs read it for the migration stream,
    /// decides the accelerator, and makes the sled's virtual switch.
    pub(crate) async fn start(
        config: &QemuConfig,
        sled_id: SledUuid,
        tls: &halyard_tls::TlsFiles,
        log: &Logger,
    ) -> anyhow::Result<QemuBackend> {
        let vmm_root = config.state_dir.join(sled_id.to_string());
        // Every VMM id has the same length as the nil one.
        let longest_socket = vmm_root
            .join(VmmUuid::from_untyped_uuid(Default::default()).to_string())
            .join(vmm::CONSOLE_SOCKET);
        anyhow::ensure!(
            longest_socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "qemu.state_dir {} is too long for unix socket paths below it (at most {} bytes \
             in all); choose a shorter one",
            config.state_dir.display(),
            MAX_SOCKET_PATH
        );
        leftovers::clean_up(&vmm_root, log).await?;
        std::fs::create_dir_all(&vmm_root).map_err(|e| {
            anyhow::anyhow!(
                "creating the VMM state directory {}: {e}",
                vmm_root.display()
            )
        })?;
        let credentials = tls::credentials_dir(&config.state_dir, sled_id);
        tls.write_qemu_credentials(&credentials).map_err(|e| {
            anyhow::anyhow!(
                "writing QEMU's migration TLS credentials into {}: {e}",
                credentials.display()
            )
        })?;
        let image = GuestImage::find(&config.guest_dir)?;
        let accelerator = accelerator::decide(config, &image, log).await;
        // Last, so that nothing above failing leaves a namespace behind; after the leftover
        // QEMUs are gone (their taps with them).
        let switch = Switch::start(sled_id, config.underlay.as_ref(), log)
            .await
            .map_err(|e| anyhow::anyhow!("making the sled's virtual switch: {e}"))?;
        info!(log, "QEMU backend ready"; "accelerator" => %accelerator,
            "binary" => %config.binary.display(), "guest_dir" => %config.guest_dir.display(),
            "vmm_root" => %vmm_root.display(), "migration_tls" => %credentials.display());
        Ok(QemuBackend {
            config: config.clone(),
            accelerator,
            vmm_root,
            credentials,
            switch: Arc::new(switch),
        })
    }

    pub(crate) fn accelerator(&self) -> Accelerator {
        self.accelerator
    }

    pub(crate) fn switch(&self) -> &Switch {
        &self.switch
    }

    pub(crate) fn switch_handle(&self) -> Arc<Switch> {
        Arc::clone(&self.switch)
    }

    /// A VMM's task died (panicked) before it reaped its QEMU and removed its directory:
    /// does both, so the VMM is really gone before the sled agent reports it failed.
    pub(crate) async fn clean_up_after_dead_task(&self, id: VmmUuid, log: &Logger) {
        let dir = self.vmm_root.join(id.to_string());
        if let Err(e) = leftovers::remove_vmm(&dir, "a VMM task that died", log).await {
            slog::error!(log, "cannot clean up after a VMM task that died";
                "propolis_id" => %id, "error" => %e);
        }
        self.switch.detach(id).await;
    }
}
