//! `halyard-bench`: benchmarks that print figures. They are not tests: nothing here passes or
//! fails on a time, and each run prints what it measured side by side.
//!
//! `halyard-bench qemu --guests N` starts PostgreSQL, Nexus and two QEMU sled agents in this
//! process (real guests; TCG where KVM does not work), then through the external API:
//!
//! - starts N guests at once and times each from its start request to its boot banner on
//!   the serial console (read through Nexus);
//! - stops them at once and times each from its stop request until the instance is stopped
//!   (its VMM destroyed, the QEMU process reaped, the reservation released);
//! - live-migrates one running guest back and forth between the two sleds, timing each from
//!   the migrate request until both sides report completion, and printing the guest's
//!   downtime as QEMU measured it (read from the source sled agent's log record).
//!
//! `halyard-bench lifecycles` starts a PostgreSQL cluster of its own (the test clusters'
//! settings), Nexus and K simulated sled agents with zero-delay VMMs in this process, then C
//! clients do full instance lifecycles through the external API for a fixed time (create,
//! start, wait until running, stop, wait until stopped, delete). It prints lifecycles/s, the
//! latency of each operation, the database commits per lifecycle (`pg_stat_database`), the
//! commit rate pgbench reaches with C clients on the same cluster right after, and the ratio
//! of the two; then the invariant checker's verdict.
//!
//! `halyard-bench placement --sleds 10,1000` does the same with a few clients at each number
//! of sleds in turn (real simulated sled agents, each its own HTTP server, re-registering every
//! 10 s, all in a child process: this program run as the hidden `sled-host`, so that this
//! process's resident memory is Nexus's, and the child's the sled agents'). At each scale it
//! prints the start latencies, Nexus's and the sled agents' resident memory; at the first, the
//! sled agents' memory per simulated VMM (the child's growth while `--held-vmms` instances run,
//! divided by them); then each scale's start ratios against the first and the goal (start p99
//! at N sleds <= 2x at the first scale).
//!
//! `halyard-bench disks` starts the same system with K simulated sleds offering storage, then C
//! clients each create a blank disk and delete it, again and again, for a fixed time (each
//! create places three regions and makes them on three sled agents; each delete removes them).
//! It prints disk creates and deletes per second and the latency of each; then, on the same
//! system, C clients do instance lifecycles for a window without disks and for a window in
//! which each instance is created with a new disk (deleted with it), and it prints both rates
//! side by side and their ratio; then the invariant checker's verdict.
//!
//! `halyard-bench ha` measures, in one run, C clients' lifecycles/s (through HAProxy, K
//! simulated sleds whose sled agents also reach Nexus through HAProxy) in four windows: (a) one
//! Nexus on one PostgreSQL (the test settings, but `synchronous_commit` on for Halyard's
//! database); (b) two Nexus on the same PostgreSQL and sleds; (c) one Nexus on a Patroni
//! cluster of three members with synchronous replication (fsync off too); (d) two Nexus on it
//! (`--skip-two-on-patroni` leaves it out). It prints each rate and the ratios b/a (what a
//! second Nexus adds), c/a (what synchronous replication costs) and d/c; then the invariant
//! checker's verdict on both databases. Each window is `--duration-secs` (10) after
//! `--warmup-secs` (3).
//!
//! `halyard-bench scale` starts the same system with `--sleds` (4) simulated sleds, makes
//! `--clients` (8) real stopped instances through the API, and seeds the database by SQL to
//! `--instances-small` (1,000) instances, `--per-project` (100) to a project, every seeded row
//! a copy of a real one (project, its admin role, its `default` VPC and subnet; a stopped
//! instance without VMM). With C clients for `--duration-secs` (10) each it measures the p50
//! and p99 of an instance view, a page of 100 instances, and starts and stops of the real
//! instances (to the API's answer and to running or stopped); it times the real `omdb db
//! instances` and `omdb db check`, reads Nexus's resident memory (this process's VmRSS), and
//! prints the generic plan of every statement run in the window that has a sequential scan.
//! Then it grows the database to `--instances-large` (100,000) and does it all again, and
//! prints the p99 ratios and its goals (each p99 ratio <= 2; each omdb command < 5 s at the
//! large scale); then the invariant checker's verdict (violations fail the run).

use clap::Parser;

mod disks;
mod ha;
mod lifecycles;
mod placement;
mod qemu;
mod scale;
mod sled_host;
mod system;

#[derive(Parser)]
#[command(about = "Halyard benchmarks (they print figures; they are not tests)")]
enum Command {
    /// Real VMs: start-to-banner and stop-to-destroyed for N guests in parallel, and live
    /// migration total time and guest downtime.
    Qemu(qemu::QemuArgs),
    /// Instance lifecycles per second with C clients and K simulated sleds, against the
    /// commit rate pgbench reaches on the same PostgreSQL cluster.
    Lifecycles(lifecycles::LifecyclesArgs),
    /// Instance start latency, and Nexus's and the sled agents' memory, at several numbers of
    /// sleds (10 and 1,000 by default).
    Placement(placement::PlacementArgs),
    /// Disk creates and deletes per second with C clients and K simulated sleds with storage.
    Disks(disks::DisksArgs),
    /// Lifecycles per second with one Nexus and with two behind HAProxy, on one PostgreSQL
    /// and on a replicated one (Patroni, synchronous replication), in one run.
    Ha(ha::HaArgs),
    /// p99 of instance view, list, start and stop, omdb's time, and Nexus's memory at 1,000
    /// instances and at 100,000 (seeded, mostly stopped), side by side.
    Scale(scale::ScaleArgs),
    /// Simulated sled agents in a child process of `placement` (not run by hand).
    #[command(hide = true)]
    SledHost(sled_host::SledHostArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Thousands of sled agents (and Nexus's connections to them) hold several sockets each.
    system::raise_open_files(1 << 20);
    match Command::parse() {
        Command::Qemu(args) => qemu::run(args).await,
        Command::Lifecycles(args) => lifecycles::run(args).await,
        Command::Placement(args) => placement::run(args).await,
        Command::Disks(args) => disks::run(args).await,
        Command::Ha(args) => ha::run(args).await,
        Command::Scale(args) => scale::run(args).await,
        Command::SledHost(args) => sled_host::run(args).await,
    }
}
