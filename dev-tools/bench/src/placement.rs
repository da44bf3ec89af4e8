//! `halyard-bench placement`: instance start latency with few sleds and with many (see the
//! crate docs).

use crate::system::{
    Driven, Figures, Load, System, by_id, create_instance, resident_bytes, round, wait_for_state,
};
use anyhow::bail;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use halyard_common::InstanceState;
use halyard_common::ids::InstanceUuid;
use halyard_nexus_external_client::types::InstanceNetworkInterfaceAttachment;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct PlacementArgs {
    /// The numbers of sleds measured, in turn: at least two, increasing, comma-separated
    /// (more sled agents are started to get from one to the next).
    #[arg(long, value_delimiter = ',', default_value = "10,1000")]
    pub sleds: Vec<usize>,
    /// Concurrent clients doing lifecycles at each scale.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Measured time at each scale. It should span a few registration intervals (10 s), so
    /// that the sleds' periodic re-registration, which grows with their number, is part of
    /// what is measured.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Unmeasured time at each scale first.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// How often a client waiting for running or stopped looks at the instance.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// At the first scale, after its measured window: run this many instances at once to
    /// measure the sled agents' memory per simulated VMM (0: off).
    #[arg(long, default_value_t = 256)]
    pub held_vmms: u32,
    /// Profile each scale's measured window: load pg_stat_statements and print the N
    /// statements that took the most database time (0: off).
    #[arg(long, default_value_t = 0)]
    pub profile: usize,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Room on each sled, in benchmark instances.
const SLED_ROOM: u32 = 64;

const MIB: f64 = 1024.0 * 1024.0;

struct Scale {
    sleds: usize,
    lifecycles_per_s: f64,
    start: Figures,
    start_to_running: Figures,
    errors: Vec<String>,
    registration: Duration,
    /// Per lifecycle: connections taken from Nexus's pool, how many waited, wait time (ms).
    pool: (f64, f64, f64),
    /// CPU per lifecycle (ms): this process (Nexus), PostgreSQL, the sled agents' processes;
    /// and cores busy (all three).
    cpu: (f64, f64, f64, f64),
    /// Resident memory after the measured window (bytes): this process (Nexus and the
    /// clients), the sled agents' processes.
    nexus_rss: u64,
    sled_agents_rss: u64,
    /// Nexus's open file descriptors (sockets mostly) after the measured window.
    nexus_fds: usize,
    statements: Option<String>,
}

/// The sled agents' memory per simulated VMM, measured with `held` VMMs running at once.
struct PerVmm {
    held: u32,
    before: u64,
    after: u64,
}

impl PerVmm {
    fn bytes(&self) -> f64 {
        (self.after as f64 - self.before as f64) / f64::from(self.held.max(1))
    }
}

pub async fn run(args: PlacementArgs) -> anyhow::Result<()> {
    if args.sleds.len() < 2
        || args.sleds[0] == 0
        || args.sleds.windows(2).any(|w| w[1] <= w[0])
        || args.clients == 0
    {
        bail!(
            "need --sleds with at least two increasing numbers (e.g. 10,1000) and --clients >= 1"
        );
    }
    if args.held_vmms > args.sleds[0] as u32 * SLED_ROOM / 2 {
        bail!("--held-vmms must fit in half the first scale's room ({SLED_ROOM} a sled)");
    }
    let mut system = System::start(args.profile > 0).await?;
    let mut scales = Vec::new();
    let mut per_vmm = None;
    for (i, &sleds) in args.sleds.iter().enumerate() {
        let registering = Instant::now();
        system
            .add_sleds_in_child(sleds - system.sled_count(), SLED_ROOM)
            .await?;
        let registration = registering.elapsed();
        if !args.json {
            println!(
                "{sleds} sleds registered ({} started in {:.1} s); measuring {} s with {} clients",
                system.sled_count() - scales.last().map_or(0, |s: &Scale| s.sleds),
                registration.as_secs_f64(),
                args.duration_secs,
                args.clients
            );
        }
        let load = Load::start(
            &system.client,
            args.clients,
            &format!("s{i}c"),
            Duration::from_millis(args.poll_ms),
        );
        tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
        if args.profile > 0 {
            system.sql("SELECT pg_stat_statements_reset()")?;
        }
        let before = system.counters()?;
        let from = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
        let to = Instant::now();
        let after = system.counters()?;
        let statements = if args.profile > 0 {
            Some(system.sql(&crate::lifecycles::top_statements_query(args.profile))?)
        } else {
            None
        };
        let Driven {
            measured, errors, ..
        } = load.finish(from, to).await?;
        let nexus_rss = resident_bytes("self").unwrap_or(0);
        let sled_agents_rss = sled_agents_rss(&system);
        let nexus_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        let n = measured.len().max(1) as f64;
        let pool = (
            (after.pool.gets - before.pool.gets) as f64 / n,
            (after.pool.gets_waited - before.pool.gets_waited) as f64 / n,
            (after.pool.wait_time - before.pool.wait_time).as_secs_f64() * 1000.0 / n,
        );
        let cpu = |c: &crate::system::CpuTimes| (c.halyard, c.postgres, c.sled_hosts);
        let (b, a) = (cpu(&before.cpu), cpu(&after.cpu));
        let cpu = (
            (a.0 - b.0) * 1000.0 / n,
            (a.1 - b.1) * 1000.0 / n,
            (a.2 - b.2) * 1000.0 / n,
            (a.0 - b.0 + a.1 - b.1 + a.2 - b.2) / (to - from).as_secs_f64(),
        );
        scales.push(Scale {
            sleds,
            lifecycles_per_s: measured.len() as f64 / (to - from).as_secs_f64(),
            start: Figures::of(measured.iter().map(|l| l.start)),
            start_to_running: Figures::of(measured.iter().map(|l| l.start_to_running)),
            errors,
            registration,
            pool,
            cpu,
            nexus_rss,
            sled_agents_rss,
            nexus_fds,
            statements,
        });
        if i == 0 && args.held_vmms > 0 {
            per_vmm = Some(
                hold_vmms(
                    &system,
                    args.held_vmms,
                    args.clients,
                    Duration::from_millis(args.poll_ms),
                )
                .await?,
            );
        }
    }
    let violations = system.violations()?;
    let sled_agents = system.sled_count();
    system.close().await?;

    let first = &scales[0];
    // Each later scale against the first: start p50, p99; start-to-running p50, p99.
    let ratios: Vec<(usize, [f64; 4])> = scales[1..]
        .iter()
        .map(|s| {
            (
                s.sleds,
                [
                    s.start.p50 / first.start.p50,
                    s.start.p99 / first.start.p99,
                    s.start_to_running.p50 / first.start_to_running.p50,
                    s.start_to_running.p99 / first.start_to_running.p99,
                ],
            )
        })
        .collect();
    let errors: usize = scales.iter().map(|s| s.errors.len()).sum();
    // The goal (issue 23): start p99 at each scale at most twice the first scale's.
    let goals: Vec<(usize, bool)> = ratios.iter().map(|(n, r)| (*n, r[1] <= 2.0)).collect();
    let goal = goals.iter().all(|(_, met)| *met);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };

    if args.json {
        let scale = |s: &Scale| {
            json!({
                "sleds": s.sleds,
                "registration_s": round(s.registration.as_secs_f64()),
                "lifecycles_per_s": round(s.lifecycles_per_s),
                "start": s.start.json(),
                "start_to_running": s.start_to_running.json(),
                "errors": s.errors.len(),
                "nexus_pool_per_lifecycle": {
                    "gets": round(s.pool.0), "waits": round(s.pool.1), "wait_ms": round(s.pool.2),
                },
                "cpu_ms_per_lifecycle": {
                    "nexus": round(s.cpu.0), "postgres": round(s.cpu.1),
                    "sled_agents": round(s.cpu.2), "cores_busy": round(s.cpu.3),
                },
                "nexus_rss_mib": round(s.nexus_rss as f64 / MIB),
                "nexus_open_files": s.nexus_fds,
                "sled_agents_rss_mib": round(s.sled_agents_rss as f64 / MIB),
                "sled_agent_rss_per_sled_kib":
                    round(s.sled_agents_rss as f64 / 1024.0 / s.sleds as f64),
                "statements": s.statements.as_deref().map(|t| t.lines().collect::<Vec<_>>()),
            })
        };
        let value = json!({
            "clients": args.clients,
            "duration_s": args.duration_secs,
            "sled_agents": sled_agents,
            "scales": scales.iter().map(scale).collect::<Vec<_>>(),
            "sled_agent_rss_per_vmm": per_vmm.as_ref().map(|p| json!({
                "held_vmms": p.held,
                "sled_agents_rss_before_mib": round(p.before as f64 / MIB),
                "sled_agents_rss_with_them_mib": round(p.after as f64 / MIB),
                "per_vmm_kib": round(p.bytes() / 1024.0),
            })),
            "ratios": ratios.iter().map(|(n, r)| json!({
                "sleds": n,
                "vs_sleds": first.sleds,
                "start_p50": round(r[0]),
                "start_p99": round(r[1]),
                "start_to_running_p50": round(r[2]),
                "start_to_running_p99": round(r[3]),
            })).collect::<Vec<_>>(),
            "goals": goals.iter().map(|(n, met)| json!({
                "goal": format!("start p99 at {n} sleds <= 2x at {}", first.sleds),
                "met": met,
            })).collect::<Vec<_>>(),
            "errors": errors,
            "first_errors": scales.iter().flat_map(|s| &s.errors).take(5).collect::<Vec<_>>(),
            "violations": violations,
            "goal_met": goal,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!();
    for s in &scales {
        println!(
            "{} sleds: {:.1} lifecycles/s, {} error(s)",
            s.sleds,
            s.lifecycles_per_s,
            s.errors.len()
        );
        println!("{}", s.start.line("start"));
        println!("{}", s.start_to_running.line("start-to-running"));
        println!(
            "  per lifecycle: {:.1} ms CPU in Nexus, {:.1} ms in PostgreSQL, {:.1} ms in the \
             sled agents ({:.2} cores busy); {:.1} pool connections, {:.1} waited, {:.1} ms waiting",
            s.cpu.0, s.cpu.1, s.cpu.2, s.cpu.3, s.pool.0, s.pool.1, s.pool.2
        );
        println!(
            "  resident memory: Nexus {:.1} MiB (this process: Nexus and {} clients); \
             sled agents {:.1} MiB ({:.1} KiB a sled); Nexus's open files {}",
            s.nexus_rss as f64 / MIB,
            args.clients,
            s.sled_agents_rss as f64 / MIB,
            s.sled_agents_rss as f64 / 1024.0 / s.sleds as f64,
            s.nexus_fds,
        );
        if let Some(statements) = &s.statements {
            crate::lifecycles::print_statements(
                statements,
                s.lifecycles_per_s * args.duration_secs as f64,
            );
        }
    }
    if let Some(p) = &per_vmm {
        println!(
            "sled agents' memory per simulated VMM: {:.1} KiB ({} sleds' agents: {:.1} MiB \
             resident, {:.1} MiB with {} VMMs running)",
            p.bytes() / 1024.0,
            first.sleds,
            p.before as f64 / MIB,
            p.after as f64 / MIB,
            p.held
        );
    }
    for (n, r) in &ratios {
        println!(
            "ratio {n} sleds / {} sleds: start p50 {:.2}x p99 {:.2}x; \
             start-to-running p50 {:.2}x p99 {:.2}x",
            first.sleds, r[0], r[1], r[2], r[3]
        );
    }
    if let Some(e) = scales.iter().flat_map(|s| &s.errors).next() {
        println!("first error: {e}");
    }
    if violations.is_empty() {
        println!(
            "invariant checker: clean (no failed instance, no leaked reservation; the database's \
             rules, the sled agents being in another process)"
        );
    } else {
        println!("invariant checker: {} violation(s):", violations.len());
        for v in violations.iter().take(20) {
            println!("  {v}");
        }
    }
    for (n, met) in &goals {
        println!(
            "goal: start p99 at {n} sleds <= 2x at {}: {}",
            first.sleds,
            verdict(*met)
        );
    }
    Ok(())
}

/// The resident memory of every process hosting sled agents, in bytes.
fn sled_agents_rss(system: &System) -> u64 {
    system
        .sled_hosts
        .iter()
        .filter_map(|h| h.resident_bytes())
        .sum()
}

/// Runs `held` instances at once (created and started by `clients` at a time), reading the
/// sled agents' memory before and while they run; then stops and deletes them.
async fn hold_vmms(
    system: &System,
    held: u32,
    clients: u32,
    poll: Duration,
) -> anyhow::Result<PerVmm> {
    let before = sled_agents_rss(system);
    let client = &system.client;
    let ids: Vec<InstanceUuid> = futures::stream::iter(0..held)
        .map(|n| async move {
            let name = format!("held-{n}");
            let created = create_instance(
                client,
                &name,
                Vec::new(),
                InstanceNetworkInterfaceAttachment::DefaultDualStack,
                true,
            )
            .await?;
            let mut polls = 0;
            wait_for_state(
                client,
                created.id,
                created.run_state,
                InstanceState::Running,
                poll,
                &mut polls,
            )
            .await?;
            anyhow::Ok(created.id)
        })
        .buffer_unordered(clients as usize)
        .try_collect()
        .await?;
    let after = sled_agents_rss(system);
    futures::stream::iter(ids)
        .map(|id| async move {
            let view = client.instance_stop().instance(by_id(id)).send().await?;
            let mut polls = 0;
            wait_for_state(
                client,
                id,
                view.into_inner().run_state,
                InstanceState::Stopped,
                poll,
                &mut polls,
            )
            .await?;
            client.instance_delete().instance(by_id(id)).send().await?;
            anyhow::Ok(())
        })
        .buffer_unordered(clients as usize)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(PerVmm {
        held,
        before,
        after,
    })
}
