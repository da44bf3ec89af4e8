//! A throwaway underlay network for QEMU sled agents: a Linux bridge in the root network
//! namespace that each sled agent's underlay veth joins (`[qemu.underlay]` in its
//! configuration), with addresses `10.200.0.N/24` handed out to the sleds.
//!
//! The bridge is named `hlu<pid in hex>-<n>` (at most 15 bytes). Dropping the [`Underlay`]
//! removes it together with every network namespace linked to it (a sled agent that was not
//! shut down leaves its namespace, whose underlay veth is a port of the bridge); a watchdog does
//! the same if the test process dies first (SIGKILL), and [`Underlay::create`] also removes
//! what a dead process's underlays left (their pid no longer runs). Needs root.

use crate::{ClusterError, shell_quote, spawn_watchdog_script};
use ipnet::Ipv4Net;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every underlay bridge's name.
const PREFIX: &str = "hlu";

/// An underlay bridge; removed (with the namespaces linked to it) when dropped.
pub struct Underlay {
    bridge: String,
    /// The host part of the next address handed out.
    next: Mutex<u8>,
    watchdog: Option<u32>,
}

impl Underlay {
    /// Makes a new bridge, up, with no address of its own.
    pub fn create() -> Result<Underlay, ClusterError> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        remove_dead_processes_underlays();
        let pid = std::process::id();
        let bridge = format!("{PREFIX}{pid:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        run(&["link", "add", &bridge, "type", "bridge"])?;
        let mut underlay = Underlay {
            bridge,
            next: Mutex::new(1),
            watchdog: None,
        };
        run(&["link", "set", &underlay.bridge, "up"])?;
        underlay.watchdog = Some(spawn_watchdog_script(
            pid,
            &cleanup_script(&underlay.bridge),
            None,
        )?);
        Ok(underlay)
    }

    /// The bridge's name (for `[qemu.underlay] bridge`).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The next free sled address: `10.200.0.1/24`, `10.200.0.2/24`, ...
    pub fn next_address(&self) -> Ipv4Net {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        assert!(*next < 255, "an underlay has room for 254 sleds");
        let address = Ipv4Addr::new(10, 200, 0, *next);
        *next += 1;
        Ipv4Net::new(address, 24).expect("24 is a valid prefix length")
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        if let Some(pid) = self.watchdog.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&cleanup_script(&self.bridge)))
            .status();
    }
}

/// Shell commands that delete every port of `bridge` and the network namespace at its other
/// end (a veth's peer), then the bridge.
fn cleanup_script(bridge: &str) -> Vec<u8> {
    let quoted = shell_quote(OsStr::new(bridge));
    let mut script = b"br=".to_vec();
    script.extend(quoted);
    script.extend(
        b"; for port in $(ip -o link show master \"$br\" 2>/dev/null | \
          sed -n 's/^[0-9]*: \\([^@:]*\\).*/\\1/p'); do \
          ns=$(ip -o link show dev \"$port\" 2>/dev/null | \
          sed -n 's/.* link-netns \\([^ ]*\\).*/\\1/p'); \
          [ -z \"$ns\" ] || ip netns del \"$ns\" 2>/dev/null; \
          ip link del dev \"$port\" >/dev/null 2>&1; done; \
          ip link del \"$br\" >/dev/null 2>&1",
    );
    script
}

/// Removes the underlays (and their namespaces) of processes that no longer run.
fn remove_dead_processes_underlays() {
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for link in links.flatten() {
        let name = link.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&cleanup_script(&name)))
            .status();
    }
}

fn run(args: &[&str]) -> Result<(), ClusterError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| ClusterError::io(format!("running ip {}", args.join(" ")), e))?;
    if !output.status.success() {
        return Err(ClusterError::CommandFailed {
            command: format!("ip {}", args.join(" ")),
            status: output.status.to_string(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            server_log_tail: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog's part: once the process it watches dies (here a `sleep` killed with
    /// SIGKILL), the bridge goes.
    #[test]
    fn the_watchdog_removes_the_bridge_of_a_process_that_died() {
        let bridge = format!("{PREFIX}t{:x}", std::process::id());
        run(&["link", "add", &bridge, "type", "bridge"]).unwrap();
        let mut doomed = Command::new("sleep").arg("60").spawn().unwrap();
        spawn_watchdog_script(doomed.id(), &cleanup_script(&bridge), None).unwrap();
        let path = format!("/sys/class/net/{bridge}");
        assert!(std::path::Path::new(&path).exists());
        doomed.kill().unwrap();
        doomed.wait().unwrap();
        // The watchdog checks once a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::path::Path::new(&path).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watchdog left {bridge}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    fn an_underlay_is_a_bridge_that_goes_away_with_its_namespaces() {
        let underlay = Underlay::create().unwrap();
        let bridge = underlay.bridge().to_string();
        assert!(bridge.len() <= 15, "{bridge}");
        assert_eq!(underlay.next_address().to_string(), "10.200.0.1/24");
        assert_eq!(underlay.next_address().to_string(), "10.200.0.2/24");
        assert!(std::path::Path::new(&format!("/sys/class/net/{bridge}/bridge")).exists());
        // A namespace linked to it, as a sled agent that was not shut down leaves one.
        let ns = format!("hlt{:x}", std::process::id());
        run(&["netns", "add", &ns]).unwrap();
        let veth = format!("{ns}v");
        run(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "underlay", "netns", &ns,
        ])
        .unwrap();
        run(&["link", "set", &veth, "master", &bridge]).unwrap();
        drop(underlay);
        assert!(!std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists());
        assert!(
            !std::path::Path::new(&format!("/sys/class/net/{veth}")).exists(),
            "the bridge's ports are gone at once"
        );
        let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&namespaces.stdout)
                .lines()
                .any(|line| line.split_whitespace().next() == Some(ns.as_str())),
            "the namespace linked to the bridge is gone"
        );
    }
}
