//! TCP ports for servers a test must start at an address it knows in advance (a server in
//! another process, or one restarted on the same port), chosen so that two tests cannot take
//! the same one between choosing it and binding it.
//!
//! "Bind port 0, read the port, close, hand the number on" races: between the close and the
//! server's bind, any other socket asking the kernel for port 0 may get the same number. So
//! ports are chosen here instead:
//!
//! * **below the kernel's ephemeral range** (`/proc/sys/net/ipv4/ip_local_port_range`), which
//!   is where every port-0 bind and every outgoing connection gets its port: the kernel never
//!   hands one of these out by itself;
//! * **each held by a lock file** (`$TMPDIR/halyard-test-ports/<port>.lock`, `flock`ed) for as
//!   long as the [`ReservedPort`] lives, so that no other test, in this process or another,
//!   chooses it meanwhile (also across the server's restarts on it);
//! * **bound once before it is handed out**, so a port some unrelated program listens on is
//!   skipped.
//!
//! The lock goes with the process, however it ends, so a killed test leaves nothing held.

use crate::ClusterError;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port handed out.
const FIRST_PORT: u16 = 20_000;
/// One past the highest port handed out, unless the ephemeral range starts lower.
/// 32221, the development environment's PostgreSQL (`dev-tools/run-all`), is above it.
const END_PORT: u16 = 30_000;
/// Where the kernel's ephemeral range starts when `/proc` does not say (Linux's default).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// A TCP port on 127.0.0.1 that no other test will choose while this value lives. The port
/// is free (nothing listens on it) when handed out; bind it with `SO_REUSEADDR` (as tokio,
/// dropshot, std and PostgreSQL do) to reuse it right after a previous server on it.
#[derive(Debug)]
pub struct ReservedPort {
    port: u16,
    /// Holds the `flock` on `<port>.lock`; dropping it releases the port.
    _lock: File,
}

impl ReservedPort {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

/// Reserves a free TCP port on 127.0.0.1 (see the module's documentation for how).
pub fn reserve_port() -> Result<ReservedPort, ClusterError> {
    let dir = lock_dir()?;
    let (first, end) = port_range();
    let count = u32::from(end - first);
    // Start somewhere different in each process and each call, so concurrent callers do not
    // all contend for the same first ports.
    let start = scatter() % count;
    for offset in 0..count {
        let port = first + u16::try_from((start + offset) % count).expect("within the range");
        let path = dir.join(format!("{port}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ClusterError::io(format!("opening {}", path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                return Err(ClusterError::io(format!("locking {}", path.display()), e));
            }
        }
        // Held by no test; skip it if something else listens on it.
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(ReservedPort { port, _lock: lock });
        }
    }
    Err(ClusterError::io(
        "reserving a TCP port",
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("every port in {first}..{end} is reserved or in use"),
        ),
    ))
}

/// `$TMPDIR/halyard-test-ports`, shared by every test process of every user on this machine.
fn lock_dir() -> Result<PathBuf, ClusterError> {
    let dir = std::env::temp_dir().join("halyard-test-ports");
    if !dir.is_dir() {
        match fs::create_dir(&dir) {
            Ok(()) => {
                // Sticky and writable by all, like /tmp itself; if this fails the directory
                // still works for this user.
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ClusterError::io(format!("creating {}", dir.display()), e)),
        }
    }
    Ok(dir)
}

/// The ports handed out: from [`FIRST_PORT`] up to [`END_PORT`] or the start of the
/// ephemeral range, whichever is lower (and at least a thousand ports above 1023).
fn port_range() -> (u16, u16) {
    let ephemeral_start = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    let end = END_PORT.min(ephemeral_start).max(1024 + 1000);
    let first = FIRST_PORT.min(end - 1000);
    (first, end)
}

fn scatter() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_is_not_handed_out_again_until_released() {
        let (first, end) = port_range();
        let held: Vec<ReservedPort> = (0..20).map(|_| reserve_port().unwrap()).collect();
        let mut ports: Vec<u16> = held.iter().map(ReservedPort::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), held.len(), "a port was handed out twice");
        for port in &ports {
            assert!((first..end).contains(port), "{port} outside {first}..{end}");
        }
        // A port someone listens on is skipped; once free and released it can come back.
        let listener = TcpListener::bind(held[0].address()).unwrap();
        drop(held);
        for _ in 0..50 {
            assert_ne!(
                reserve_port().unwrap().port(),
                listener.local_addr().unwrap().port()
            );
        }
    }

    #[test]
    fn the_range_is_below_the_ephemeral_ports() {
        let (first, end) = port_range();
        assert!(first >= 1024 && end > first, "{first}..{end}");
        if let Ok(text) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let ephemeral: u16 = text.split_whitespace().next().unwrap().parse().unwrap();
            assert!(end <= ephemeral.max(2024), "{end} > {ephemeral}");
        }
    }
}
