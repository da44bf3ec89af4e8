//! Which accelerator QEMU runs guests with, decided once when the sled agent starts.
//!
//! /dev/kvm opening is not enough: under nested virtualisation without `vmx` the device
//! exists and QEMU starts, but a Linux guest hangs. So "auto" boots the real guest image
//! under KVM and takes KVM only if its boot banner appears within [`PROBE_TIMEOUT`];
//! otherwise TCG. The answer is kept for the life of the process (all sleds of one process
//! run on the same host).

use super::GuestImage;
use crate::config::{AcceleratorChoice, QemuConfig};
use crate::guest_console::BOOT_BANNER;
use halyard_sled_agent_api::Accelerator;
use slog::{Logger, info, warn};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::OnceCell;

/// A guest under working KVM prints its banner well within a second; TCG takes ~3 s here.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

static PROBED: OnceCell<Accelerator> = OnceCell::const_new();

pub(crate) async fn decide(config: &QemuConfig, image: &GuestImage, log: &Logger) -> Accelerator {
    match config.accelerator {
        AcceleratorChoice::Kvm => Accelerator::Kvm,
        AcceleratorChoice::Tcg => Accelerator::Tcg,
        AcceleratorChoice::Auto => *PROBED.get_or_init(|| probe(config, image, log)).await,
    }
}

async fn probe(config: &QemuConfig, image: &GuestImage, log: &Logger) -> Accelerator {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = kvm {
        info!(log, "/dev/kvm is not usable; guests run under TCG"; "error" => %e);
        return Accelerator::Tcg;
    }
    match tokio::time::timeout(PROBE_TIMEOUT, boots_under_kvm(config, image)).await {
        Ok(Ok(())) => {
            info!(log, "a probe guest booted under KVM; guests run under KVM");
            Accelerator::Kvm
        }
        Ok(Err(e)) => {
            warn!(log, "a probe guest did not boot under KVM; guests run under TCG";
                "error" => %e);
            Accelerator::Tcg
        }
        Err(_) => {
            warn!(log, "a probe guest did not boot under KVM in time (nested virtualisation \
                without hardware support?); guests run under TCG";
                "timeout_s" => PROBE_TIMEOUT.as_secs());
            Accelerator::Tcg
        }
    }
}

/// Boots the guest under KVM with its console on stdout, until the banner shows.
async fn boots_under_kvm(config: &QemuConfig, image: &GuestImage) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(&config.binary)
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "128",
            "-smp",
            "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 halyard.hostname=kvm-probe",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // Console output is bytes, not necessarily UTF-8.
    let mut lines = BufReader::new(stdout).split(b'\n');
    while let Some(line) = lines.next_segment().await? {
        if String::from_utf8_lossy(&line).contains(BOOT_BANNER) {
            return Ok(());
        }
    }
    let status = child.wait().await?;
    anyhow::bail!("QEMU ended ({status}) before the guest booted")
}
