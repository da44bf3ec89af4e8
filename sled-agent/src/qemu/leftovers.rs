//! Cleaning up after an earlier run of this sled agent.
//!
//! A sled agent that crashed (or was killed) leaves its QEMU processes running and their
//! directories behind. Nexus has, or will, declare those VMMs lost (a restarted sled agent
//! does not know them), so they must not keep running: at start, every VMM directory under
//! this sled's state directory is visited, the QEMU process its pid file names is killed —
//! only if that process really is the QEMU of that directory, since a pid may have been
//! reused — and the directory removed.

use super::vmm::PID_FILE;
use slog::{Logger, info, warn};
use std::path::Path;
use std::time::Duration;

/// How long a killed QEMU may take to disappear.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn clean_up(vmm_root: &Path, log: &Logger) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(vmm_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("reading {}: {e}", vmm_root.display()),
    };
    for entry in entries {
        let dir = entry?.path();
        if !dir.is_dir() {
            continue;
        }
        remove_vmm(&dir, "an earlier run of this sled agent", log).await?;
    }
    Ok(())
}

/// Kills the QEMU that runs out of VMM directory `dir` (if one still does), waits for it to
/// stop running, and removes the directory. `left_by` says who left it (for the log).
pub(crate) async fn remove_vmm(dir: &Path, left_by: &str, log: &Logger) -> anyhow::Result<()> {
    if let Some(pid) = qemu_of(dir) {
        info!(log, "killing a QEMU left behind"; "left_by" => left_by,
            "pid" => pid, "dir" => %dir.display());
        kill_and_wait(pid, log).await;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("removing {}: {e}", dir.display()),
    }
    info!(log, "removed a VMM directory left behind"; "left_by" => left_by,
        "dir" => %dir.display());
    Ok(())
}

/// The pid of the QEMU process that runs out of `dir`, if one still does.
pub(crate) fn qemu_of(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // The pid file may be stale and the pid reused: the process must name this directory's
    // sockets on its command line.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len())
        .any(|window| window == needle)
        .then_some(pid)
}

async fn kill_and_wait(pid: i32, log: &Logger) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid was just checked to be
    // this sled's QEMU.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    if killed != 0 {
        warn!(log, "could not kill a leftover QEMU"; "pid" => pid,
            "error" => %std::io::Error::last_os_error());
        return;
    }
    let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
    // Gone means no /proc entry, or a zombie whose parent (the dead sled agent's) reaper
    // has not collected it yet: either way it no longer runs.
    while process_runs(pid) {
        if tokio::time::Instant::now() > deadline {
            warn!(log, "a killed leftover QEMU has not exited"; "pid" => pid);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn process_runs(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
