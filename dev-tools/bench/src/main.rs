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

use clap::Parser;

mod qemu;

#[derive(Parser)]
#[command(about = "Halyard benchmarks (they print figures; they are not tests)")]
enum Command {
    /// Real VMs: start-to-banner and stop-to-destroyed for N guests in parallel, and live
    /// migration total time and guest downtime.
    Qemu(qemu::QemuArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Qemu(args) => qemu::run(args).await,
    }
}
